"""Parsers in fedrec.data.formats: correct parses and one-line errors naming file and line."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data import formats
from fedrec.data.registry import locate
from fedrec.errors import DataFormatError, DatasetNotFoundError


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def error(fn, path):
    with pytest.raises(DataFormatError) as exc:
        fn(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_read_sequences_parses(tmp_path):
    p = write(tmp_path, "s.txt", "1 3 2 5\n2 1\r\n7 4 4\n")
    users, seqs = formats.read_sequences(p)
    assert users == [1, 2, 7]
    assert [s.tolist() for s in seqs] == [[3, 2, 5], [1], [4, 4]]
    assert all(s.dtype == np.int64 for s in seqs)


def test_read_gcl4sr_shifts_users(tmp_path):
    p = write(tmp_path, "home.txt", "0 1,2,3\n1 4,2\n")
    users, seqs = formats.read_gcl4sr(p)
    assert users == [1, 2] and [s.tolist() for s in seqs] == [[1, 2, 3], [4, 2]]


def test_read_pairs_groups_in_file_order(tmp_path):
    p = write(tmp_path, "p.txt", "5 1\n2 3\n5 2\n2 1\n")
    users, seqs = formats.read_pairs(p)
    assert users == [5, 2] and [s.tolist() for s in seqs] == [[1, 2], [3, 1]]


def test_read_movielens_sorts_by_time_ties_in_file_order(tmp_path):
    p = write(tmp_path, "ratings.dat", "2::7::5::30\n1::9::3::20\n1::4::1::10\n1::8::2::20\n")
    users, seqs = formats.read_movielens(p)
    assert users == [1, 2] and [s.tolist() for s in seqs] == [[4, 9, 8], [7]]
    q = write(tmp_path, "u.data", "1\t9\t3\t20\n1\t4\t1\t10\n")
    assert [s.tolist() for s in formats.read_movielens(q)[1]] == [[4, 9]]
    users, seqs = formats.read_movielens(p, min_rating=3)
    assert [s.tolist() for s in seqs] == [[9], [7]]


@pytest.mark.parametrize("fn", [formats.read_sequences, formats.read_gcl4sr, formats.read_pairs,
                                formats.read_movielens])
def test_missing_file(tmp_path, fn):
    msg = error(fn, tmp_path / "nope.txt")
    assert "not found" in msg


@pytest.mark.parametrize(
    "fn, text, lineno, words",
    [
        (formats.read_sequences, "1 2 3\n2 4 x\n", 2, "'x' is not an integer"),
        (formats.read_sequences, "1 2 3\n2 4 5\n\n", 3, "empty line"),
        (formats.read_sequences, "1 2 3\n2 0 5\n", 2, "item id 0"),
        (formats.read_sequences, "1 2 3\n2 -1\n", 2, "item id -1"),
        (formats.read_sequences, "1 2\n2\n", 2, "has no items"),
        (formats.read_sequences, "u1 2\n", 1, "user id 'u1'"),
        (formats.read_gcl4sr, "0 1,2\n1 3,,4\n", 2, "'' is not an integer"),
        (formats.read_gcl4sr, "0 1,2\n1 3,0\n", 2, "item id 0"),
        (formats.read_gcl4sr, "0 1,2\n\n", 2, "expected 'user item,item,...'"),
        (formats.read_pairs, "1 2\n1 2 3\n", 2, "expected 2 fields"),
        (formats.read_pairs, "1 2\n1 0\n", 2, "item id 0"),
        (formats.read_movielens, "1::2::3::4\n1::2::3\n", 2, "expected 4 fields"),
        (formats.read_movielens, "1::2::3::4\n\n", 2, "empty line"),
        (formats.read_movielens, "1::2::3::4\n1::0::3::4\n", 2, "item id 0"),
        (formats.read_movielens, "1::2::3::4\n1::2::good::4\n", 2, "rating 'good'"),
        (formats.read_movielens, "1::2::3::4\n1::2::3::t\n", 2, "timestamp 't'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, fn, text, lineno, words):
    name = "ratings.dat" if fn is formats.read_movielens else "data.txt"
    p = write(tmp_path, name, text)
    msg = error(fn, p)
    assert f"{p}:{lineno}:" in msg
    assert words in msg


@pytest.mark.parametrize("fn", [formats.read_sequences, formats.read_gcl4sr, formats.read_pairs])
def test_bad_encoding_names_the_line(tmp_path, fn):
    good = "1 2\n" if fn is formats.read_pairs else ("0 1,2\n" if fn is formats.read_gcl4sr
                                                    else "1 2 3\n")
    p = write(tmp_path, "bad.txt", good.encode() * 3000 + b"2 \xff\xfe\n")
    msg = error(fn, p)
    assert f"{p}:3001:" in msg and "utf-8" in msg


def test_empty_file(tmp_path):
    p = write(tmp_path, "empty.txt", "")
    assert "empty" in error(formats.read_sequences, p)


def test_read_file_unknown_format(tmp_path):
    with pytest.raises(DataFormatError, match="unknown data format 'csv'; expected one of"):
        formats.read_file(tmp_path / "x", "csv")


def test_unknown_dataset_name_lists_valid_names():
    with pytest.raises(DatasetNotFoundError) as exc:
        locate("movielens-42")
    msg = str(exc.value)
    assert "'movielens-42'" in msg
    for name in ("ml-1m", "ml-1m-chrono", "ml-100k", "steam", "beauty", "toys", "home"):
        assert name in msg
