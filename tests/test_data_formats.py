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
        (formats.read_sequences, "1 2 3\n\n2 4 5\n", 2, "empty line"),
        (formats.read_sequences, "1 2 3\n2 4 5\n \n\n3 1 2\n", 3, "empty line"),
        (formats.read_sequences, "1 2 3\n2 0 5\n", 2, "item id 0"),
        (formats.read_sequences, "1 2 3\n2 -1\n", 2, "item id -1"),
        (formats.read_sequences, "1 2\n2\n", 2, "has no items"),
        (formats.read_sequences, "u1 2\n", 1, "user id 'u1'"),
        (formats.read_gcl4sr, "0 1,2\n1 3,,4\n", 2, "'' is not an integer"),
        (formats.read_gcl4sr, "0 1,2\n1 3,0\n", 2, "item id 0"),
        (formats.read_gcl4sr, "0 1,2\n\n1 2\n", 2, "expected 'user item,item,...'"),
        (formats.read_pairs, "1 2\n1 2 3\n", 2, "expected 2 fields"),
        (formats.read_pairs, "1 2\n1 0\n", 2, "item id 0"),
        (formats.read_movielens, "1::2::3::4\n1::2::3\n", 2, "expected 4 fields"),
        (formats.read_movielens, "1::2::3::4\n\n1::3::3::4\n", 2, "empty line"),
        (formats.read_movielens, "1::2::3::4\n1::0::3::4\n", 2, "item id 0"),
        (formats.read_movielens, "1::2::3::4\n1::2::good::4\n", 2, "rating 'good'"),
        (formats.read_movielens, "1::2::3::4\n1::2::3::t\n", 2, "timestamp 't'"),
        # ids must be ASCII digits: int() would also take full-width digits and underscores
        (formats.read_sequences, "1 2 3\n2 \uff11\uff12 5\n", 2, "item id '\uff11\uff12'"),
        (formats.read_sequences, "1 2 3\n2 1_0 5\n", 2, "item id '1_0' is not an integer"),
        (formats.read_sequences, "\uff11 2 3\n", 1, "user id '\uff11' is not an integer"),
        (formats.read_sequences, "1_0 2 3\n", 1, "user id '1_0' is not an integer"),
        (formats.read_gcl4sr, "0 1,2\n1 3,1_0\n", 2, "item id '1_0'"),
        (formats.read_pairs, "1 2\n1 \u0664\n", 2, "item id '\u0664'"),
        (formats.read_movielens, "1::2::3::4\n1::2_0::3::4\n", 2, "item id '2_0'"),
        (formats.read_movielens, "1::2::3::4\n1::2::3_5::4\n", 2, "rating '3_5'"),
        (formats.read_movielens, "1::2::3::4\n1::2::nan::4\n", 2, "rating 'nan'"),
        (formats.read_movielens, "1::2::3::4\n1::2::3::4_0\n", 2, "timestamp '4_0'"),
        # ids too large for the int64 arrays that hold them
        (formats.read_sequences, f"1 2 3\n2 {2**70} 5\n", 2, f"item id {2**70} is too large"),
        (formats.read_sequences, f"1 2 3\n{2**70} 4 5\n", 2, f"user id {2**70} is too large"),
        (formats.read_sequences, f"1 2 3\n-{2**70} 4 5\n", 2, "user id -1180591620717411303424"),
        (formats.read_gcl4sr, f"0 1,2\n1 3,{10**19}\n", 2, "is too large"),
        (formats.read_pairs, f"1 2\n{10**19} 1\n", 2, "user id 10000000000000000000 is too"),
        (formats.read_movielens, f"1::2::3::4\n1::{10**19}::3::4\n", 2, "item id 1000000000"),
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


@pytest.mark.parametrize("fn, text", [
    (formats.read_sequences, "1 3 2 5\r2 1\r7 4 4\r"),
    (formats.read_sequences, "1 3 2 5\r2 1\r7 4 4"),
    (formats.read_sequences, "1 3 2 5\r\n2 1\r7 4 4\n"),
    (formats.read_gcl4sr, "0 3,2,5\r1 1\r6 4,4\r"),
    (formats.read_pairs, "1 3\r1 2\r1 5\r2 1\r7 4\r7 4\r"),
])
def test_cr_only_line_endings_are_read_as_lines(tmp_path, fn, text):
    users, seqs = fn(write(tmp_path, "s.txt", text))
    assert users == [1, 2, 7]
    assert [s.tolist() for s in seqs] == [[3, 2, 5], [1], [4, 4]]


def test_cr_only_movielens(tmp_path):
    p = write(tmp_path, "ratings.dat", "2::7::5::30\r1::9::3::20\r1::4::1::10\r")
    users, seqs = formats.read_movielens(p)
    assert users == [1, 2] and [s.tolist() for s in seqs] == [[4, 9], [7]]


@pytest.mark.parametrize("fn, text", [
    (formats.read_sequences, "1 3 2 5\n2 1\n7 4 4\n\n"),
    (formats.read_sequences, "1 3 2 5\n2 1\n7 4 4\n \n\n"),
    (formats.read_sequences, "1 3 2 5\r\n2 1\r\n7 4 4\r\n\r\n"),
    (formats.read_gcl4sr, "0 3,2,5\n1 1\n6 4,4\n\n"),
    (formats.read_pairs, "1 3\n1 2\n1 5\n2 1\n7 4\n7 4\n\n"),
])
def test_trailing_blank_lines_are_accepted(tmp_path, fn, text):
    users, seqs = fn(write(tmp_path, "s.txt", text))
    assert users == [1, 2, 7] and [s.tolist() for s in seqs] == [[3, 2, 5], [1], [4, 4]]


def test_large_but_representable_ids_load_without_a_vocabulary_of_that_size(tmp_path):
    """Ids up to 10^15 must not allocate arrays of that many entries: the loader renumbers
    them (in order of first appearance, as it does for any id gap) in memory proportional to
    the number of interactions."""
    from fedrec.config import DataConfig
    from fedrec.data.loader import load_dataset

    p = write(tmp_path, "s.txt", f"{10**12} 7 {10**12} 3\n5 3 7 {10**15}\n6 7 3 9\n")
    ds = load_dataset(DataConfig(path=str(p), format="sequences"))
    assert ds.n_items == 5
    assert [s.tolist() for s in ds.sequences] == [[1, 2, 3], [3, 1, 4], [1, 3, 5]]
    assert ds.item_ids.tolist() == [0, 7, 10**12, 3, 10**15, 9]
    assert ds.user_ids.tolist() == [10**12, 5, 6]


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
