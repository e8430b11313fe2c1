"""A classical reference for CrossTimeNet's benchmark: 1-nearest-neighbour classification with
dynamic time warping under a Sakoe-Chiba band.

DTW (H. Sakoe, S. Chiba, "Dynamic programming algorithm optimization for spoken word
recognition", IEEE TASSP 1978): ``D(i, j) = c(i, j) + min(D(i-1, j-1), D(i-1, j), D(i, j-1))``
with ``D(0, 0) = c(0, 0)``, the cost ``c(i, j)`` the squared Euclidean distance between the
channel vectors at steps ``i`` and ``j`` (for several channels this is the "dependent" DTW_D of
Shokoohi-Yekta et al., DMKD 2017), and only cells with ``|i - j| <= window`` allowed; the
distance is ``D(L-1, L-1)`` (no square root; the ranking is the same). ``window = 0`` is the
squared Euclidean distance.

The recursion is evaluated one anti-diagonal ``i + j = k`` at a time: every cell of a diagonal
depends only on the two diagonals before it, so each of the ``2L - 1`` steps is one tensor
operation over all (query, reference) pairs and all cells of the diagonal (torch, no compiled
extension).

The window is chosen as in the UCR archive's DTW baseline: leave-one-out 1-NN accuracy on the
training set over a grid of windows (:data:`WINDOW_GRID`, shares of the length), ties to the
smallest window.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: candidate Sakoe-Chiba windows, as shares of the series length
WINDOW_GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)


def dtw_distances(Q: Tensor, R: Tensor, window: int, max_elements: int = 2 ** 24) -> Tensor:
    """DTW distances between every query and every reference (module docstring).

    Parameters
    ----------
    Q : Tensor ``[nq, C, L]``
    R : Tensor ``[nr, C, L]``
        Series of the same channel count and length (float).
    window : int
        Sakoe-Chiba band half-width, ``>= 0``.
    max_elements : int
        Queries are processed in chunks so that one diagonal's cost tensor
        (``chunk * nr * C * L``) stays below this many elements.

    Returns
    -------
    Tensor ``[nq, nr]`` (float64)
    """
    if Q.dim() != 3 or R.dim() != 3 or Q.shape[1:] != R.shape[1:]:
        raise ValueError(f"Q, R: expected [n, C, L] with the same C and L, got "
                         f"{tuple(Q.shape)} and {tuple(R.shape)}")
    if window < 0:
        raise ValueError(f"window: expected >= 0, got {window}")
    Q, R = Q.to(torch.float64), R.to(torch.float64)
    nq, c, length = Q.shape
    chunk = max(1, max_elements // max(1, R.shape[0] * c * length))
    return torch.cat([_dtw_chunk(Q[s: s + chunk], R, window) for s in range(0, nq, chunk)])


def _dtw_chunk(Q: Tensor, R: Tensor, window: int) -> Tensor:
    nq, nr, length = Q.shape[0], R.shape[0], Q.shape[2]
    inf = float("inf")
    # prev1/prev2: D on the diagonals k-1 and k-2, indexed by i (inf outside the band)
    prev2 = torch.full((nq, nr, length + 1), inf, dtype=Q.dtype)  # column 0: i = -1
    prev1 = prev2.clone()
    for k in range(2 * length - 1):
        # cells (i, k - i) of the diagonal inside the grid and the band |2i - k| <= window
        lo = max(0, k - length + 1, -((window - k) // 2))
        hi = min(length - 1, k, (k + window) // 2)
        cur = torch.full_like(prev1, inf)
        if lo <= hi:
            i = torch.arange(lo, hi + 1)
            cost = (Q[:, None, :, lo: hi + 1] - R[None, :, :, k - i]).pow(2).sum(2)
            if k == 0:
                best = torch.zeros_like(cost)
            else:  # D(i-1, j-1) on k-2, D(i-1, j) and D(i, j-1) on k-1 (column = i + 1)
                best = torch.minimum(torch.minimum(prev2[..., lo: hi + 1], prev1[..., lo: hi + 1]),
                                     prev1[..., lo + 1: hi + 2])
            cur[..., lo + 1: hi + 2] = cost + best
        prev2, prev1 = prev1, cur
    return prev1[..., length]


def dtw_reference(Q: np.ndarray, R: np.ndarray, window: int) -> np.ndarray:
    """The textbook O(L^2) double loop (for tests): ``[nq, nr]`` DTW distances."""
    Q, R = np.asarray(Q, dtype=np.float64), np.asarray(R, dtype=np.float64)
    length = Q.shape[2]
    out = np.zeros((len(Q), len(R)))
    for a in range(len(Q)):
        for b in range(len(R)):
            D = np.full((length, length), np.inf)
            for i in range(length):
                for j in range(max(0, i - window), min(length, i + window + 1)):
                    c = float(((Q[a, :, i] - R[b, :, j]) ** 2).sum())
                    if i == 0 and j == 0:
                        D[i, j] = c
                        continue
                    prev = min(D[i - 1, j - 1] if i and j else np.inf,
                               D[i - 1, j] if i else np.inf, D[i, j - 1] if j else np.inf)
                    D[i, j] = c + prev
            out[a, b] = D[-1, -1]
    return out


def choose_window(X: Tensor, y: Tensor, grid: tuple[float, ...] = WINDOW_GRID) -> tuple[int, float]:
    """The window of ``grid`` (shares of the length) with the best leave-one-out 1-NN accuracy
    on ``(X, y)``; ties go to the smallest window.

    Returns
    -------
    window, accuracy : int, float
    """
    length = X.shape[2]
    best = (-1.0, 0)
    seen = set()
    for share in grid:
        w = int(round(share * length))
        if w in seen:
            continue
        seen.add(w)
        d = dtw_distances(X, X, w)
        d.fill_diagonal_(float("inf"))
        acc = float((y[d.argmin(1)] == y).double().mean())
        if acc > best[0]:
            best = (acc, w)
    return best[1], best[0]


def one_nn_dtw(X_train: Tensor, y_train: Tensor, X_test: Tensor, window: int) -> Tensor:
    """Predicted labels of ``X_test``: the label of the DTW-nearest training series (ties to the
    first)."""
    return y_train[dtw_distances(X_test, X_train, window).argmin(1)]
