"""Synthetic generator: determinism, lengths, id range, popularity skew, Markov structure."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from fedrec.data.synthetic import SyntheticSpec, generate
from fedrec.errors import ConfigError


@pytest.fixture(scope="module")
def default():
    return generate()


def test_same_seed_same_data_different_seed_different(default):
    small = dict(n_users=60, n_items=80, n_interests=4)
    a, b, c = generate(seed=3, **small), generate(seed=3, **small), generate(seed=4, **small)
    assert len(a.sequences) == 60
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert not all(len(x) == len(y) and np.array_equal(x, y)
                   for x, y in zip(a.sequences, c.sequences))
    assert a.meta["synthetic"]["seed"] == 3


def test_lengths_and_ids_in_range(default):
    spec = SyntheticSpec()
    lens = default.lengths()
    assert lens.min() >= spec.min_len and lens.max() <= spec.max_len
    flat = np.concatenate(default.sequences)
    assert flat.min() >= 1 and flat.max() <= spec.n_items == default.n_items
    short = generate(n_users=200, n_items=100, mean_len=30, min_len=8, max_len=12, seed=1)
    assert short.lengths().min() >= 8 and short.lengths().max() <= 12
    assert short.lengths().max() == 12  # the cap binds for a mean above it


def test_users_rarely_repeat_items(default):
    repeats = sum(len(s) - len(np.unique(s)) for s in default.sequences)
    assert repeats / default.n_interactions < 0.01


def test_popularity_is_skewed(default):
    counts = np.sort(default.item_counts()[1:])[::-1]
    k = int(np.ceil(default.n_items / 100))
    share = counts[:k].sum() / counts.sum()
    assert share > 3 * (k / default.n_items)  # several times the uniform share
    assert default.stats()["top1pct_share"] == pytest.approx(share, rel=0.05)


def test_markov_structure_is_real(default):
    succ: dict[int, Counter] = defaultdict(Counter)
    for s in default.sequences:
        for a, b in zip(s[:-1].tolist(), s[1:].tolist()):
            succ[a][b] += 1
    frequent = [c for c in succ.values() if sum(c.values()) >= 20]
    assert len(frequent) > 50
    total = sum(sum(c.values()) for c in frequent)
    top4 = sum(sum(v for _, v in c.most_common(4)) for c in frequent)
    counts = default.item_counts()[1:]
    marginal_top4 = np.sort(counts)[::-1][:4].sum() / counts.sum()
    assert top4 / total > 0.5
    assert top4 / total > 5 * marginal_top4
    # without the Markov chain the successor distribution is no more concentrated than popularity
    flat = generate(n_users=300, markov=0.0, seed=2)
    succ2: dict[int, Counter] = defaultdict(Counter)
    for s in flat.sequences:
        for a, b in zip(s[:-1].tolist(), s[1:].tolist()):
            succ2[a][b] += 1
    freq2 = [c for c in succ2.values() if sum(c.values()) >= 20]
    share2 = sum(sum(v for _, v in c.most_common(4)) for c in freq2) / sum(
        sum(c.values()) for c in freq2)
    assert share2 < 0.5 < top4 / total


@pytest.mark.parametrize("field, value", [("n_items", 5), ("min_len", 2), ("markov", 1.5),
                                          ("interest_alpha", 0.0), ("max_len", 3)])
def test_bad_parameters_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"data.synthetic.{field}="):
        generate(**{field: value})
