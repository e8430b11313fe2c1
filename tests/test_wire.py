"""``strategies.wire``: tensors in and out of Flower ArrayRecords with one copy at most, the
same bytes and values as Flower's own conversions; and the finiteness checks of
``strategies.validation`` (sum fast path) against the value-by-value ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from strategies.validation import all_finite, check_update, finite_rows
from strategies.wire import array_of, array_record, record_tensors

TENSORS = {
    "table": torch.randn(37, 8),
    "bias": torch.randn(8),
    "scalar": torch.tensor(3.5),
    "ids": torch.arange(6),
    "transposed": torch.randn(3, 5).t(),  # F-contiguous: np.save writes Fortran order
    "strided": torch.randn(6, 4)[::2],  # neither C- nor F-contiguous
    "empty": torch.zeros(0, 8),
    "double": torch.randn(2, 3, dtype=torch.float64),
}


@pytest.mark.parametrize("name", list(TENSORS))
def test_array_of_writes_the_bytes_flower_writes(name):
    mine, theirs = array_of(TENSORS[name]), Array(TENSORS[name])
    assert (mine.dtype, mine.shape, mine.stype, mine.data) == (
        theirs.dtype, theirs.shape, theirs.stype, theirs.data)


@pytest.mark.parametrize("copy", [True, False])
def test_record_tensors_reads_flowers_values(copy):
    record = ArrayRecord(TENSORS)
    got = record_tensors(record, copy=copy)
    want = record.to_torch_state_dict()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name])
    assert record_tensors(array_record(TENSORS)).keys() == TENSORS.keys()


def test_record_tensors_copy_owns_its_memory_and_views_share_the_bytes():
    record = array_record({"w": torch.ones(4)})
    owned = record_tensors(record)["w"]
    owned += 1  # writable, and the record is unchanged
    assert torch.equal(record_tensors(record)["w"], torch.ones(4))
    view = record_tensors(record, copy=False)["w"]
    data = record["w"].data
    start = np.frombuffer(data, dtype=np.uint8).ctypes.data  # the bytes' own buffer
    assert start < view.data_ptr() and view.data_ptr() + 16 == start + len(data)
    assert owned.data_ptr() < start or owned.data_ptr() >= start + len(data)


def test_record_tensors_reads_a_fortran_order_array():
    values = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    record = ArrayRecord({"f": Array(values)})
    assert torch.equal(record_tensors(record)["f"], torch.from_numpy(np.ascontiguousarray(values)))


def test_record_tensors_refuses_bytes_that_are_not_npy():
    bad = ArrayRecord({"x": Array(dtype="float32", shape=(2,), stype="numpy.ndarray",
                                  data=b"not an npy file")})
    with pytest.raises(ValueError):
        record_tensors(bad)
    short = Array(torch.ones(8))
    truncated = ArrayRecord({"x": Array(dtype=short.dtype, shape=short.shape, stype=short.stype,
                                        data=short.data[:-4])})
    with pytest.raises(ValueError):
        record_tensors(truncated, copy=False)


def test_all_finite_matches_the_value_by_value_check():
    big = torch.full((1000,), 3e38)  # finite values whose float32 sum overflows
    cases = [torch.randn(50), big, torch.zeros(0), torch.tensor([1.0, float("nan")]),
             torch.tensor([float("inf"), -float("inf")]), torch.tensor([-float("inf"), 2.0]),
             torch.full((4,), 60000.0, dtype=torch.float16)]
    for value in cases:
        assert all_finite(value) == bool(torch.isfinite(value).all())


def test_finite_rows_matches_the_value_by_value_check():
    stacked = torch.randn(6, 4, 5)
    stacked[1, 2, 3] = float("nan")
    stacked[3] = 3e38  # finite, its sum overflows
    stacked[4, 0, 0] = -float("inf")
    got = finite_rows({"w": stacked, "b": torch.randn(6, 2)})
    assert got.tolist() == [True, False, True, True, False, True]


def test_check_update_flags_non_finite_but_not_large_finite_values():
    shapes = {"w": (3,)}
    assert check_update({"w": torch.full((3,), 3e38)}, shapes) is None
    assert check_update({"w": torch.tensor([0.0, float("nan"), 1.0])}, shapes) == \
        "w: non-finite values"
