"""Preprocessing (k-core, remapping, truncation), leave-one-out split and left padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.batching import pad_left
from fedrec.data.dataset import SequenceDataset
from fedrec.data.preprocess import kcore, min_length, preprocess, remap_items, truncate
from fedrec.data.split import leave_one_out
from fedrec.errors import ConfigError, DataFormatError


def ds_of(rows, n_items=None):
    seqs = [np.asarray(r, dtype=np.int64) for r in rows]
    n = n_items or max(max(r) for r in rows)
    return SequenceDataset(seqs, n, "t", user_ids=np.arange(1, len(rows) + 1))


def counts_ok(ds, k):
    if not ds.sequences:
        return True
    counts = ds.item_counts()
    used = counts[counts > 0]
    return all(len(s) >= k for s in ds.sequences) and (used >= k).all()


def test_kcore_hand_example():
    # item 9 occurs once -> dropped; then user 3 has 1 item (< 2) -> dropped; then item 4 occurs
    # once -> dropped; user 2 keeps [1, 2]. The cascade needs several rounds.
    ds = ds_of([[1, 2, 3], [1, 2, 4], [4, 9], [3, 1, 2]])
    out = kcore(ds, 2)
    assert [s.tolist() for s in out.sequences] == [[1, 2, 3], [1, 2], [3, 1, 2]]
    assert out.user_ids.tolist() == [1, 2, 4]
    assert counts_ok(out, 2)
    assert kcore(ds, 1) is ds


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=8), min_size=1, max_size=25),
       st.integers(2, 4))
def test_kcore_property(rows, k):
    ds = ds_of(rows, n_items=12)
    out = kcore(ds, k)
    assert counts_ok(out, k)
    # only whole users and item occurrences are removed, never reordered
    kept = dict(zip(out.user_ids.tolist(), out.sequences))
    for uid, seq in zip(ds.user_ids.tolist(), ds.sequences):
        if uid in kept:
            it = iter(seq.tolist())
            assert all(x in it for x in kept[uid].tolist())  # subsequence
    # maximality: every interaction of the original that survives in the core is kept
    core_items = set(np.concatenate(out.sequences).tolist()) if out.sequences else set()
    for uid, seq in kept.items():
        orig = ds.sequences[uid - 1]
        assert seq.tolist() == [x for x in orig.tolist() if x in core_items]


def test_remap_keeps_the_map_and_composes():
    ds = ds_of([[7, 3, 7], [10, 3]], n_items=10)
    out = remap_items(ds)
    assert [s.tolist() for s in out.sequences] == [[1, 2, 1], [3, 2]]
    assert out.n_items == 3
    for new_seq, old_seq in zip(out.sequences, ds.sequences):
        assert (out.item_ids[new_seq] == old_seq).all()
    again = remap_items(SequenceDataset([np.array([3, 1])], 3, item_ids=out.item_ids))
    assert (again.item_ids[again.sequences[0]] == np.array([10, 7])).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=6), min_size=1, max_size=10))
def test_remap_property(rows):
    ds = ds_of(rows, n_items=50)
    out = remap_items(ds)
    used = np.unique(np.concatenate(out.sequences))
    assert used.tolist() == list(range(1, out.n_items + 1))
    for a, b in zip(out.sequences, ds.sequences):
        assert (out.item_ids[a] == b).all()


def test_truncate_keeps_most_recent():
    out = truncate(ds_of([[1, 2, 3, 4, 5], [6, 7]]), 3)
    assert [s.tolist() for s in out.sequences] == [[3, 4, 5], [6, 7]]
    with pytest.raises(ConfigError, match="data.max_len=0"):
        truncate(ds_of([[1]]), 0)


def test_min_length_and_preprocess_pipeline():
    ds = ds_of([[5, 6], [5, 6, 8, 9], [6, 5, 9]], n_items=9)
    assert min_length(ds, 3).user_ids.tolist() == [2, 3]
    out = preprocess(ds, kcore_k=0, min_len=3, remap=True, truncate_len=2)
    assert [s.tolist() for s in out.sequences] == [[3, 4], [1, 4]]
    assert out.item_ids[[1, 2, 3, 4]].tolist() == [5, 6, 8, 9]
    with pytest.raises(ConfigError, match="no user left"):
        preprocess(ds, min_len=10)


def test_leave_one_out():
    split = leave_one_out(ds_of([[1, 2, 3, 4], [5, 6, 7]]))
    assert [t.tolist() for t in split.train] == [[1, 2], [5]]
    assert split.valid.tolist() == [3, 6] and split.test.tolist() == [4, 7]
    assert [s.tolist() for s in split.test_inputs()] == [[1, 2, 3], [5, 6]]
    assert [s.tolist() for s in split.full_histories()] == [[1, 2, 3, 4], [5, 6, 7]]
    assert split.train_item_counts().tolist() == [0, 1, 1, 0, 0, 1, 0, 0]
    with pytest.raises(DataFormatError, match="user row 1 has 2 items"):
        leave_one_out(ds_of([[1, 2, 3], [4, 5]]))


def test_pad_left():
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([], dtype=np.int64)]
    out = pad_left(seqs, max_len=5)
    assert out.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0]]
    assert out.dtype == np.int64
    assert pad_left(seqs, max_len=2).tolist() == [[2, 3], [0, 4], [0, 0]]
    assert pad_left(seqs, max_len=2, width=4).tolist() == [[0, 0, 2, 3], [0, 0, 0, 4], [0] * 4]


def test_dataset_rejects_out_of_range_ids():
    with pytest.raises(DataFormatError, match="outside 1..3"):
        SequenceDataset([np.array([1, 4])], 3, "t")
