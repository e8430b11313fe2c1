"""Item-wise rules aggregate each item row over the clients that touch it; HiCS bank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defenses import AggregationContext, build_defense
from defenses.linalg import BLOCK_ELEMENTS, touched_rows
from defenses.testing import ITEM_KEY, random_stacked

ITEMWISE = ["itemwise_median", "itemwise_trimmed_mean", "itemwise_krum", "itemwise_norm_bound"]

# Rule vs per-row reference checks run on float64 updates: in float32 the rule's blocked sums
# round differently from the reference (and from one CPU's kernels to another's); in float64
# both agree to ~1e-15 on these unit-scale values, so TIGHT holds on any machine.
TIGHT = {"atol": 1e-12, "rtol": 1e-9}


def _stacked64(n: int, **kw) -> dict[str, torch.Tensor]:
    """``random_stacked`` in float64."""
    return {k: v.double() for k, v in random_stacked(n, **kw).items()}


def _ctx() -> AggregationContext:
    return AggregationContext(item_param_names=(ITEM_KEY,))


def _reference_rows(name: str, params: dict, table: torch.Tensor, w: torch.Tensor):
    """Per-row loop reference (test only)."""
    n, rows, d = table.shape
    out = torch.zeros(rows, d, dtype=torch.float64)
    t = table.double()
    for r in range(rows):
        idx = [i for i in range(n) if bool((t[i, r] != 0).any())]
        if not idx:
            continue
        v = t[idx, r]
        ww = w[idx].double()
        c = len(idx)
        if name == "itemwise_median":
            out[r] = torch.from_numpy(np.median(v.numpy(), axis=0))
        elif name == "itemwise_trimmed_mean":
            k = int(params["beta"] * c)
            out[r] = torch.sort(v, dim=0).values[k : c - k].mean(0)
        elif name == "itemwise_krum":
            f = params["f"]
            if 2 * f + 2 < c:
                dist = ((v[:, None] - v[None]) ** 2).sum(-1)
                scores = [
                    torch.sort(torch.cat([dist[i, :i], dist[i, i + 1 :]])).values[: c - f - 2].sum()
                    for i in range(c)
                ]
                out[r] = v[int(np.argmin(scores))]
            else:
                out[r] = (ww[:, None] * v).sum(0) / ww.sum()
        elif name == "itemwise_norm_bound":
            tau = params["tau"]
            s = torch.clamp(tau / v.norm(dim=1), max=1.0)
            out[r] = (ww[:, None] * s[:, None] * v).sum(0) / ww.sum()
    return out


PARAMS = {
    "itemwise_median": {},
    "itemwise_trimmed_mean": {"beta": 0.25},
    "itemwise_krum": {"f": 1},
    "itemwise_norm_bound": {"tau": 1.0},
}


@pytest.mark.parametrize("name", ITEMWISE)
@pytest.mark.parametrize("seed", [0, 1])
def test_itemwise_matches_per_row_reference(name, seed):
    n = 16
    stacked = _stacked64(n, seed=seed, n_rows=40, row_dim=3, rows_per_client=12)
    w = torch.randint(1, 9, (n,), generator=torch.Generator().manual_seed(seed)).float()
    out, info = build_defense(name, PARAMS[name])(stacked, w, _ctx())
    ref = _reference_rows(name, PARAMS[name], stacked[ITEM_KEY], w)
    assert out[ITEM_KEY].dtype == torch.float64
    torch.testing.assert_close(out[ITEM_KEY], ref, **TIGHT)
    assert float(info.weights.sum()) == pytest.approx(1.0)


def test_blocks_cover_heavily_touched_rows(monkeypatch):
    """Small block budget forces many blocks, including rows touched by every client."""
    import defenses.linalg as base

    monkeypatch.setattr(base, "BLOCK_ELEMENTS", 64)
    n = 12
    stacked = _stacked64(n, seed=3, n_rows=30, row_dim=3, rows_per_client=10)
    stacked[ITEM_KEY][:, 0] = torch.randn(n, 3)  # row 0 touched by everyone
    for name in ITEMWISE:
        out, _ = build_defense(name, PARAMS[name])(stacked, torch.ones(n), _ctx())
        ref = _reference_rows(name, PARAMS[name], stacked[ITEM_KEY], torch.ones(n))
        torch.testing.assert_close(out[ITEM_KEY], ref, **TIGHT)
    assert BLOCK_ELEMENTS > 64  # the module constant is restored outside this test


@pytest.mark.parametrize("name", ITEMWISE)
def test_rows_touched_only_by_benign_ignore_attackers(name):
    """Attackers send 1e6 on a target row; rows they do not touch are exactly benign."""
    gen = torch.Generator().manual_seed(0)
    n_benign, n_att, rows, d = 9, 6, 8, 4
    n = n_benign + n_att
    table = torch.zeros(n, rows, d, dtype=torch.float64)
    # benign clients 0..8 touch rows 0..6 in overlapping groups of 5 (every row has 5 clients)
    for i in range(n_benign):
        for r in range(rows - 1):
            if (i - r) % n_benign < 5:
                table[i, r] = torch.randn(d, generator=gen)
    table[n_benign:, rows - 1] = 1e6  # attackers touch only the target row
    stacked = {ITEM_KEY: table, "dense": torch.randn(n, 3, generator=gen).double()}
    params = {**PARAMS[name]}
    if name == "itemwise_krum":
        params["f"] = 1  # dense Krum needs 2f + 2 < n
    if name == "itemwise_norm_bound":
        params["tau"] = 1e3
    out, _ = build_defense(name, params)(stacked, torch.ones(n), _ctx())
    ref = _reference_rows(name, params, table[:n_benign, : rows - 1], torch.ones(n_benign))
    torch.testing.assert_close(out[ITEM_KEY][: rows - 1], ref, **TIGHT)
    if name == "itemwise_median":
        # a row touched by 5 benign clients equals their median, whatever the attackers sent
        r0 = [i for i in range(n_benign) if (i - 0) % n_benign < 5]
        torch.testing.assert_close(out[ITEM_KEY][0], table[r0, 0].median(0).values)
    # whereas the plain coordinate-wise median over all clients is pulled to 0 on sparse rows
    plain, _ = build_defense("median", {})(stacked, torch.ones(n))
    assert not torch.allclose(plain[ITEM_KEY][: rows - 1], out[ITEM_KEY][: rows - 1])


def test_itemwise_median_of_target_row_is_attacker_value():
    """The flip side (Spattack's point): a row touched mostly by attackers is theirs."""
    n = 7
    table = torch.zeros(n, 3, 2)
    table[:2, 0] = torch.tensor([[0.1, 0.2], [0.3, 0.1]])
    table[2:, 0] = 5.0
    out, _ = build_defense("itemwise_median", {})({ITEM_KEY: table}, torch.ones(n), _ctx())
    torch.testing.assert_close(out[ITEM_KEY][0], torch.tensor([5.0, 5.0]))
    assert torch.count_nonzero(out[ITEM_KEY][1:]) == 0  # untouched rows stay zero


def test_itemwise_dense_params_use_ordinary_rules():
    n = 11
    stacked = _stacked64(n, seed=5)
    w = torch.arange(1.0, n + 1)
    dense = {k: v for k, v in stacked.items() if k != ITEM_KEY}
    pairs = [
        ("itemwise_median", {}, "median", {}),
        ("itemwise_trimmed_mean", {"beta": 0.2}, "trimmed_mean", {"beta": 0.2}),
        ("itemwise_krum", {"f": 2}, "krum", {"f": 2}),
        ("itemwise_norm_bound", {"tau": 0.5}, "norm_bound", {"tau": 0.5}),
    ]
    for iw_name, iw_params, name, params in pairs:
        out, _ = build_defense(iw_name, iw_params)(stacked, w, _ctx())
        ref, _ = build_defense(name, params)(dense, w)
        for k in dense:
            torch.testing.assert_close(out[k], ref[k], **TIGHT)


def test_itemwise_krum_falls_back_to_mean_on_sparse_rows():
    n = 9
    table = torch.zeros(n, 2, 2)
    table[:3, 0] = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]])  # 3 <= 2f+2 for f=1
    w = torch.tensor([1.0, 1, 2, 1, 1, 1, 1, 1, 1])
    out, _ = build_defense("itemwise_krum", {"f": 1})({ITEM_KEY: table}, w, _ctx())
    torch.testing.assert_close(out[ITEM_KEY][0], torch.tensor([9.0 / 4, 12.0 / 4]))


