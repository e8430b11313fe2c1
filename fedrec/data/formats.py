"""Parsers for the file formats sequential-recommendation datasets ship in.

* ``sequences``: one line per user, ``user item item ...`` (the normalised format; also
  ICLRec/S3-Rec ``Beauty.txt`` and DV-FSR ``*_after_final.dat``).
* ``movielens``: MovieLens ``u.data`` (tab separated ``user item rating timestamp``) and
  ``ratings.dat`` (``user::item::rating::timestamp``); sorted by timestamp (ties by file
  order) into per-user sequences.
* ``pairs``: SASRec-style ``user item`` per line, already in interaction order.
* ``gcl4sr``: GCL4SR's ``user item,item,...`` lines (0-based user ids).

Every parser reports malformed input as :class:`~fedrec.errors.DataFormatError` naming the
file and 1-based line number. Common rules:

* Lines end with ``\n``, ``\r\n`` or a lone ``\r`` (old Mac files), even mixed in one file.
* Blank lines at the end of a file are ignored; a blank line followed by data is an error.
* Numbers are ASCII: an integer is an optional sign and the digits ``0-9`` (Python's ``int``
  would also take ``'1_0'`` and full-width or other Unicode digits, which are typos here).
* An id (user or item) must lie within ``±MAX_ID`` (``10**18``): ids are held in int64 arrays
  (with room for the ``+1`` shifts of the converters), so a larger number cannot be stored and
  is not the id of any real dataset (hashes must be renumbered first). Ids need not be
  contiguous or small: the loader renumbers items in memory proportional to the number of
  interactions, never to the largest id (:func:`fedrec.data.loader.read_dataset`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedrec.errors import DataFormatError

FORMATS = ("sequences", "movielens", "pairs", "gcl4sr")

#: Largest magnitude of a user or item id (see the module docstring).
MAX_ID = 10**18

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _split_lines(chunk: bytes) -> list[bytes]:
    """A ``\n``-terminated chunk of bytes split at ``\r\n``, ``\r`` and ``\n`` (no ends)."""
    chunk = chunk.removesuffix(b"\n").removesuffix(b"\r")
    return chunk.split(b"\r") if b"\r" in chunk else [chunk]


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of ``path``, without line ends.

    Lines may end with ``\n``, ``\r\n`` or ``\r``; blank lines at the end of the file are
    dropped (a blank line followed by data is yielded, for the caller to reject).

    Raises
    ------
    DataFormatError
        Missing file, or a line that is not valid ``encoding`` text (named by number).
    """
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    blank: list[tuple[int, str]] = []  # blank lines not yet known to be trailing
    lineno = 0
    # Decode line by line so a decoding error is reported with its line number (a CR byte
    # never occurs inside a multi-byte UTF-8 character, so splitting bytes at CR is safe).
    with open(path, "rb") as fh:
        for chunk in fh:
            for raw in _split_lines(chunk):
                lineno += 1
                try:
                    line = raw.decode(encoding, errors="strict")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(
                        f"{path}:{lineno}: not valid {encoding} text ({exc.reason})"
                    ) from None
                if not line.strip():
                    blank.append((lineno, line))
                    continue
                yield from blank
                blank.clear()
                yield lineno, line


def _int(tok: str, path: Path, lineno: int, what: str) -> int:
    """An ASCII integer token (optional sign, digits ``0-9``)."""
    if not (tok.isascii() and _INT.fullmatch(tok)):
        raise DataFormatError(
            f"{path}:{lineno}: {what} {tok!r} is not an integer, expected ASCII digits 0-9"
        )
    return int(tok)


def _check_id(value: int, path: Path, lineno: int, what: str) -> int:
    """``value`` if it is a storable id (``|value| <= MAX_ID``)."""
    if not -MAX_ID <= value <= MAX_ID:
        raise DataFormatError(
            f"{path}:{lineno}: {what} {value} is too large, expected ids within +-10^18 "
            "(renumber the ids of this file first)"
        )
    return value


def _id(tok: str, path: Path, lineno: int, what: str) -> int:
    """A user or item id token: an ASCII integer within ``±MAX_ID``."""
    return _check_id(_int(tok, path, lineno, what), path, lineno, what)


def _float(tok: str, path: Path, lineno: int, what: str) -> float:
    """A finite ASCII decimal number (``3``, ``4.5``, ``1e-3``)."""
    if not (tok.isascii() and _FLOAT.fullmatch(tok)) or not math.isfinite(float(tok)):
        raise DataFormatError(
            f"{path}:{lineno}: {what} {tok!r} is not a number, expected an ASCII decimal "
            "number such as 4 or 3.5"
        )
    return float(tok)


def _check_item(item: int, path: Path, lineno: int) -> None:
    if item <= 0:
        raise DataFormatError(
            f"{path}:{lineno}: item id {item} is not positive (0 is reserved for padding)"
        )


