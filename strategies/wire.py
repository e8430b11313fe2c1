"""Tensors in and out of Flower ``ArrayRecord``s with one copy at most.

A Flower ``Array`` holds its values as ``.npy`` bytes (``stype`` ``numpy.ndarray``). Flower's
own conversions copy twice each way: ``ArrayRecord(tensors)`` writes ``np.save`` output into a
``BytesIO`` and copies it out again; ``ArrayRecord.to_torch_state_dict`` reads every array
back through a ``BytesIO`` in chunks. With the whole model in every message (1.5 MB on steam,
256 messages and 256 replies a round) those copies are a visible part of a Flower round.

* :func:`array_record`: the same bytes as ``ArrayRecord(tensors)`` (the ``.npy`` header of
  format 1.0 followed by the raw values), written with one copy.
* :func:`record_tensors`: tensors over the record's bytes: read-only views (no copy) or, with
  ``copy=True``, one copy into fresh tensors. Other ``stype`` values go through Flower's
  ``Array.numpy``.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

NPY = "numpy.ndarray"  # flwr's SType.NUMPY


@functools.lru_cache(maxsize=1024)
def npy_header(descr: str, shape: tuple[int, ...], fortran: bool) -> bytes:
    """The ``.npy`` format-1.0 header ``np.save`` writes for such an array (cached: a model
    has few distinct shapes)."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return head.getvalue()


def array_of(tensor: torch.Tensor) -> Array:
    """A Flower ``Array`` of ``tensor`` (moved to the CPU), byte-identical to ``Array(tensor)``.

    Parameters
    ----------
    tensor : Tensor
        Any dtype numpy can hold.
    """
    values = tensor.detach().cpu().numpy()
    info = np.lib.format.header_data_from_array_1_0(values)
    head = npy_header(info["descr"], tuple(int(s) for s in values.shape), info["fortran_order"])
    # with a Fortran-order header (F- but not C-contiguous) the values go in that order, as
    # np.save writes them
    flat = values.ravel(order="F" if info["fortran_order"] else "C")
    return Array(dtype=str(values.dtype), shape=tuple(int(s) for s in values.shape), stype=NPY,
                 data=head + flat.view(np.uint8).data)


def array_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(tensors)`` with one copy of each tensor (see :func:`array_of`)."""
    record = ArrayRecord()
    for name, tensor in tensors.items():
        record[name] = array_of(tensor)
    return record


@functools.lru_cache(maxsize=1024)
def parse_npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran order, dtype, data offset)`` of an ``.npy`` file starting with
    ``prefix`` (its magic and header; cached: a model has few distinct headers)."""
    head = io.BytesIO(prefix)
    version = np.lib.format.read_magic(head)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read(head)
    return tuple(shape), bool(fortran), dtype, head.tell()


def npy_prefix(data: bytes) -> bytes:
    """The magic and header of ``.npy`` bytes (format 1.0: 2-byte header length; 2.0 and 3.0:
    4-byte)."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise ValueError("not .npy bytes")
    if data[6] == 1:
        return data[:10 + int.from_bytes(data[8:10], "little")]
    return data[:12 + int.from_bytes(data[8:12], "little")]


def npy_values(array: Array) -> np.ndarray:
    """The values of an ``.npy`` Array as a read-only numpy view of its bytes.

    Raises
    ------
    ValueError
        When the bytes are not an ``.npy`` array of a plain (non-object) dtype that fills them.
    """
    shape, fortran, dtype, offset = parse_npy_header(npy_prefix(array.data))
    if dtype.hasobject:
        raise ValueError("an array of Python objects is not accepted")
    values = np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=offset)
    if fortran:
        return values.reshape(shape[::-1]).transpose()
    return values.reshape(shape)


def record_tensors(record: ArrayRecord, copy: bool = True) -> dict[str, torch.Tensor]:
    """The record's arrays as CPU tensors, in the record's order.

    Parameters
    ----------
    record : ArrayRecord
        The arrays.
    copy : bool
        True: fresh, writable tensors (one copy). False: read-only views of the record's bytes
        (no copy; writing to them is not allowed, and they keep the record's bytes alive).
    """
    out: dict[str, torch.Tensor] = {}
    for name, array in record.items():
        if array.stype != NPY:
            out[name] = torch.from_numpy(array.numpy())
            continue
        values = npy_values(array)
        if copy:
            out[name] = torch.from_numpy(values.copy())
            continue
        with warnings.catch_warnings():  # torch warns that the view is not writable
            warnings.simplefilter("ignore", UserWarning)
            out[name] = torch.from_numpy(values)
    return out