def test_itemwise_norm_bound_clips_rows_and_flags_clients():
    table = torch.zeros(3, 2, 2)
    table[0, 0] = torch.tensor([3.0, 4.0])  # row norm 5 -> clipped to 1
    table[1, 0] = torch.tensor([0.6, 0.0])
    table[2, 1] = torch.tensor([0.0, 0.5])
    out, info = build_defense("itemwise_norm_bound", {"tau": 1.0})(
        {ITEM_KEY: table}, torch.ones(3), _ctx()
    )
    torch.testing.assert_close(out[ITEM_KEY], torch.tensor([[0.6, 0.4], [0.0, 0.5]]))
    assert info.kept.tolist() == [False, True, True]


def test_touched_rows():
    t = torch.zeros(2, 3, 2)
    t[0, 1, 0] = 1.0
    t[1, 2, 1] = -2.0
    assert touched_rows(t).tolist() == [[False, True, False], [False, False, True]]


# --------------------------------------------------------------------------------------------
# HiCS
# --------------------------------------------------------------------------------------------


def _hics_round(rule, stacked, w):
    return rule(stacked, w, _ctx())


def test_hics_applies_at_most_k_rows_and_banks_the_rest():
    n, rows, d, k = 10, 30, 4, 3
    rule = build_defense("hics", {"tau_item": 0.5, "k": k})
    s1 = _stacked64(n, seed=1, n_rows=rows, row_dim=d, rows_per_client=8)
    w = torch.ones(n)
    out1, info = _hics_round(rule, s1, w)
    applied = torch.nonzero(out1[ITEM_KEY].abs().sum(1)).reshape(-1)
    assert len(applied) == k == info.extra["rows_applied"]
    # first round: applied rows + bank == clipped per-row means over touching clients
    table = s1[ITEM_KEY].double()
    touched = touched_rows(s1[ITEM_KEY]).double()
    mean = table.sum(0) / touched.sum(0).clamp(min=1)[:, None]
    clipped = mean * torch.clamp(0.5 / mean.norm(dim=1).clamp(min=1e-30), max=1.0)[:, None]
    bank = rule.state_dict()["bank"][ITEM_KEY]
    assert out1[ITEM_KEY].dtype == torch.float64
    torch.testing.assert_close(out1[ITEM_KEY] + bank, clipped, **TIGHT)
    # applied rows are the k largest clipped rows (many tie at tau) and leave the bank
    norms = clipped.norm(dim=1)
    others = torch.ones(rows, dtype=torch.bool)
    others[applied] = False
    assert float(norms[applied].min()) >= float(norms[others].max()) - 1e-6
    assert torch.count_nonzero(bank[applied]) == 0
    # second round: the bank accumulates, output still has at most k rows
    s2 = _stacked64(n, seed=2, n_rows=rows, row_dim=d, rows_per_client=8)
    out2, _ = _hics_round(rule, s2, w)
    assert int((out2[ITEM_KEY].abs().sum(1) > 0).sum()) <= k
    bank2 = rule.state_dict()["bank"][ITEM_KEY]
    t2 = s2[ITEM_KEY].double()
    m2 = t2.sum(0) / touched_rows(s2[ITEM_KEY]).double().sum(0).clamp(min=1)[:, None]
    c2 = m2 * torch.clamp(0.5 / m2.norm(dim=1).clamp(min=1e-30), max=1.0)[:, None]
    torch.testing.assert_close(bank2 + out2[ITEM_KEY], bank + c2, **TIGHT)


