"""FLAME, FoolsGold, FLTrust and centered clipping: known behaviour and state."""

from __future__ import annotations

import math

import pytest
import torch

from defenses import AggregationContext, build_defense
from defenses.linalg import gram
from defenses.similarity import cosine_from_gram, flame_majority, foolsgold_weights


def _clustered(n_benign: int, n_att: int, seed: int, dim: int = 20):
    """Benign updates around one direction, attackers around another (also scaled up)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=gen)
    benign = base + 0.3 * torch.randn(n_benign, dim, generator=gen)
    target = torch.randn(dim, generator=gen)
    att = 50 * (target + 0.01 * torch.randn(n_att, dim, generator=gen))
    return torch.cat([att, benign]), base


# --------------------------------------------------------------------------------------------
# FLAME
# --------------------------------------------------------------------------------------------


def test_flame_majority_single_linkage_known_example():
    # 1-D points on a line as cosine distances: two groups {0,1,2} (gaps 0.1) and {3,4} far
    pos = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.05], dtype=torch.float64)
    dist = (pos[:, None] - pos[None]).abs()
    accepted, threshold = flame_majority(dist)
    assert accepted.tolist() == [True, True, True, False, False]
    assert threshold == pytest.approx(0.1)


def test_flame_rejects_minority_cluster_and_clips_to_median_norm():
    x, base = _clustered(n_benign=12, n_att=5, seed=0)
    stacked = {"a": x[:, :8], "b": x[:, 8:].reshape(-1, 3, 4)}
    out, info = build_defense("flame", {"noise_factor": 0.0})(stacked, torch.ones(17))
    assert not info.kept[:5].any() and info.kept[5:].sum() >= 9  # at least the majority n//2+1
    # norms in float64, as the rule takes them from its float64 Gram matrix: a float32 norm
    # rounds by up to ~sqrt(d) eps32 relative, depending on the CPU's reduction kernel
    norms = x.double().norm(dim=1)
    med = float(norms.median())
    assert info.extra["median_norm"] == pytest.approx(med, rel=1e-12)
    flat = torch.cat([out["a"], out["b"].reshape(-1)])
    assert float(flat.norm()) <= med * (1 + 1e-5)
    cos = float(flat @ base / (flat.norm() * base.norm()))
    assert cos > 0.9


def test_flame_noise_is_seeded_by_seed_and_round():
    x, _ = _clustered(10, 2, seed=1)
    stacked = {"p": x}
    rule = build_defense("flame", {"noise_factor": 0.01})
    a, info = rule(stacked, torch.ones(12), AggregationContext(seed=3, round=4))
    b, _ = rule(stacked, torch.ones(12), AggregationContext(seed=3, round=4))
    c, _ = rule(stacked, torch.ones(12), AggregationContext(seed=3, round=5))
    clean, _ = build_defense("flame", {"noise_factor": 0.0})(stacked, torch.ones(12))
    assert torch.equal(a["p"], b["p"]) and not torch.equal(a["p"], c["p"])
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 4)
    expected = clean["p"] + info.extra["noise_std"] * torch.randn(20, generator=gen)
    torch.testing.assert_close(a["p"], expected)
    assert info.extra["noise_std"] == pytest.approx(0.01 * info.extra["median_norm"])


# --------------------------------------------------------------------------------------------
# FoolsGold
# --------------------------------------------------------------------------------------------


def test_foolsgold_downweights_sybils_across_rounds():
    gen = torch.Generator().manual_seed(0)
    n_h, n_s, dim = 6, 4, 30
    rule = build_defense("foolsgold", {})
    ids = torch.arange(n_h + n_s) * 10
    sybil_dir = torch.randn(dim, generator=gen)
    for rnd in range(3):
        honest = torch.randn(n_h, dim, generator=gen)
        sybil = sybil_dir + 0.01 * torch.randn(n_s, dim, generator=gen)
        stacked = {"p": torch.cat([honest, sybil])}
        out, info = rule(stacked, torch.ones(n_h + n_s), AggregationContext(client_ids=ids))
    assert info.kept[:n_h].all() and not info.kept[n_h:].any()
    torch.testing.assert_close(out["p"], (info.weights.float() @ stacked["p"]))
    # the history is what is compared: keyed by id, summed over rounds
    hist = rule.state_dict()
    assert hist["ids"].tolist() == ids.tolist() and hist["history"].shape == (10, dim)


def test_foolsgold_weights_known_values():
    # two identical histories (sybils) and one orthogonal honest history
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    alpha = foolsgold_weights(gram(h))
    # honest: 1 - 0 = 1 -> 0.99 -> logit(0.99) + 0.5 > 1 -> 1; sybils: 1 - 1 = 0 -> 0
    torch.testing.assert_close(alpha, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # partially similar pair: alpha_i = 1 - cos = 1 - 0.8 = 0.2 for both, normalised -> 1
    h = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    torch.testing.assert_close(foolsgold_weights(gram(h)), torch.ones(2, dtype=torch.float64))
    # logit with kappa: three clients, max cos 0.5 / 0.5 / 0.0
    h = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, -1.0]], dtype=torch.float64)
    cs = cosine_from_gram(gram(h))
    assert float(cs[0, 1]) == pytest.approx(0.5)
    a = foolsgold_weights(gram(h), kappa=1.0)
    # alpha before logit: [0.5, 0.5, 1.0] -> /max -> [0.5, 0.5, 0.99]; logit(0.5)+0.5 = 0.5
    torch.testing.assert_close(a, torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))


def test_foolsgold_sketch_approximates_exact():
    gen = torch.Generator().manual_seed(2)
    n_h, n_s, dim = 8, 4, 4000
    honest = torch.randn(n_h, dim, generator=gen)
    sybil = torch.randn(dim, generator=gen) + 0.01 * torch.randn(n_s, dim, generator=gen)
    stacked = {"a": torch.cat([honest, sybil])[:, :1000], "b": torch.cat([honest, sybil])[:, 1000:]}
    ctx = AggregationContext(client_ids=torch.arange(n_h + n_s))
    _, exact = build_defense("foolsgold", {})(stacked, torch.ones(12), ctx)
    _, sk = build_defense("foolsgold", {"sketch_dim": 512})(stacked, torch.ones(12), ctx)
    assert torch.equal(exact.kept, sk.kept)
    assert exact.kept[:n_h].all() and not exact.kept[n_h:].any()


def test_foolsgold_needs_client_ids():
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="client_ids"):
        build_defense("foolsgold", {})({"p": torch.randn(3, 2)}, torch.ones(3))
    with pytest.raises(ValueError, match="distinct"):
        build_defense("foolsgold", {})(
            {"p": torch.randn(3, 2)}, torch.ones(3),
            AggregationContext(client_ids=torch.tensor([1, 1, 2])),
        )


# --------------------------------------------------------------------------------------------
# FLTrust
# --------------------------------------------------------------------------------------------


def test_fltrust_known_values():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    root = {"p": torch.tensor([0.5, 0.0])}
    out, info = build_defense("fltrust", {})({"p": x}, torch.ones(4),
                                             AggregationContext(root_update=root))
    # trust: cos = 1, 0, -1 -> 0, 1/sqrt(2); each update rescaled to norm 0.5
    ts = torch.tensor([1.0, 0.0, 0.0, 1 / math.sqrt(2)])
    rescaled = torch.stack([torch.tensor([0.5, 0.0]), torch.zeros(2), torch.zeros(2),
                            torch.tensor([0.5, 0.5]) / math.sqrt(2)])
    expected = (ts[:, None] * rescaled).sum(0) / ts.sum()
    torch.testing.assert_close(out["p"], expected)
    assert info.kept.tolist() == [True, False, False, True]
    assert float(out["p"].norm()) <= 0.5 + 1e-6


def test_fltrust_bounded_by_root_norm_against_huge_updates():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=gen)
    x[:4] = 1e6 * torch.randn(4, 6, generator=gen)
    root = {"p": torch.randn(6, generator=gen)}
    out, _ = build_defense("fltrust", {})({"p": x}, torch.ones(10),
                                          AggregationContext(root_update=root))
    assert float(out["p"].norm()) <= float(root["p"].norm()) * (1 + 1e-5)


def test_fltrust_requires_root_update():
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="root_update"):
        build_defense("fltrust", {})({"p": torch.randn(3, 2)}, torch.ones(3))
    with pytest.raises(ValueError, match=r"root_update\['p'\]"):
        build_defense("fltrust", {})({"p": torch.randn(3, 2)}, torch.ones(3),
                                     AggregationContext(root_update={"p": torch.zeros(3)}))


# --------------------------------------------------------------------------------------------
# centered clipping
# --------------------------------------------------------------------------------------------


def test_centered_clipping_first_round_and_state():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    rule = build_defense("centered_clipping", {"tau": 1.0})
    out, info = rule({"p": x}, torch.ones(3))
    # from v = 0: clip(x_i) = (0.6, 0.8), (0.3, 0.4), 0 -> mean
    torch.testing.assert_close(out["p"], torch.tensor([0.3, 0.4]))
    assert info.kept.tolist() == [False, True, True]
    # second round starts from the previous aggregate
    out2, _ = rule({"p": x}, torch.ones(3))
    v = torch.tensor([0.3, 0.4])
    diffs = x - v
    clipped = diffs * torch.clamp(1.0 / diffs.norm(dim=1), max=1.0)[:, None]
    torch.testing.assert_close(out2["p"], v + clipped.mean(0))
    assert torch.equal(rule.state_dict()["center"]["p"], out2["p"])


def test_centered_clipping_bounded_influence_and_convergence():
    gen = torch.Generator().manual_seed(1)
    n, f, tau = 10, 3, 0.5
    benign = torch.randn(n - f, 5, generator=gen) * 0.1 + 1.0
    x = torch.cat([torch.full((f, 5), 1e6), benign])
    rule = build_defense("centered_clipping", {"tau": tau, "iters": 3})
    for _ in range(20):
        start = rule.state_dict()["center"]
        out, info = rule({"p": x}, torch.ones(n))
    # at the fixed point the f outliers pull with f * tau, the benign clients with
    # (n - f) * |b - v| once v is within tau of them: |v - b| <= f tau / (n - f) + spread
    spread = float((benign - benign.mean(0)).norm(dim=1).max())
    assert float((out["p"] - benign.mean(0)).norm()) <= f * tau / (n - f) + spread
    # out = center_weight * start + sum_i weights_i x_i
    recon = info.extra["center_weight"] * start["p"].double() + info.weights @ x.double()
    torch.testing.assert_close(out["p"].double(), recon, atol=1e-4, rtol=1e-6)
    assert not info.kept[:f].any()


def test_centered_clipping_momentum_smooths_centre():
    x = torch.tensor([[1.0], [1.0]])
    rule = build_defense("centered_clipping", {"tau": 10.0, "momentum": 0.5})
    out, _ = rule({"p": x}, torch.ones(2))
    torch.testing.assert_close(out["p"], torch.tensor([1.0]))
    torch.testing.assert_close(rule.state_dict()["center"]["p"], torch.tensor([0.5]))
