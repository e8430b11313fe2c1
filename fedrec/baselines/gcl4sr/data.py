"""Prefix expansion: every prefix of a training sequence is one next-item training sample.

GCL4SR (Zhang et al., IJCAI 2022, arXiv 2205.14837) trains on ``(u, S_{1:k}, v_{k+1})`` for
``k = 1..n-1`` of each user's training sequence ``S`` (its items without the validation and
test items), keeping the last ``max_len`` items of each prefix, left-padded.

The samples are stored as ``(user, start, end)`` offsets into one flat item array, and batches
are gathered with one vectorised index operation, so an epoch of ~350k samples needs no per-sample
Python work and no ``[n_samples, max_len]`` matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrefixSamples:
    """All prefix samples of a set of sequences.

    Attributes
    ----------
    flat : numpy.ndarray
        Concatenated sequences (int64).
    users : numpy.ndarray
        ``[N]`` user (row) index of each sample.
    starts : numpy.ndarray
        ``[N]`` offset in ``flat`` of the first item of the sample's sequence.
    ends : numpy.ndarray
        ``[N]`` offset in ``flat`` of the target; the input is ``flat[starts:ends]``.
    max_len : int
        Longest input kept (older items are dropped).
    """

    flat: np.ndarray
    users: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    max_len: int

    def __len__(self) -> int:
        return int(len(self.users))

    @classmethod
    def from_sequences(cls, seqs: Sequence[np.ndarray], max_len: int,
                       users: np.ndarray | None = None) -> PrefixSamples:
        """Expand ``seqs`` (row ``i`` belongs to ``users[i]``, default ``i``) into prefixes.

        Raises
        ------
        ValueError
            If ``max_len < 1`` or ``users`` has the wrong length.
        """
        if max_len < 1:
            raise ValueError(f"max_len={max_len}: expected >= 1")
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        users = np.arange(len(seqs)) if users is None else np.asarray(users, dtype=np.int64)
        if len(users) != len(seqs):
            raise ValueError(f"users: expected {len(seqs)} entries, got {len(users)}")
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if len(seqs) else \
            np.zeros(0, dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(seqs) else lens
        n_samples = np.maximum(lens - 1, 0)
        row = np.repeat(np.arange(len(seqs)), n_samples)
        starts = first[row]
        # k-th sample of a row (k = 1..n-1) predicts flat[start + k]
        k = np.arange(len(row)) - np.repeat(np.cumsum(n_samples) - n_samples, n_samples) + 1
        return cls(flat, users[row], starts, starts + k, int(max_len))

    def lengths(self) -> np.ndarray:
        """Input length of every sample (after truncation to ``max_len``)."""
        return np.minimum(self.ends - self.starts, self.max_len)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users ``[B]``, left-padded inputs ``[B, W]`` and targets ``[B]`` of samples ``idx``.

        ``W`` is the longest (truncated) input of the batch.
        """
        starts, ends = self.starts[idx], self.ends[idx]
        lens = np.minimum(ends - starts, self.max_len)
        width = max(1, int(lens.max(initial=1)))
        pos = ends[:, None] - width + np.arange(width)[None, :]
        keep = pos >= ends[:, None] - lens[:, None]
        inputs = np.where(keep, self.flat[np.where(keep, pos, 0)], 0)
        return self.users[idx], inputs, self.flat[ends]


def expand_prefixes(seqs: Sequence[np.ndarray], max_len: int,
                    users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All prefix samples at once: ``(users [N], inputs [N, W], targets [N])``."""
    samples = PrefixSamples.from_sequences(seqs, max_len, users)
    if not len(samples):
        return (np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.int64),
                np.zeros(0, dtype=np.int64))
    return samples.batch(np.arange(len(samples)))
