"""Ranking and exposure metrics (fedrec.metrics) against brute-force loops and known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.metrics import (
    exposure,
    full_ranks,
    hit_rate,
    history_mask,
    ndcg,
    reciprocal_rank,
    sample_negatives,
    sampled_ranks,
)

V = 30  # columns: padding 0 + items 1..29


def random_scores(b: int, seed: int) -> torch.Tensor:
    """Integer-valued scores (many ties) so that strict '>' counting is exercised."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 12, (b, V), generator=g).to(torch.float32)


def brute_full_rank(scores, b, item, excluded):
    own = scores[b, item].item()
    return sum(1 for j in range(1, V) if j not in excluded and scores[b, j].item() > own)


# ----------------------------------------------------------------------------- known values


def test_known_values():
    ranks = torch.tensor([0, 1, 9, 10, 57])
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 0, 0]
    assert hit_rate(ranks, 1).tolist() == [1, 0, 0, 0, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0]
    assert ndcg(ranks, 10).tolist() == pytest.approx(expected)
    assert ndcg(ranks, 11).tolist() == pytest.approx(expected[:3] + [1 / math.log2(12), 0.0])
    assert reciprocal_rank(ranks).tolist() == pytest.approx([1, 1 / 2, 1 / 10, 1 / 11, 1 / 58])

    scores = torch.tensor([[float("-inf"), 0.5, 0.9, 0.1, 0.7]])
    # item 1 (0.5): items 2 (0.9) and 4 (0.7) are higher
    assert full_ranks(scores, torch.tensor([1])).tolist() == [2]
    # history {2} excluded: only item 4 is higher
    hist = history_mask([torch.tensor([2])], 5)
    assert full_ranks(scores, torch.tensor([1]), hist).tolist() == [1]
    # the ranked item itself is never removed, even if in the excluded set
    hist = history_mask([torch.tensor([1, 2])], 5)
    assert full_ranks(scores, torch.tensor([1]), hist).tolist() == [1]
    # sampled: candidates {1, 3, 4}: only 4 beats 1
    assert sampled_ranks(scores, torch.tensor([1]), torch.tensor([[3, 4]])).tolist() == [1]


def test_history_mask_from_list_and_tensor():
    m = history_mask([torch.tensor([3, 1]), torch.tensor([], dtype=torch.long), torch.tensor([4])], 6)
    assert m.tolist() == [
        [True, True, False, True, False, False],
        [True, False, False, False, False, False],
        [True, False, False, False, True, False],
    ]
    padded = torch.tensor([[0, 3, 1], [0, 0, 0], [0, 0, 4]])
    assert torch.equal(history_mask(padded, 6), m)


# ----------------------------------------------------------------------------- full ranking


@pytest.mark.parametrize("exclude", [False, True])
def test_full_ranks_match_brute_force(exclude):
    b = 25
    scores = random_scores(b, 0)
    scores[:, 0] = 100.0  # padding column must be ignored even when it scores highest
    rng = np.random.default_rng(1)
    hists = [rng.choice(np.arange(1, V), size=rng.integers(0, 8), replace=False) for _ in range(b)]
    items = torch.as_tensor(rng.integers(1, V, size=(b, 3)))  # several items per user
    mask = history_mask([torch.as_tensor(h, dtype=torch.long) for h in hists], V)
    got = full_ranks(scores, items, mask if exclude else None)
    got1 = full_ranks(scores, items[:, 0], mask if exclude else None)
    for i in range(b):
        excluded = set(hists[i].tolist()) if exclude else set()
        for t in range(3):
            it = int(items[i, t])
            assert got[i, t] == brute_full_rank(scores, i, it, excluded - {it})
        assert got1[i] == got[i, 0]


def test_metric_values_from_brute_force_ranks():
    b = 40
    scores = random_scores(b, 2) + torch.rand(b, V, generator=torch.Generator().manual_seed(3))
    items = torch.randint(1, V, (b,), generator=torch.Generator().manual_seed(4))
    ranks = full_ranks(scores, items)
    for k in (1, 5, 10):
        hr = ndcg_sum = 0.0
        for i in range(b):
            r = brute_full_rank(scores, i, int(items[i]), set())
            if r < k:
                hr += 1
                ndcg_sum += 1 / math.log2(r + 2)
        assert hit_rate(ranks, k).mean().item() == pytest.approx(hr / b)
        assert ndcg(ranks, k).mean().item() == pytest.approx(ndcg_sum / b)
    mrr = sum(1 / (brute_full_rank(scores, i, int(items[i]), set()) + 1) for i in range(b)) / b
    assert reciprocal_rank(ranks).mean().item() == pytest.approx(mrr)


# ----------------------------------------------------------------------------- sampled


