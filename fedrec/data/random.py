"""Counter-based random numbers: a value depends only on (seed, stream, position).

Federated simulation must give a client the same random draws (negative samples, cloze masks)
whether it is computed alone (the Flower ClientApp) or inside a batch of 256 clients (the local
engine). Drawing from a hash of ``(seed, stream_id, counter)`` makes that true by construction
and stays fully vectorised. The mixer is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def stream_key(*parts: int | np.ndarray) -> np.ndarray:
    """Combine integers (or integer arrays, broadcast) into 64-bit stream keys."""
    with np.errstate(over="ignore"):
        key = np.uint64(0x243F6A8885A308D3)
        for p in parts:
            key = _mix(np.asarray(p).astype(np.uint64) + key * _GOLDEN + _GOLDEN)
        return np.asarray(key, dtype=np.uint64)


def uniform_bits(keys: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """64 random bits per cell of ``[len(keys), *shape]``, row ``r`` drawn from stream ``keys[r]``."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    n = int(np.prod(shape)) if shape else 1
    with np.errstate(over="ignore"):
        ctr = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix(keys[:, None] + ctr[None, :])
    return bits.reshape((len(keys), *shape))


def uniform_ints(keys: np.ndarray, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
    """Integers uniform in ``[low, high)`` (modulo bias < 2^-40 for vocabularies < 2^24)."""
    span = np.uint64(high - low)
    return (uniform_bits(keys, shape) % span).astype(np.int64) + low


def uniform_floats(keys: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Floats uniform in ``[0, 1)`` with 53 random bits."""
    return (uniform_bits(keys, shape) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