def test_hics_limits_a_cold_target_row_push():
    """Attackers pushing one cold row with 1e6 move it by at most tau_item per round."""
    n, rows, d = 20, 10, 4
    stacked = random_stacked(n, seed=4, n_rows=rows, row_dim=d, rows_per_client=3)
    stacked[ITEM_KEY][:, 9] = 0.0
    stacked[ITEM_KEY][-3:, 9] = 1e6
    rule = build_defense("hics", {"tau_item": 3.0, "fraction": 0.5})
    out, _ = _hics_round(rule, stacked, torch.ones(n))
    assert float(out[ITEM_KEY][9].norm()) <= 3.0 + 1e-5
    assert math.ceil(0.5 * rows) == rule.rows_per_round(rows)


def test_hics_dense_params_clip_then_mean():
    n = 6
    stacked = random_stacked(n, seed=6, n_rows=5, rows_per_client=3)
    stacked["dense0"][0] *= 1e4
    rule = build_defense("hics", {"tau_item": 3.0, "tau_other": 0.7})
    out, info = _hics_round(rule, stacked, torch.ones(n))
    ref, _ = build_defense("norm_bound", {"tau": 0.7})(
        {k: v for k, v in stacked.items() if k != ITEM_KEY}, torch.ones(n)
    )
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
    assert info.weights[0] < info.weights[1:].min()