def _user_items(line: str, path: Path, lineno: int) -> tuple[int, list[int]]:
    """Parse one ``user item item ...`` line into the user id and the item ids (unchecked)."""
    toks = line.split()
    if not toks:
        raise DataFormatError(f"{path}:{lineno}: empty line (expected 'user item item ...')")
    if len(toks) < 2:
        raise DataFormatError(f"{path}:{lineno}: user {toks[0]!r} has no items")
    user = _id(toks[0], path, lineno, "user id")
    items = None
    if line.isascii() and "_" not in line:  # then int() accepts exactly [+-]?[0-9]+: fast path
        try:
            items = list(map(int, toks[1:]))
        except ValueError:
            pass
    if items is None:  # name the first bad token
        items = [_int(t, path, lineno, "item id") for t in toks[1:]]
    for item in (min(items), max(items)):
        _check_id(item, path, lineno, "item id")
    return user, items


def read_sequences(path: str | Path) -> tuple[list[int], list[np.ndarray]]:
    """Read ``user item item ...`` lines.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    users : list of int
        User id of each line.
    sequences : list of numpy.ndarray
        Items of each line, in file order.

    Raises
    ------
    DataFormatError
        Missing file, empty line, non-integer token, a user without items, or item id <= 0.
    """
    path = Path(path)
    users: list[int] = []
    seqs: list[np.ndarray] = []
    for lineno, line in _lines(path):
        user, items = _user_items(line, path, lineno)
        for it in items:
            _check_item(it, path, lineno)
        users.append(user)
        seqs.append(np.asarray(items, dtype=np.int64))
    if not seqs:
        raise DataFormatError(f"{path}: file is empty (expected 'user item item ...' lines)")
    return users, seqs


def read_gcl4sr(path: str | Path) -> tuple[list[int], list[np.ndarray]]:
    """Read GCL4SR's ``user item,item,...`` lines (user ids 0-based, items 1-based)."""
    path = Path(path)
    users: list[int] = []
    seqs: list[np.ndarray] = []
    for lineno, line in _lines(path):
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise DataFormatError(f"{path}:{lineno}: expected 'user item,item,...'")
        user = _id(parts[0], path, lineno, "user id")
        items = [_id(t, path, lineno, "item id") for t in parts[1].strip().split(",")]
        for it in items:
            _check_item(it, path, lineno)
        users.append(user + 1)
        seqs.append(np.asarray(items, dtype=np.int64))
    if not seqs:
        raise DataFormatError(f"{path}: file is empty")
    return users, seqs


def read_pairs(path: str | Path) -> tuple[list[int], list[np.ndarray]]:
    """Read SASRec-style ``user item`` lines (file order is interaction order)."""
    path = Path(path)
    by_user: dict[int, list[int]] = defaultdict(list)
    order: list[int] = []
    for lineno, line in _lines(path):
        toks = line.split()
        if len(toks) != 2:
            raise DataFormatError(
                f"{path}:{lineno}: expected 2 fields 'user item', got {len(toks)}"
            )
        user = _id(toks[0], path, lineno, "user id")
        item = _id(toks[1], path, lineno, "item id")
        _check_item(item, path, lineno)
        if user not in by_user:
            order.append(user)
        by_user[user].append(item)
    if not order:
        raise DataFormatError(f"{path}: file is empty")
    return order, [np.asarray(by_user[u], dtype=np.int64) for u in order]


def read_movielens(path: str | Path, min_rating: float | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Read MovieLens ``u.data`` (tab separated) or ``ratings.dat`` (``::`` separated).

    Each user's ratings are sorted by timestamp; ties keep file order (a stable sort).

    Parameters
    ----------
    path : str or Path
        ``u.data`` or ``ratings.dat``.
    min_rating : float, optional
        Keep only ratings >= this value (implicit-feedback conversion); default keeps all.
    """
    path = Path(path)
    sep = "::" if path.name.endswith(".dat") else None
    rows: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    n = 0
    for lineno, line in _lines(path, encoding="latin-1"):
        toks = line.split(sep) if sep else line.split()
        if not line.strip():
            raise DataFormatError(f"{path}:{lineno}: empty line (expected user, item, rating, timestamp)")
        if len(toks) != 4:
            raise DataFormatError(
                f"{path}:{lineno}: expected 4 fields user, item, rating, timestamp; got {len(toks)}"
            )
        user = _id(toks[0], path, lineno, "user id")
        item = _id(toks[1], path, lineno, "item id")
        _check_item(item, path, lineno)
        rating = _float(toks[2], path, lineno, "rating")
        ts = _int(toks[3], path, lineno, "timestamp")
        if min_rating is not None and rating < min_rating:
            continue
        rows[user].append((ts, n, item))
        n += 1
    if not rows:
        raise DataFormatError(f"{path}: no ratings read")
    users = sorted(rows)
    seqs = [np.asarray([it for _, _, it in sorted(rows[u])], dtype=np.int64) for u in users]
    return users, seqs


READERS = {
    "sequences": read_sequences,
    "movielens": read_movielens,
    "pairs": read_pairs,
    "gcl4sr": read_gcl4sr,
}


def read_file(path: str | Path, fmt: str) -> tuple[list[int], list[np.ndarray]]:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in READERS:
        raise DataFormatError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return READERS[fmt](path)
