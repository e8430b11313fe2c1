"""Synthetic generator: determinism, lengths, id range, popularity skew, Markov structure.

Every property is checked for both implementations (``generator``); the sequential one is also
pinned to its historical output, and the vectorized one is checked to draw the same model.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from fedrec.data.synthetic import GENERATORS, SyntheticSpec, generate
from fedrec.errors import ConfigError


@pytest.fixture(scope="module", params=GENERATORS)
def default(request):
    return generate(generator=request.param)


def _generator(ds) -> str:
    return ds.meta["synthetic"]["generator"]


def test_same_seed_same_data_different_seed_different(default):
    small = dict(n_users=60, n_items=80, n_interests=4, generator=_generator(default))
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
    short = generate(n_users=200, n_items=100, mean_len=30, min_len=8, max_len=12, seed=1,
                     generator=_generator(default))
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
    flat = generate(n_users=300, markov=0.0, seed=2, generator=_generator(default))
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


def test_sequential_generator_keeps_its_historical_output():
    # the default implementation must not change: committed results were drawn from it
    ds = generate(n_users=50, n_items=40, n_interests=4, mean_len=8, seed=5)
    assert ds.meta["synthetic"]["generator"] == "sequential"
    assert ds.n_interactions == 377
    assert [s.tolist() for s in ds.sequences[:2]] == [[16, 35, 33, 38, 6, 13, 34, 23, 9, 11, 2],
                                                      [36, 32, 29, 5, 33, 35, 24, 27, 18, 28]]


def test_vectorized_draws_the_same_model_as_sequential():
    kw = dict(n_users=3000, n_items=300, seed=4)
    a, b = generate(**kw), generate(generator="vectorized", **kw)
    sa, sb = a.stats(), b.stats()
    assert sb["mean_len"] == pytest.approx(sa["mean_len"], rel=0.05)
    assert sb["median_len"] == pytest.approx(sa["median_len"], abs=1)
    assert sb["top1pct_share"] == pytest.approx(sa["top1pct_share"], rel=0.2)
    assert sb["density"] == pytest.approx(sa["density"], rel=0.05)
    assert _top4_successor_share(b) == pytest.approx(_top4_successor_share(a), abs=0.05)
    assert not np.array_equal(np.concatenate(a.sequences), np.concatenate(b.sequences))


def _top4_successor_share(ds) -> float:
    flat = np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in ds.sequences])
    pairs, counts = np.unique(flat, axis=0, return_counts=True)
    order = np.lexsort((-counts, pairs[:, 0]))
    pairs, counts = pairs[order], counts[order]
    rank = np.arange(len(pairs)) - np.searchsorted(pairs[:, 0], pairs[:, 0])
    return float(counts[rank < 4].sum() / counts.sum())


def test_vectorized_has_exactly_the_drawn_shape_at_scale():
    # a catalog of 200k items and 20k users: the sequential generator needs minutes for this
    # (it rebuilds a group's distribution at every draw); here it is a pass over the arrays
    ds = generate(generator="vectorized", n_users=20_000, n_items=200_000, n_interests=50,
                  seed=1)
    lens = ds.lengths()
    assert ds.n_users == 20_000 and ds.n_items == 200_000
    assert lens.sum() == ds.n_interactions and lens.min() >= 5 and lens.max() <= 200
    assert abs(lens.mean() - 20) < 1
    flat = np.concatenate(ds.sequences)
    assert flat.min() >= 1 and flat.max() <= 200_000
    assert sum(len(s) - len(np.unique(s)) for s in ds.sequences[:2000]) == 0
    assert all(s.base is ds.sequences[0].base is not None for s in ds.sequences[1:3])  # views


def test_vectorized_tiny_vocabulary_fills_without_repeats():
    # lengths up to the whole catalog: the fallback must find the last unseen items
    ds = generate(generator="vectorized", n_users=40, n_items=10, n_interests=10, min_len=9,
                  max_len=10, mean_len=9.5, seed=3)
    assert all(len(np.unique(s)) == len(s) for s in ds.sequences)
    assert ds.lengths().max() == 10


def test_generator_key_is_a_config_error():
    with pytest.raises(ConfigError, match="data.synthetic.generator='fast': expected one of"):
        generate(generator="fast")
