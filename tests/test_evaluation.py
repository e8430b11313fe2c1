"""The evaluation driver (fedrec.evaluation): hand-computed metrics, sampled candidates, chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.evaluation import EvalProtocol, evaluate, popularity_scorer

N_ITEMS = 20


def by_id(seqs: torch.Tensor) -> torch.Tensor:
    """A fixed scorer: item 1 is best, item N_ITEMS worst, for every user."""
    s = -torch.arange(N_ITEMS + 1, dtype=torch.float32).expand(seqs.shape[0], -1).clone()
    s[:, 0] = float("-inf")
    return s


def favour(item: int, second: int):
    """A scorer that ranks ``item`` first and ``second`` second for every user."""

    def score(seqs: torch.Tensor) -> torch.Tensor:
        s = by_id(seqs)
        s[:, item] = 100.0
        s[:, second] = 99.0
        return s

    return score


HIST = [np.array([1, 2]), np.array([5]), np.array([3, 4, 6])]
HELD = np.array([3, 1, 2])


def run(scorer=by_id, hist=HIST, held=HELD, targets=None, **kw):
    kw.setdefault("ks", (1, 2))
    return evaluate(scorer, hist, held, EvalProtocol(**kw), max_len=5, n_items=N_ITEMS,
                    targets=targets)


def test_full_ranking_hand_computed():
    # excluding history: user0 rank 0 (1, 2 are history), user1 rank 0, user2 rank 1 (item 1)
    m = run(sampled=False)
    assert m["full/HR@1"] == pytest.approx(2 / 3)
    assert m["full/HR@2"] == pytest.approx(1.0)
    assert m["full/NDCG@2"] == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)
    assert m["full/MRR"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert not any(k.startswith("sampled/") for k in m)
    # keeping history: ranks 2, 0, 1
    m = run(sampled=False, exclude_history=False, ks=(1, 3))
    assert m["full/HR@1"] == pytest.approx(1 / 3)
    assert m["full/HR@3"] == pytest.approx(1.0)
    assert m["full/NDCG@3"] == pytest.approx((1 / math.log2(4) + 1 + 1 / math.log2(3)) / 3)


def test_exposure_hand_computed():
    # target 2: user0 has it in history and user2 holds it out -> only user1 is eligible;
    # for user1 item 1 (the held-out item, not history) ranks above 2 -> rank 1
    m = run(targets=[2], sampled=False)
    assert m["full/ER@1"] == pytest.approx(0.0)
    assert m["full/ER@2"] == pytest.approx(1.0)
    # two targets, any of them counts
    hist = [np.array([2]), np.array([9]), np.array([1])]
    held = np.array([3, 3, 3])
    m = evaluate(by_id, hist, held, EvalProtocol(ks=(1, 5), sampled=False), 5, N_ITEMS,
                 targets=[1, 7])
    # eligible: users 0 and 1 (user2 has target 1 in its history); target 1 ranks 0 for both
    assert m["full/ER@1"] == pytest.approx(1.0)
    m = evaluate(by_id, hist, held, EvalProtocol(ks=(1, 5), sampled=False), 5, N_ITEMS,
                 targets=[7])
    # target 7 for user0: 1, 3, 4, 5, 6 above it (2 is history) -> rank 5; user1: rank 6;
    # user2: 2, 3, 4, 5, 6 above (1 is history) -> rank 5
    assert m["full/ER@5"] == pytest.approx(0.0)
    m = evaluate(by_id, hist, held, EvalProtocol(ks=(6, 7), sampled=False), 5, N_ITEMS,
                 targets=[7])
    assert m["full/ER@6"] == pytest.approx(2 / 3)
    assert m["full/ER@7"] == pytest.approx(1.0)


def test_sampled_with_all_items_equals_full_ranking():
    """With as many negatives as there are non-history items, sampled ranking is full ranking;
    this holds with targets only if the targets are in every candidate list."""
    rng = np.random.default_rng(0)
    hist = [rng.choice(np.arange(3, N_ITEMS + 1), size=4, replace=False) for _ in range(9)]
    held = np.array([rng.choice(np.setdiff1d(np.arange(3, N_ITEMS + 1), h)) for h in hist])
    scorer = favour(2, 1)  # targets 1 and 2 rank first for everyone
    for targets in (None, [1, 2]):
        n_neg = N_ITEMS - 4 - 1 - len(targets or [])
        m = run(scorer, hist, held, targets, n_negatives=n_neg, ks=(1, 3, 5))
        for k in (1, 3, 5):
            assert m[f"sampled/HR@{k}"] == pytest.approx(m[f"full/HR@{k}"])
            assert m[f"sampled/NDCG@{k}"] == pytest.approx(m[f"full/NDCG@{k}"])
            if targets:
                assert m[f"sampled/ER@{k}"] == pytest.approx(m[f"full/ER@{k}"])
        assert m["sampled/MRR"] == pytest.approx(m["full/MRR"])
    # the two targets sit above every held-out item
    assert m["sampled/HR@1"] == 0.0 and m["sampled/ER@1"] == 1.0


def test_targets_are_in_the_sampled_candidates():
    # the target outranks the held-out item for everyone; few negatives, all scored lower
    scorer = favour(20, 3)
    hist = [np.array([5, 6]), np.array([7]), np.array([8, 9])]
    held = np.array([3, 3, 3])
    with_t = run(scorer, hist, held, [20], n_negatives=5)
    assert with_t["sampled/HR@1"] == 0.0 and with_t["sampled/HR@2"] == 1.0
    assert with_t["sampled/ER@1"] == 1.0


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(1)
    hist = [rng.choice(np.arange(1, N_ITEMS + 1), size=rng.integers(1, 7), replace=False)
            for _ in range(23)]
    held = np.array([rng.choice(np.setdiff1d(np.arange(1, N_ITEMS + 1), h)) for h in hist])
    g = torch.Generator().manual_seed(5)
    table = torch.randn(len(hist), N_ITEMS + 1, generator=g)
    row_of = {tuple(h[-5:]): i for i, h in enumerate(hist)}  # histories are distinct

    def scorer(seqs):
        rows = [row_of[tuple(int(x) for x in s if x > 0)] for s in seqs]
        out = table[rows].clone()
        out[:, 0] = float("-inf")
        return out

    assert len(row_of) == len(hist)
    ref = run(scorer, hist, held, [4, 11], n_negatives=8, ks=(1, 5, 10), batch_users=1024)
    for bu in (1, 4, 7):
        got = run(scorer, hist, held, [4, 11], n_negatives=8, ks=(1, 5, 10), batch_users=bu)
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k] == pytest.approx(ref[k], abs=1e-12), (bu, k)


def test_same_seed_same_negatives():
    rng = np.random.default_rng(2)
    hist = [rng.choice(np.arange(1, N_ITEMS + 1), size=3, replace=False) for _ in range(40)]
    held = np.array([rng.choice(np.setdiff1d(np.arange(1, N_ITEMS + 1), h)) for h in hist])
    a = run(by_id, hist, held, n_negatives=4, seed=3)
    b = run(by_id, hist, held, n_negatives=4, seed=3)
    c = run(by_id, hist, held, n_negatives=4, seed=4)
    assert a == b
    assert a["sampled/MRR"] != c["sampled/MRR"]
    assert a["full/MRR"] == c["full/MRR"]


def test_popularity_sampling_needs_counts_and_popularity_scorer():
    with pytest.raises(ValueError, match="negative_sampling"):
        run(negative_sampling="popularity", n_negatives=3)
    counts = np.zeros(N_ITEMS + 1)
    counts[1:] = np.arange(N_ITEMS, 0, -1)  # item 1 most popular
    pop = popularity_scorer(counts)
    s = pop(torch.zeros(2, 5, dtype=torch.long))
    assert s.shape == (2, N_ITEMS + 1) and torch.isneginf(s[:, 0]).all()
    assert run(pop, sampled=False) == run(by_id, sampled=False)
    m = evaluate(pop, HIST, HELD, EvalProtocol(ks=(1,), n_negatives=3,
                                               negative_sampling="popularity"),
                 5, N_ITEMS, popularity=counts)
    assert 0.0 <= m["sampled/HR@1"] <= 1.0
