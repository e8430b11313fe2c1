"""Row-sparse item-table stacks (fedrec.rowsparse) equal their dense form everywhere.

The algebra of :class:`RowSparse` against the dense tensor it stands for, the Gram matrix and
row blocks of :mod:`defenses.linalg`, and every registered rule: aggregating the stack with
its item table row-sparse gives the same result, info and state as the dense stack (float64,
two rounds so stateful rules compare their state too).
"""

from __future__ import annotations

import pytest
import torch

from defenses import DEFENSES
from defenses.linalg import gram, row_blocks, row_sparse_gram, sparse_row_blocks, touched_rows
from defenses.testing import ITEM_KEY, example_params, make_context, random_stacked
from fedrec.rowsparse import RowSparse, densify

TIGHT = {"atol": 1e-12, "rtol": 1e-9}


def _table(n: int = 6, n_rows: int = 30, d: int = 3, per: int = 4, seed: int = 0) -> torch.Tensor:
    return random_stacked(n, seed=seed, n_rows=n_rows, row_dim=d, rows_per_client=per,
                          dense_shapes=())[ITEM_KEY].double()


def test_round_trip_drops_only_zero_rows():
    x = _table()
    x[2] = 0.0  # a client that touched nothing
    rs = RowSparse.from_dense(x)
    assert torch.equal(rs.to_dense(), x)
    assert rs.nnz == int(touched_rows(x).sum())
    assert rs.counts()[2] == 0
    assert rs.shape == x.shape and rs.dim() == 3
    for i in range(x.shape[0]):
        assert torch.equal(rs[i], x[i])
    # build sorts and drops explicit zero rows
    rows = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]])
    b = RowSparse.build(torch.tensor([1, 0, 0]), torch.tensor([4, 2, 1]), rows, n=2, n_rows=5)
    assert b.clients.tolist() == [0, 1] and b.ids.tolist() == [1, 4]
    with pytest.raises(ValueError, match="row ids"):
        RowSparse.build(torch.tensor([0]), torch.tensor([5]), rows[:1], n=2, n_rows=5)


def test_algebra_matches_dense():
    x = _table(seed=3)
    rs = RowSparse.from_dense(x)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    torch.testing.assert_close(rs.sq_norms(), (flat * flat).sum(1), **TIGHT)
    vec = torch.randn(x.shape[1:], dtype=torch.float64)
    torch.testing.assert_close(rs.dots(vec), flat @ vec.reshape(-1), **TIGHT)
    coef = torch.randn(n, dtype=torch.float64)
    torch.testing.assert_close(rs.combine(coef), torch.einsum("i,ird->rd", coef, x), **TIGHT)
    order = torch.tensor([4, 0, 0, 2])
    assert torch.equal(rs.select(order).to_dense(), x[order])
    mask = torch.tensor([True, False, True, True, False, True])
    assert torch.equal(rs[mask].to_dense(), x[mask])
    both = RowSparse.concat([rs.select(torch.tensor([1])), rs.select(torch.tensor([3, 5]))])
    assert torch.equal(both.to_dense(), x[[1, 3, 5]])
    uids, vals = rs.compact()
    assert torch.equal(vals, x[:, uids])
    assert bool((x[:, [r for r in range(x.shape[1]) if r not in set(uids.tolist())]] == 0).all())
    bad = x.clone()
    bad[3, int(uids[0])] = float("nan")
    assert RowSparse.from_dense(bad).finite().tolist() == [i != 3 for i in range(n)]


def test_gram_and_blocks_match_dense():
    x = _table(n=9, n_rows=50, d=4, per=5, seed=5)
    rs = RowSparse.from_dense(x)
    assert torch.equal(gram({"t": rs}), row_sparse_gram(x))
    flat = x.reshape(9, -1)
    torch.testing.assert_close(gram({"t": rs}), flat @ flat.T, **TIGHT)
    dense_blocks = list(row_blocks(touched_rows(x), 4))
    sparse_blocks = list(sparse_row_blocks(rs))
    assert len(dense_blocks) == len(sparse_blocks)
    for (r1, m1, c1), (r2, m2, c2, entries) in zip(dense_blocks, sparse_blocks, strict=True):
        assert torch.equal(r1, r2) and torch.equal(c1, c2)
        valid = torch.arange(m1.shape[1])[None, :] < c1[:, None]
        assert torch.equal(m1[valid], m2[valid])
        assert torch.equal(rs.rows[entries[valid]], x[m1[valid], r1[:, None].expand_as(m1)[valid]])


def _sparse(stacked: dict[str, torch.Tensor]) -> dict:
    return {k: (RowSparse.from_dense(v) if k == ITEM_KEY else v) for k, v in stacked.items()}


@pytest.mark.parametrize("name", sorted(DEFENSES))
@pytest.mark.parametrize("n,per,seed", [(12, 5, 0), (9, 30, 1)])
def test_every_rule_gives_the_dense_result(name, n, per, seed):
    """Dense vs row-sparse item table, float64; ``per=30`` of 40 rows takes the dense Gram
    path on the dense side, ``per=5`` the row-sparse one."""
    dense_rule = DEFENSES[name](**example_params(name, n))
    sparse_rule = DEFENSES[name](**example_params(name, n))
    for rnd in range(2):
        stacked = {k: v.double() for k, v in random_stacked(
            n, seed=seed + 10 * rnd, n_rows=40, row_dim=3, rows_per_client=per).items()}
        w = torch.arange(1.0, n + 1.0, dtype=torch.float64)
        ctx = make_context(stacked, seed=seed, round=rnd)
        out_d, info_d = dense_rule(stacked, w, ctx)
        out_s, info_s = sparse_rule(_sparse(stacked), w, ctx)
        assert out_d.keys() == out_s.keys()
        for k in out_d:
            assert out_s[k].shape == out_d[k].shape
            torch.testing.assert_close(out_s[k], out_d[k], **TIGHT)
        assert torch.equal(info_s.kept, info_d.kept)
        torch.testing.assert_close(info_s.weights, info_d.weights, **TIGHT)
        assert info_s.extra.keys() == info_d.extra.keys()
        for k in info_d.extra:
            assert info_s.extra[k] == pytest.approx(info_d.extra[k], rel=1e-9, abs=1e-12)
    state_d, state_s = dense_rule.state_dict(), sparse_rule.state_dict()
    assert state_d.keys() == state_s.keys()
    for k, v in state_d.items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(state_s[k], v, **TIGHT)
        elif isinstance(v, dict):
            for kk, vv in v.items():
                torch.testing.assert_close(state_s[k][kk], vv, **TIGHT)
        else:
            assert state_s[k] == v


def test_densify_leaves_dense_values():
    x = _table()
    out = densify({"a": RowSparse.from_dense(x), "b": x})
    assert torch.equal(out["a"], x) and out["b"] is x


def test_empty_stacks():
    empty = RowSparse.from_dense(torch.zeros(0, 5, 3))
    assert empty.n == 0 and empty.nnz == 0 and empty.to_dense().shape == (0, 5, 3)
    none = RowSparse.from_dense(torch.zeros(2, 5, 3))
    assert none.nnz == 0 and none.sq_norms().tolist() == [0.0, 0.0]
    assert torch.equal(none.combine(torch.ones(2)), torch.zeros(5, 3))
    assert none.finite().tolist() == [True, True]
