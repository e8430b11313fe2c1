"""Ranking metrics for binary multi-task recommendation: AUC and user-grouped AUC (GAUC).

AUC is the Mann--Whitney statistic computed from ranks with ties averaged (a tie between a
positive and a negative counts 1/2). GAUC, as used by GradCraft (Bai et al., KDD 2024,
arXiv:2407.19682), is the average of per-user AUCs over users that have both classes, weighted
by each such user's number of samples.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["auc", "gauc", "per_group_auc"]


def _as_arrays(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_score: expected {y.shape[0]} scores like y_true, got {s.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true: expected binary labels in {0, 1}")
    if np.isnan(s).any():
        raise ValueError("y_score: contains NaN")
    return y.astype(bool), s


def _tie_avg_ranks(keys: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of ``scores`` within each group of ``keys`` (ties averaged) + sort order."""
    order = np.lexsort((scores, keys))
    k, s = keys[order], scores[order]
    n = len(order)
    pos = np.arange(n, dtype=np.float64)
    # start of each group (by key) and of each tie block (same key and score)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = k[1:] != k[:-1]
    new_tie = new_group.copy()
    new_tie[1:] |= s[1:] != s[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    tie_id = np.cumsum(new_tie) - 1
    tie_first = pos[new_tie]
    tie_last = np.append(tie_first[1:] - 1, n - 1)
    avg_pos = (tie_first + tie_last) / 2.0
    ranks_sorted = avg_pos[tie_id] - group_start + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks, order


def auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve from tie-averaged ranks.

    Parameters
    ----------
    y_true : array-like of {0, 1}
        Binary labels.
    y_score : array-like of float
        Scores (higher = more likely positive).

    Returns
    -------
    float
        ``P(score_pos > score_neg) + ½ P(tie)``; NaN if only one class is present.

    Raises
    ------
    ValueError
        On shape mismatch, non-binary labels or NaN scores.
    """
    y, s = _as_arrays(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks, _ = _tie_avg_ranks(np.zeros(y.size, dtype=np.int64), s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_group_auc(
    y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC of every group (vectorised; ties averaged within a group).

    Parameters
    ----------
    y_true, y_score : array-like
        Labels and scores.
    groups : array-like of int
        Group id (e.g. user id) of each sample.

    Returns
    -------
    group_ids : np.ndarray
        Sorted unique group ids.
    aucs : np.ndarray
        AUC per group (NaN for groups with a single class).
    counts : np.ndarray
        Number of samples per group.
    """
    y, s = _as_arrays(y_true, y_score)
    g = np.asarray(groups).reshape(-1)
    if g.shape != y.shape:
        raise ValueError(f"groups: expected {y.shape[0]} group ids like y_true, got {g.shape[0]}")
    group_ids, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    ranks, _ = _tie_avg_ranks(inv, s)
    n_pos = np.bincount(inv, weights=y.astype(np.float64), minlength=len(group_ids))
    n_neg = counts - n_pos
    rank_sum = np.bincount(inv, weights=np.where(y, ranks, 0.0), minlength=len(group_ids))
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    aucs[(n_pos == 0) | (n_neg == 0)] = np.nan
    return group_ids, aucs, counts


def gauc(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike) -> float:
    """User-grouped AUC: sample-count-weighted mean of per-user AUCs over users with both classes.

    Parameters
    ----------
    y_true, y_score : array-like
        Labels and scores.
    groups : array-like of int
        User id of each sample.

    Returns
    -------
    float
        ``Σ_u n_u · AUC_u / Σ_u n_u`` over users with both classes; NaN if there is none.
    """
    _, aucs, counts = per_group_auc(y_true, y_score, groups)
    valid = ~np.isnan(aucs)
    if not valid.any():
        return float("nan")
    return float((aucs[valid] * counts[valid]).sum() / counts[valid].sum())