def test_sampled_ranks_match_brute_force():
    b = 20
    scores = random_scores(b, 5)
    g = torch.Generator().manual_seed(6)
    items = torch.randint(1, V, (b, 2), generator=g)
    negs = torch.randint(1, V, (b, 7), generator=g)
    got = sampled_ranks(scores, items, negs)
    for i in range(b):
        cand = items[i].tolist() + negs[i].tolist()
        for t in range(2):
            own = scores[i, int(items[i, t])]
            assert got[i, t] == sum(1 for c in cand if scores[i, c] > own)
    one = sampled_ranks(scores, items[:, 0], negs)  # a single ranked item per user
    for i in range(b):
        own = scores[i, int(items[i, 0])]
        assert one[i] == sum(1 for c in negs[i].tolist() if scores[i, c] > own)


def test_sample_negatives_avoid_forbidden_and_are_distinct():
    b, n = 60, 10
    rng = np.random.default_rng(7)
    forbidden = torch.zeros(b, V, dtype=torch.bool)
    forbidden[:, 0] = True
    for i in range(b):
        forbidden[i, rng.choice(np.arange(1, V), size=rng.integers(0, V - 1 - n), replace=False)] = True
    for weights in (None, torch.arange(V, dtype=torch.float64) + 1):
        negs = sample_negatives(n, forbidden, torch.Generator().manual_seed(8), weights)
        assert negs.shape == (b, n)
        for i in range(b):
            row = negs[i].tolist()
            assert len(set(row)) == n
            assert not forbidden[i, row].any()
    # exactly as many allowed items as asked for: all of them are drawn
    tight = torch.ones(2, V, dtype=torch.bool)
    tight[:, 1:4] = False
    negs = sample_negatives(3, tight, torch.Generator().manual_seed(0))
    assert sorted(negs[0].tolist()) == sorted(negs[1].tolist()) == [1, 2, 3]
    with pytest.raises(ValueError, match="eval.n_negatives=4"):
        sample_negatives(4, tight, torch.Generator().manual_seed(0))


def test_sample_negatives_is_seeded():
    forbidden = torch.zeros(5, V, dtype=torch.bool)
    forbidden[:, 0] = True
    a = sample_negatives(6, forbidden, torch.Generator().manual_seed(1))
    b = sample_negatives(6, forbidden, torch.Generator().manual_seed(1))
    c = sample_negatives(6, forbidden, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_negatives_uniform_and_popularity_frequencies():
    """Uniform draws are flat; popularity weights shift draws toward popular items ∝ weight."""
    b = 20000
    forbidden = torch.zeros(b, V, dtype=torch.bool)
    forbidden[:, 0] = True
    forbidden[:, 1] = True  # forbidden items are never drawn and take no mass
    counts_u = torch.bincount(sample_negatives(1, forbidden, torch.Generator().manual_seed(3))[:, 0],
                              minlength=V).double()
    assert counts_u[:2].sum() == 0
    p = 1 / (V - 2)
    assert (counts_u[2:] / b - p).abs().max() < 5 * math.sqrt(p * (1 - p) / b)

    weights = torch.ones(V, dtype=torch.float64)
    weights[2:8] = 10.0  # six popular items
    counts_p = torch.bincount(
        sample_negatives(1, forbidden, torch.Generator().manual_seed(3), weights)[:, 0], minlength=V
    ).double()
    probs = weights.clone()
    probs[:2] = 0
    probs /= probs.sum()
    for j in range(2, V):
        pj = probs[j].item()
        assert abs(counts_p[j].item() / b - pj) < 5 * math.sqrt(pj * (1 - pj) / b), j
    # with several draws per user (without replacement) popular items are still over-represented
    many = sample_negatives(5, forbidden, torch.Generator().manual_seed(4), weights)
    freq = torch.bincount(many.flatten(), minlength=V).double() / many.numel()
    assert freq[2:8].mean() > 3 * freq[8:].mean()


# ----------------------------------------------------------------------------- exposure


def test_exposure_matches_brute_force():
    b, t = 50, 3
    g = torch.Generator().manual_seed(9)
    tranks = torch.randint(0, 30, (b, t), generator=g)
    eligible = torch.rand(b, generator=g) > 0.3
    for k in (1, 5, 10, 20):
        hits = sum(1 for i in range(b) if eligible[i] and any(int(r) < k for r in tranks[i]))
        assert exposure(tranks, eligible, k).item() == pytest.approx(hits / int(eligible.sum()))


def test_exposure_known_values():
    tranks = torch.tensor([[0, 50], [50, 3], [50, 50], [0, 0]])
    eligible = torch.tensor([True, True, True, False])  # the last user is not counted
    assert exposure(tranks, eligible, 1).item() == pytest.approx(1 / 3)
    assert exposure(tranks, eligible, 5).item() == pytest.approx(2 / 3)
    assert exposure(tranks, torch.zeros(4, dtype=torch.bool), 5).item() == 0.0
