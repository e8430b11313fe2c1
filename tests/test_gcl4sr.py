"""GCL4SR (Zhang et al., IJCAI 2022): item graph, sampler, losses, prefix samples, model contract.

WITG weights are checked against matrices computed by hand; the sampler must return only true
neighbours, at most N, without repeats, reproducibly from its keys and uniformly; the losses
must match hand computations and their defining properties; the model must keep the scores
contract and its loss must equal the weighted sum of the separately exposed terms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedrec.baselines.gcl4sr import (
    GCL4SR,
    PrefixSamples,
    build_witg,
    expand_prefixes,
    info_nce,
    mmd_across_batch,
    mmd_per_sequence,
    nt_xent,
    sample_neighbors,
)
from fedrec.baselines.gcl4sr.gnn import mean_aggregate, weighted_gcn
from fedrec.baselines.gcl4sr.graph import node_keys
from fedrec.baselines.gcl4sr.trainer import epoch_batches
from fedrec.data.random import stream_key
from fedrec.models import build_model

torch.set_num_threads(1)

# Checks that compare two computations of the same value through different reductions or
# kernels (a hand formula vs the implementation, padded vs unpadded input, sum of the terms vs
# the per-row mean) run in float64: their float32 gap depends on the CPU's exp/matmul kernels,
# in float64 it is ~1e-15 on these O(1) values, so atol/rtol ~1e-10 hold on any machine.
TIGHT = {"atol": 1e-10, "rtol": 1e-9}


# ------------------------------------------------------------------------------------ WITG
def test_witg_single_sequence_matches_the_worked_example():
    g = build_witg([np.array([1, 2, 3, 4])], n_items=4)
    # raw: w12 = w23 = w34 = 1, w13 = w24 = 1/2, w14 = 1/3; every node has 3 neighbours,
    # so ŵ = w * (1/3 + 1/3)
    expected = np.array([
        [0, 0, 0, 0, 0],
        [0, 0, 2 / 3, 1 / 3, 2 / 9],
        [0, 2 / 3, 0, 2 / 3, 1 / 3],
        [0, 1 / 3, 2 / 3, 0, 2 / 3],
        [0, 2 / 9, 1 / 3, 2 / 3, 0],
    ])
    np.testing.assert_allclose(g.dense(), expected, rtol=1e-6)


def test_witg_accumulates_over_users_and_renormalises_by_distinct_neighbours():
    seqs = [np.array([1, 2, 3, 4]), np.array([2, 3, 5])]
    # by hand: A gives w12=1, w23=1, w34=1, w13=1/2, w24=1/2, w14=1/3;
    #          B gives w23+=1, w35=1, w25=1/2
    raw = np.zeros((6, 6))
    for (i, j), w in {(1, 2): 1, (1, 3): 0.5, (1, 4): 1 / 3, (2, 3): 2, (2, 4): 0.5,
                      (2, 5): 0.5, (3, 4): 1, (3, 5): 1}.items():
        raw[i, j] = raw[j, i] = w
    np.testing.assert_allclose(build_witg(seqs, 5, renorm=False).dense(), raw, rtol=1e-6)
    # degrees (distinct neighbours): 1:3, 2:4, 3:4, 4:3, 5:2
    expected = np.zeros((6, 6))
    for (i, j), w in {(1, 2): 7 / 12, (1, 3): 7 / 24, (1, 4): 2 / 9, (2, 3): 1.0,
                      (2, 4): 7 / 24, (2, 5): 3 / 8, (3, 4): 7 / 12, (3, 5): 3 / 4}.items():
        expected[i, j] = expected[j, i] = w
    g = build_witg(seqs, 5)
    np.testing.assert_allclose(g.dense(), expected, rtol=1e-6)
    np.testing.assert_array_equal(g.degree(), [0, 3, 4, 4, 3, 2])
    assert g.nnz == 16  # 8 undirected edges stored in both directions


def test_witg_repeated_item_gets_a_self_loop_and_window_limits_hops():
    # [1, 2, 1]: both orientations of each pair are added, so the pair (1, 2) and the pair
    # (2, 1) each add 1 to w12, and the 2-hop pair (1, 1) adds 1/2 twice to w11
    raw = build_witg([np.array([1, 2, 1])], 2, renorm=False).dense()
    np.testing.assert_allclose(raw, [[0, 0, 0], [0, 1, 2], [0, 2, 0]])
    only_next = build_witg([np.array([1, 2, 3, 4])], 4, window=1, renorm=False).dense()
    assert only_next[1, 3] == 0 and only_next[1, 4] == 0 and only_next[1, 2] == 1


def test_witg_scale_option_row_normalises_before_renorm():
    g = build_witg([np.array([1, 2, 3, 4]), np.array([2, 3, 5])], 5, renorm=False, scale=True)
    np.testing.assert_allclose(g.dense()[1:].sum(1), 1.0, rtol=1e-6)


def test_witg_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="item ids"):
        build_witg([np.array([1, 7])], 5)


def test_witg_of_amazon_home_has_the_papers_edge_count(real_data_dir):
    path = real_data_dir / "home" / "sequences.txt"
    if not path.is_file():
        pytest.skip("home data not present")
    train = [np.array(line.split()[1:-2], dtype=np.int64) for line in path.open()]
    g = build_witg(train, 28237)
    assert g.nnz == 1_617_638  # GCL4SR paper, Table 1 (Home: 28,237 nodes, 1,617,638 edges)
    assert int((g.degree() > 0).sum()) == 28_146  # items seen in training (dataset README)


# ------------------------------------------------------------------------------------ sampler
def _random_graph(n_items=40, n_users=60, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, n_items + 1, size=rng.integers(3, 15)) for _ in range(n_users)]
    return build_witg(seqs, n_items)


def test_sampler_returns_distinct_true_neighbours_at_most_n():
    g = _random_graph()
    nodes = np.arange(0, g.n_nodes)
    slots = sample_neighbors(g, nodes, 5, node_keys(7, nodes))
    assert slots.shape == (g.n_nodes, 5)
    for v, row in zip(nodes, slots):
        used = row[row >= 0]
        assert np.all(row[len(used):] == -1)  # used slots first
        assert len(used) == min(5, g.degree()[v])
        assert np.all((used >= g.indptr[v]) & (used < g.indptr[v + 1]))  # edges of v only
        assert len(np.unique(used)) == len(used)  # without replacement
    assert np.all(slots[0] == -1)  # padding node has no neighbours


def test_sampler_is_deterministic_by_key_and_differs_between_keys():
    g = _random_graph()
    nodes = np.flatnonzero(g.degree() > 8)
    assert len(nodes) > 5
    a = sample_neighbors(g, nodes, 4, node_keys(1, nodes))
    b = sample_neighbors(g, nodes, 4, node_keys(1, nodes))
    c = sample_neighbors(g, nodes, 4, node_keys(2, nodes))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(a, 1), np.sort(c, 1))
    # a node's draw depends on its own key only, not on the other nodes of the call
    alone = sample_neighbors(g, nodes[3:4], 4, node_keys(1, nodes[3:4]))
    np.testing.assert_array_equal(alone[0], a[3])


def test_sampler_is_uniform_over_neighbours():
    g = build_witg([np.arange(1, 12)], 11, window=3)  # node 6 has 6 neighbours
    node = np.full(6000, 6)
    slots = sample_neighbors(g, node, 2, stream_key(3, np.arange(6000)))
    counts = np.bincount(slots.ravel() - g.indptr[6], minlength=6)
    assert len(counts) == 6
    np.testing.assert_allclose(counts / 6000, 2 / 6, atol=0.03)  # each kept w.p. N/deg


# ------------------------------------------------------------------------------------ losses
def test_info_nce_matches_hand_computation_and_prefers_identical_views():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    cos = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
    expected = -torch.log(torch.exp(cos.diagonal() / 0.5) / torch.exp(cos / 0.5).sum(1))
    assert info_nce(z1, z2, 0.5).dtype == torch.float64
    torch.testing.assert_close(info_nce(z1, z2, 0.5), expected, **TIGHT)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    y = torch.randn(16, 8, generator=g)
    same, rand = info_nce(x, x, 0.5).mean(), info_nce(x, y, 0.5).mean()
    assert torch.isfinite(same) and same < rand


def test_nt_xent_matches_the_symmetric_definition_with_intra_view_negatives():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, generator=g).double(), torch.randn(4, 3, generator=g).double()
    na, nb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    expected = []
    for i in range(4):
        la = torch.cat([na[i] @ nb.T, torch.stack([na[i] @ na[k] for k in range(4) if k != i])])
        lb = torch.cat([nb[i] @ na.T, torch.stack([nb[i] @ nb[k] for k in range(4) if k != i])])
        expected.append(-F.log_softmax(la / 0.5, 0)[i] - F.log_softmax(lb / 0.5, 0)[i])
    assert nt_xent(a, b, 0.5).dtype == torch.float64
    torch.testing.assert_close(nt_xent(a, b, 0.5), torch.stack(expected), **TIGHT)
    x = torch.randn(16, 8, generator=g)
    assert nt_xent(x, x, 0.5).mean() < nt_xent(x, torch.randn(16, 8, generator=g), 0.5).mean()


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(2)
    # float64: MMD(x, x) is 0 up to rounding of kernel sums (~1e-7 in float32, CPU-dependent
    # exp kernels; ~1e-17 in float64)
    x = torch.randn(5, 6, 4, generator=g).double()
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[:, :2] = False  # left padding
    for kernels in (1, 5):
        assert mmd_per_sequence(x, x, mask, kernels).abs().max() < 1e-12
        assert mmd_across_batch(x[:, :, 0], x[:, :, 0], kernels).abs() < 1e-12
    vals = [float(mmd_per_sequence(x, x + s, mask, 1, bandwidth=4.0).mean()) for s in (0.5, 1, 2)]
    assert 0 < vals[0] < vals[1] < vals[2]
    vals = [float(mmd_across_batch(x[:, :, 0], x[:, :, 0] + s, 5, bandwidth=4.0))
            for s in (0.5, 1, 2)]
    assert 0 < vals[0] < vals[1] < vals[2]


def test_mmd_per_sequence_ignores_padding_and_matches_a_direct_computation():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 4, 3, generator=g).double(), torch.randn(2, 4, 3, generator=g).double()
    mask = torch.tensor([[False, True, True, True], [False, False, True, True]])
    out = mmd_per_sequence(x, y, mask, 1, bandwidth=2.0)
    garbage = x.clone()
    garbage[~mask] = 100.0
    torch.testing.assert_close(mmd_per_sequence(garbage, y, mask, 1, bandwidth=2.0), out)
    for b in range(2):
        xs, ys = x[b][mask[b]], y[b][mask[b]]

        def k(p, q):
            return torch.exp(-torch.cdist(p, q) ** 2 / 2.0).mean()

        direct = k(xs, xs) + k(ys, ys) - 2 * k(xs, ys)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out[b], direct, **TIGHT)


# Slow reference of the MMD losses: the autograd formulation they had before the blockwise
# custom backward (kept here only to pin the fast one).
def _ref_sq_dists(z):
    sq = (z * z).sum(-1)
    d2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (z @ z.transpose(-1, -2))).clamp_min(0)
    return d2 * (1 - torch.eye(z.shape[-2], dtype=z.dtype))


def _ref_kernel_sum(d2, base, n_kernels, mul):
    base = base.clamp_min(1e-12) / (mul ** (n_kernels // 2))
    out = torch.zeros_like(d2)
    for i in range(n_kernels):
        out = out + torch.exp(-d2 / (base * mul**i))
    return out


def _ref_mmd_per_sequence(x, y, mask, n_kernels=1, bandwidth=None, mul=2.0):
    m = mask.to(x.dtype)
    z, mz = torch.cat([x, y], dim=1), torch.cat([m, m], dim=1)
    pair = mz.unsqueeze(-1) * mz.unsqueeze(-2)
    d2 = _ref_sq_dists(z) * pair
    cnt = m.sum(-1)
    if bandwidth is None:
        n2 = 2 * cnt
        base = (d2.sum((-1, -2)) / (n2 * n2 - n2).clamp_min(1)).detach()
    else:
        base = torch.full_like(cnt, float(bandwidth))
    k = _ref_kernel_sum(d2, base[:, None, None], n_kernels, mul) * pair
    L, denom = x.shape[1], (cnt * cnt).clamp_min(1)
    blocks = [k[:, :L, :L], k[:, L:, L:], k[:, :L, L:], k[:, L:, :L]]
    kxx, kyy, kxy, kyx = (b.sum((-1, -2)) / denom for b in blocks)
    return kxx + kyy - kxy - kyx


def _ref_mmd_across_batch(x, y, n_kernels=5, bandwidth=None, mul=2.0):
    z = torch.cat([x, y], dim=0)
    d2 = _ref_sq_dists(z)
    n = len(z)
    base = (d2.sum() / max(n * n - n, 1)).detach() if bandwidth is None else torch.tensor(
        float(bandwidth), dtype=z.dtype)
    k = _ref_kernel_sum(d2, base, n_kernels, mul)
    b = len(x)
    return (k[:b, :b] + k[b:, b:] - k[:b, b:] - k[b:, :b]).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernels,bandwidth", [(1, None), (5, None), (1, 3.0)])
def test_blockwise_mmd_matches_the_autograd_reference_in_value_and_gradient(
        dtype, kernels, bandwidth, monkeypatch):
    import fedrec.baselines.gcl4sr.losses as losses

    monkeypatch.setattr(losses, "_MMD_BLOCK", 1000)  # several blocks of rows
    g = torch.Generator().manual_seed(11)
    x = torch.randn(40, 9, 5, generator=g, dtype=dtype)
    y = 0.7 * torch.randn(40, 9, 5, generator=g, dtype=dtype) + 0.2
    x[:, 4] = x[:, 6]  # repeated items: zero distances off the diagonal
    mask = torch.rand(40, 9, generator=g) < 0.6
    mask[:, -1] = True
    x, y = x * mask.unsqueeze(-1), y * mask.unsqueeze(-1)
    w = torch.randn(40, generator=g, dtype=dtype)
    # float32: both forms add the same kernel entries in another order (row blocks vs one
    # [B, 2L, 2L] tensor), through the CPU's exp/matmul kernels. The longest sum has
    # n = (2 * 40) ** 2 terms (mmd_across_batch); rounding in random order grows like
    # sqrt(n) * eps32 of the summed magnitude: allow 2 * sqrt(n) * eps32 (~1.9e-5) relative,
    # and as much of each tensor's largest entry absolute (entries that cancel to ~0 keep the
    # rounding of the O(max) terms they came from).
    rel32 = 2 * math.sqrt((2 * 40) ** 2) * torch.finfo(torch.float32).eps

    def check(fast, ref):
        if dtype == torch.float64:
            torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
        else:
            torch.testing.assert_close(fast, ref, rtol=rel32, atol=rel32 * float(ref.abs().max()))

    outs = []
    for fn in (_ref_mmd_per_sequence, mmd_per_sequence):
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = fn(xx, yy, mask, kernels, bandwidth)
        (out * w).sum().backward()
        outs.append((out.detach(), xx.grad, yy.grad))
    for ref, fast in zip(*outs, strict=True):
        check(fast, ref)
    xs, ys = x[:, :, 0], y[:, :, 0] + 0.3
    outs = []
    for fn in (_ref_mmd_across_batch, mmd_across_batch):
        xx, yy = xs.clone().requires_grad_(), ys.clone().requires_grad_()
        out = fn(xx, yy, kernels, bandwidth)
        out.backward()
        outs.append((out.detach(), xx.grad, yy.grad))
    for ref, fast in zip(*outs, strict=True):
        check(fast, ref)


# ------------------------------------------------------------------------------------ data
def test_prefix_expansion_by_hand():
    users, inputs, targets = expand_prefixes([np.array([5, 6, 7]), np.array([8, 9]), np.array([4])],
                                             max_len=2, users=np.array([10, 11, 12]))
    np.testing.assert_array_equal(users, [10, 10, 11])
    np.testing.assert_array_equal(inputs, [[0, 5], [5, 6], [0, 8]])
    np.testing.assert_array_equal(targets, [6, 7, 9])


def test_prefix_samples_count_and_truncation():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 50, size=n) for n in (1, 2, 7, 30)]
    s = PrefixSamples.from_sequences(seqs, max_len=5)
    assert len(s) == 0 + 1 + 6 + 29
    users, inputs, targets = s.batch(np.arange(len(s)))
    assert inputs.shape == (len(s), 5)
    last = np.flatnonzero(users == 3)[-1]  # prefix of 29 items truncated to its last 5
    np.testing.assert_array_equal(inputs[last], seqs[3][24:29])
    assert targets[last] == seqs[3][29]
    np.testing.assert_array_equal(s.lengths(), np.minimum(s.ends - s.starts, 5))


def test_epoch_batches_cover_every_sample_once_and_bucketing_reduces_padding():
    lengths = np.random.default_rng(1).integers(1, 50, size=1000)
    rng = np.random.default_rng(0)
    for bucket in (False, True):
        batches = epoch_batches(lengths, 64, np.random.default_rng(0), bucket=bucket, pool=4)
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(1000))
    plain = epoch_batches(lengths, 64, rng, bucket=False)
    buck = epoch_batches(lengths, 64, rng, bucket=True, pool=16)
    width = [sum(lengths[b].max() * len(b) for b in bs) for bs in (plain, buck)]
    assert width[1] < 0.6 * width[0]


# ------------------------------------------------------------------------------------ model
def _toy(n_items=30, n_users=40, seed=0, **kw):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, n_items + 1, size=rng.integers(3, 12)) for _ in range(n_users)]
    params = {"max_len": 8, "hidden": 8, "blocks": 1, "heads": 2, "dropout": 0.0,
              "gnn_dropout": 0.0, "sample_sizes": (4, 3), **kw}
    torch.manual_seed(seed)
    model = GCL4SR(n_items, **params)
    model.attach(seqs)
    return model, seqs


def test_registry_builds_gcl4sr_with_its_params():
    model = build_model("gcl4sr", 20, hidden=8, max_len=5, heads=2, lam1=0.3,
                        preset="code")
    assert isinstance(model, GCL4SR) and model.lam1 == 0.3
    flags = (model.gnn_layout, model.gcl, model.mmd, model.mmd_kernels)
    assert flags == ("code", "ntxent", "batch", 5)
    assert not model.seq_position and not model.train_gates and model.code_init
    paper = build_model("gcl4sr", 20, hidden=8, max_len=5, heads=2, gcl="ntxent")
    assert paper.gcl == "ntxent" and paper.gnn_layout == "paper"  # a flag overrides its preset


def test_bad_params_raise_one_line_errors_naming_the_field():
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="model.gnn_layout"):
        build_model("gcl4sr", 20, gnn_layout="deep")
    with pytest.raises(ConfigError, match="model.sample_sizes"):
        build_model("gcl4sr", 20, sample_sizes=[20])
    with pytest.raises(ConfigError, match="model.combiner"):
        build_model("gcl4sr", 20, combiner="nope")


def test_scores_contract_and_padding_invariance():
    model, seqs = _toy()
    model.double().eval()  # float64: the padding-invariance check below compares kernels
    hist = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    users = torch.tensor([0, 1])
    out = model.scores(hist, users)
    assert out.shape == (2, 31)
    assert torch.isneginf(out[:, 0]).all() and torch.isfinite(out[:, 1:]).all()
    torch.testing.assert_close(model.scores(hist, users), out)  # evaluation sampling is fixed
    wide = torch.cat([torch.zeros(2, 3, dtype=torch.long), hist], 1)  # padded to max_len
    assert out.dtype == torch.float64
    torch.testing.assert_close(model.scores(wide, users), out, **TIGHT)
    assert model.scores(hist).shape == (2, 31)  # without users: no user term in the gate
    assert not torch.allclose(model.scores(hist), out)


def test_graph_views_are_unit_norm_at_items_zero_at_padding_and_two_views_differ():
    for layout in ("paper", "code"):
        model, _ = _toy(gnn_layout=layout)
        x = torch.tensor([[0, 0, 3, 4, 5], [0, 7, 8, 9, 3]])
        h1, h2 = model.graph_view(x, 11, 0), model.graph_view(x, 11, 1)
        assert h1.shape == (2, 5, 8)
        torch.testing.assert_close(h1[x > 0].norm(dim=-1), torch.ones(7))
        assert (h1[x == 0] == 0).all()
        assert not torch.allclose(h1, h2)
        torch.testing.assert_close(model.graph_view(x, 11, 0), h1)  # same key, same view
        # the same item has the same representation wherever it occurs in the batch
        torch.testing.assert_close(h1[0, 2], h1[1, 4])


def test_weighted_gcn_and_mean_aggregation_match_dense_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    out_rows = np.array([0, 2])
    edge_row, edge_col, w = np.array([0, 0, 1]), np.array([1, 3, 0]), np.array([0.5, 2.0, 1.0])
    deg = np.array([1 + 2.5, 1.0, 1 + 1.0, 1.0])  # nodes 0 and 2 receive edges
    dense = np.zeros((2, 4))
    dense[0, 0], dense[1, 2] = 1 / deg[0], 1 / deg[2]
    dense[0, 1] = 0.5 / np.sqrt(deg[1] * deg[0])
    dense[0, 3] = 2.0 / np.sqrt(deg[3] * deg[0])
    dense[1, 0] = 1.0 / np.sqrt(deg[0] * deg[2])
    out = weighted_gcn(x, out_rows, edge_row, edge_col, w)
    torch.testing.assert_close(out, torch.from_numpy(dense) @ x)
    out.sum().backward()
    ones = torch.ones(2, 3, dtype=torch.float64)
    torch.testing.assert_close(x.grad, torch.from_numpy(dense).T @ ones)
    mean = mean_aggregate(x, 3, edge_row, edge_col)
    zero = torch.zeros(3, dtype=x.dtype)
    torch.testing.assert_close(mean, torch.stack([(x[1] + x[3]) / 2, x[0], zero]))


def test_gate_lies_in_unit_interval_and_uses_the_user():
    model, _ = _toy()
    h = torch.randn(3, 5, 8)
    gate = model.gate(h, torch.tensor([0, 1, 2]))
    assert gate.shape == (3, 5) and ((gate > 0) & (gate < 1)).all()
    assert not torch.allclose(gate[0], model.gate(h, torch.tensor([5, 1, 2]))[0])


def test_loss_is_the_weighted_sum_of_the_exposed_terms():
    model, seqs = _toy(lam1=0.7, lam2=0.3)
    model.double()  # float64: row_losses().mean() reduces in another order than loss()
    users, inputs, targets = expand_prefixes(seqs[:6], model.max_len)
    batch = model.make_batch(users, inputs, targets, key=5)
    terms = model.loss_terms(batch)
    assert set(terms) == {"main", "gcl", "mmd"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    total = terms["main"] + 0.7 * terms["gcl"] + 0.3 * terms["mmd"]
    torch.testing.assert_close(model.loss(batch), total)  # dropout 0: deterministic
    assert total.dtype == torch.float64
    torch.testing.assert_close(model.row_losses(batch).mean(), total, **TIGHT)
    assert model.row_losses(batch).shape == (len(targets),)


def test_main_loss_over_items_1_to_n_equals_the_softmax_with_a_masked_padding_column():
    # the model leaves column 0 out of the softmax; the former code set it to -inf
    model, seqs = _toy(lam1=0.0, lam2=0.0)
    model.double()
    users, inputs, targets = expand_prefixes(seqs[:6], model.max_len)
    batch = model.make_batch(users, inputs, targets, key=5)
    main = model.row_terms(batch)["main"]
    grad = torch.autograd.grad(main.sum(), model.item_emb.weight)[0]
    logits = model.forward_parts(batch)["M"] @ model.item_embeddings().T
    logits[:, 0] = float("-inf")
    ref = F.cross_entropy(logits, batch["targets"], reduction="none")
    torch.testing.assert_close(main, ref, rtol=1e-12, atol=1e-12)
    ref_grad = torch.autograd.grad(ref.sum(), model.item_emb.weight)[0]
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_prepare_batch_expands_every_prefix():
    model, seqs = _toy()
    batch = model.prepare_batch(seqs[:3], stream_key(0, np.arange(3)))
    assert len(batch["targets"]) == sum(len(s) - 1 for s in seqs[:3])
    assert (batch["users"] == -1).all()
    assert torch.isfinite(model.loss(batch))


@pytest.mark.parametrize("params", [
    {}, {"preset": "code"}, {"lam1": 0.0}, {"lam2": 0.0}, {"edge_weights": False},
    {"gcl": "ntxent", "mmd": "batch", "mmd_kernels": 5},
])
def test_a_few_steps_reduce_the_loss(params):
    model, seqs = _toy(**params)
    users, inputs, targets = expand_prefixes(seqs, model.max_len)
    batch = model.make_batch(users, inputs, targets, key=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    before = float(model.loss(batch).detach())
    for _ in range(12):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert float(model.loss(batch).detach()) < 0.9 * before


def test_frozen_gates_of_the_code_preset_stay_at_their_init():
    model, seqs = _toy(preset="code")
    names = {n for n, _ in model.named_parameters()}
    assert "gate_item" not in names and "gate_user" not in names
    before = model.gate_user.clone()
    batch = model.make_batch(*expand_prefixes(seqs, model.max_len), key=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(batch).backward()
    opt.step()
    torch.testing.assert_close(model.gate_user, before)
    assert model.user_emb.weight.grad is not None  # the user table still learns through it
    paper, _ = _toy()
    assert {"gate_item", "gate_user"} <= {n for n, _ in paper.named_parameters()}
