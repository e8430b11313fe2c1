"""Counter-based RNG: draws depend only on (key, position), ints in range, uniform."""

from __future__ import annotations

import numpy as np

from fedrec.data.random import stream_key, uniform_bits, uniform_floats, uniform_ints


def test_same_key_same_draws_regardless_of_batch():
    keys = stream_key(7, np.arange(256), 3)
    batch = uniform_ints(keys, (5, 4), 1, 1000)
    for r in (0, 17, 255):
        alone = uniform_ints(stream_key(7, np.array([r]), 3), (5, 4), 1, 1000)
        np.testing.assert_array_equal(alone[0], batch[r])
    shuffled = np.random.default_rng(0).permutation(256)
    np.testing.assert_array_equal(uniform_ints(keys[shuffled], (5, 4), 1, 1000), batch[shuffled])
    # a longer draw extends the shorter one: position i does not depend on the shape
    long = uniform_bits(keys[:3], (50,))
    np.testing.assert_array_equal(long[:, :20], uniform_bits(keys[:3], (20,)))


def test_different_keys_differ():
    a = uniform_bits(stream_key(1, 2), (100,))
    assert not np.array_equal(a, uniform_bits(stream_key(1, 3), (100,)))
    assert not np.array_equal(a, uniform_bits(stream_key(2, 2), (100,)))
    assert len(np.unique(uniform_bits(stream_key(0, np.arange(1000)), (1,)))) == 1000


def test_ints_in_range_and_roughly_uniform():
    low, high = 3, 53
    draws = uniform_ints(stream_key(11, np.arange(400)), (250,), low, high)
    assert draws.min() >= low and draws.max() < high and draws.dtype == np.int64
    counts = np.bincount(draws.ravel() - low, minlength=high - low)
    expected = draws.size / (high - low)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 49 degrees of freedom: the 99.9% quantile is about 86
    assert chi2 < 86
    assert (counts > 0).all()


def test_floats_in_unit_interval_and_uniform():
    u = uniform_floats(stream_key(5, np.arange(100)), (1000,))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = u.size / 20
    assert ((hist - expected) ** 2 / expected).sum() < 45  # 19 dof, 99.9% quantile ~43.8
