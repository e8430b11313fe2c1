"""Padding and batching of item sequences.

Sequences are **left-padded** with 0 so the most recent item is always in the last column.
A batch is padded only to its longest member (capped at ``max_len``): with right-anchored
position ids (see :mod:`fedrec.models.sasrec`) this gives the same numbers as padding to
``max_len`` at a fraction of the cost on datasets whose median length is far below ``max_len``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_left(seqs: Sequence[np.ndarray], max_len: int, width: int | None = None) -> np.ndarray:
    """Left-pad (and left-truncate) sequences into an int64 matrix.

    Parameters
    ----------
    seqs : sequence of numpy.ndarray
        Item id sequences.
    max_len : int
        Keep at most the last ``max_len`` items of each sequence.
    width : int, optional
        Output width; default ``min(max_len, longest sequence)`` (at least 1).

    Returns
    -------
    numpy.ndarray
        ``[len(seqs), width]`` matrix, 0 = padding.
    """
    if width is None:
        width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-min(max_len, width):]
        if len(s):
            out[r, width - len(s):] = s
    return out


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """``numpy`` int array → ``torch.long`` tensor on the run's device (torch's default device,
    see :func:`fedrec.device.device_scope`; on the CPU no copy when possible)."""
    t = torch.from_numpy(np.ascontiguousarray(a)).long()
    device = torch.get_default_device()
    return t if device.type == "cpu" else t.to(device)


def minibatches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches covering ``range(n)``, shuffled when ``rng`` is given."""
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    return [idx[i:i + batch_size] for i in range(0, n, batch_size)]
