"""Preprocessing steps every sequential-recommendation paper applies.

k-core filtering (iterated until every kept user and item has at least ``k`` interactions),
minimum sequence length, contiguous id remapping (keeping the map), and truncation to the most
recent ``max_len`` items.
"""

from __future__ import annotations

import numpy as np

from fedrec.data.dataset import SequenceDataset, split_flat
from fedrec.errors import ConfigError


def kcore(ds: SequenceDataset, k: int, max_rounds: int = 100) -> SequenceDataset:
    """Iteratively drop users and items with fewer than ``k`` interactions.

    Parameters
    ----------
    ds : SequenceDataset
        Input dataset.
    k : int
        Core size; ``k <= 1`` returns ``ds`` unchanged.
    max_rounds : int
        Safety bound on the number of filtering passes.

    Returns
    -------
    SequenceDataset
        Filtered dataset (item ids not yet remapped; call :func:`remap_items`).
    """
    if k <= 1:
        return ds
    seqs = list(ds.sequences)
    users = np.arange(len(seqs)) if ds.user_ids is None else np.asarray(ds.user_ids)
    for _ in range(max_rounds):
        counts = np.bincount(np.concatenate(seqs), minlength=ds.n_items + 1) if seqs else None
        if counts is None:
            break
        keep_item = counts >= k
        new = [s[keep_item[s]] for s in seqs]
        keep_user = np.array([len(s) >= k for s in new], dtype=bool)
        changed = any(len(a) != len(b) for a, b in zip(new, seqs)) or not keep_user.all()
        seqs = [s for s, ok in zip(new, keep_user) if ok]
        users = users[keep_user]
        if not changed:
            break
    return SequenceDataset(seqs, ds.n_items, ds.name, ds.item_ids, users, dict(ds.meta))


def min_length(ds: SequenceDataset, n: int) -> SequenceDataset:
    """Drop users with fewer than ``n`` interactions."""
    keep = np.flatnonzero(ds.lengths() >= n)
    if len(keep) == ds.n_users:  # nothing to drop: the same rows
        return SequenceDataset(list(ds.sequences), ds.n_items, ds.name, ds.item_ids, ds.user_ids,
                               dict(ds.meta))
    users = None if ds.user_ids is None else np.asarray(ds.user_ids)[keep]
    return SequenceDataset(
        [ds.sequences[i] for i in keep], ds.n_items, ds.name, ds.item_ids, users, dict(ds.meta)
    )


def remap_items(ds: SequenceDataset) -> SequenceDataset:
    """Renumber the items that occur to ``1..n`` in order of first appearance.

    The returned dataset's ``item_ids[new_id]`` gives the previous id (composed with any
    earlier map), so results can be traced back to the raw data. Memory is proportional to the
    number of interactions, not to ``n_items`` (a raw file may use ids as large as 10^18).
    """
    if not ds.sequences:
        return ds
    flat = np.concatenate(ds.sequences)
    values, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    by_first = np.argsort(first, kind="stable")
    new_id = np.empty(len(values), dtype=np.int64)
    new_id[by_first] = np.arange(1, len(values) + 1)
    order = values[by_first]  # previous ids in order of first appearance
    prev = order if ds.item_ids is None else np.asarray(ds.item_ids)[order]
    item_ids = np.concatenate([[0], prev]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(ds.lengths())])
    seqs = split_flat(new_id[inverse.reshape(-1)], offsets)
    return SequenceDataset(seqs, len(order), ds.name, item_ids, ds.user_ids, dict(ds.meta))


def truncate(ds: SequenceDataset, max_len: int) -> SequenceDataset:
    """Keep only each user's most recent ``max_len`` items."""
    if max_len < 1:
        raise ConfigError(f"data.max_len={max_len}: expected a positive integer")
    return SequenceDataset(
        [s[-max_len:] for s in ds.sequences], ds.n_items, ds.name, ds.item_ids, ds.user_ids,
        dict(ds.meta),
    )


def preprocess(
    ds: SequenceDataset,
    kcore_k: int = 0,
    min_len: int = 3,
    remap: bool = True,
    truncate_len: int | None = None,
) -> SequenceDataset:
    """Apply the standard pipeline: k-core, minimum length, remapping, truncation.

    Parameters
    ----------
    ds : SequenceDataset
        Raw dataset.
    kcore_k : int
        k of the k-core filter (0 or 1 disables it).
    min_len : int
        Minimum sequence length kept (3 is the least a leave-one-out split needs).
    remap : bool
        Renumber items to ``1..n`` after filtering.
    truncate_len : int, optional
        Keep only the most recent items (the raw length is usually kept and the model's
        ``max_len`` applied at batching time instead).
    """
    out = kcore(ds, kcore_k)
    out = min_length(out, min_len)
    if not out.sequences:
        raise ConfigError(
            f"data: no user left after kcore={kcore_k}, min_len={min_len} on {ds.name!r}"
        )
    if remap:
        out = remap_items(out)
    if truncate_len:
        out = truncate(out, truncate_len)
    return out
