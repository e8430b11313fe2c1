"""fetch / verify / info end to end against a loopback HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import io
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedrec.data import fetch as F
from fedrec.data.registry import CONVERTERS, DATASETS, DatasetInfo, RawFile, github_raw
from fedrec.errors import ChecksumError, DataFormatError, DatasetNotFoundError, FedRecError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TRAIN = b"0 0 1 2\n1 3 1\n2 4 0 7\n"  # 0-based ids, item 5 and 6 unused
TEST = b"0 3\n1 2\n2 1\n"
# train + test per user; ids {0,1,2,3,4,7} renumbered 1..6 in increasing order
TT_SEQUENCES = "1 1 2 3 4\n2 4 2 3\n3 5 1 6 2\n"
TT_ITEMS = "item_id\tsource_item_id\n1\t0\n2\t1\n3\t2\n4\t3\n5\t4\n6\t7\n"
RATINGS = b"1::10::5::300\n1::20::3::100\n2::20::4::50\n1::30::4::100\n2::40::2::10\n"
# user 1 by time: 20 (t=100), 30 (t=100, later in the file), 10 (t=300); user 2: 40, 20
ZIP_SEQUENCES = "1 2 3 1\n2 4 2\n"
UDATA = b"1\t5\t3\t100\n1\t2\t3\t100\n1\t9\t1\t50\n2\t2\t4\t7\n"
UDATA_SEQUENCES = "1 3 1 2\n2 1\n"  # user 1: 9 (t=50), then the t=100 tie by item id: 2, 5


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def url_path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    monkeypatch.delenv("FEDREC_MIRROR", raising=False)
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def tiny(monkeypatch, http_server):
    """Register three tiny datasets shaped like the real entries and publish their files."""
    tt = DatasetInfo(
        "tiny-tt", "tiny train/test",
        raw=(
            RawFile("train.dat", (github_raw("owner/repo", COMMIT, "Data/X/train.dat"),),
                    sha256=sha256(TRAIN), git_blob=git_blob(TRAIN), size=len(TRAIN)),
            RawFile("test.dat", (github_raw("owner/repo", COMMIT, "Data/X/test.dat"),),
                    git_blob=git_blob(TEST)),
        ),
        convert="train-test",
    )
    zipped = DatasetInfo(
        "tiny-zip", "tiny GroupLens-style archive",
        raw=(RawFile("ratings.dat", ("https://files.grouplens.org/datasets/movielens/tiny.zip",),
                     member="tiny/ratings.dat", git_blob=git_blob(RATINGS)),),
        convert="movielens",
    )
    udata = DatasetInfo(
        "tiny-udata", "tiny u.data",
        raw=(RawFile("u.data", ("https://files.grouplens.org/datasets/movielens/tiny100.zip",),
                     member="tiny100/u.data", sha256=sha256(UDATA)),),
        convert="movielens-item-ties",
    )
    for entry in (tt, zipped, udata):
        monkeypatch.setitem(DATASETS, entry.name, entry)
    http_server.put(url_path(tt.raw[0].url), TRAIN)
    http_server.put(url_path(tt.raw[1].url), TEST)
    http_server.put(url_path(zipped.raw[0].url),
                    zip_bytes({"tiny/README": b"x", "tiny/ratings.dat": RATINGS}))
    http_server.put(url_path(udata.raw[0].url), zip_bytes({"tiny100/u.data": UDATA}))
    return http_server


def test_checksums_known_values(tmp_path):
    p = tmp_path / "hello"
    p.write_bytes(b"hello\n")
    sums = F.file_checksums(p)
    # `git hash-object` and `sha256sum` of "hello\n"
    assert sums["git_blob"] == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert sums["sha256"] == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert sums["size"] == 6
    good = RawFile("hello", ("https://x/y",), git_blob=sums["git_blob"])
    assert F.check_file(p, good) == (True, "git blob ok")
    bad = RawFile("hello", ("https://x/y",), sha256="0" * 64, git_blob=sums["git_blob"])
    ok, detail = F.check_file(p, bad)
    assert not ok and "sha256 mismatch" in detail and sums["sha256"] in detail


def test_every_registered_converter_exists():
    assert set(F._CONVERTERS) == set(CONVERTERS)


def test_mirror_url_replaces_scheme_and_host():
    url = github_raw("o/r", COMMIT, "Data/ML/train.dat")
    assert F.mirror_url(url, None) == url
    mirrored = F.mirror_url(url, "http://127.0.0.1:8/m/")
    assert mirrored == f"http://127.0.0.1:8/m/o/r/{COMMIT}/Data/ML/train.dat"
    assert F.mirror_url("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                        "http://h") == "http://h/datasets/movielens/ml-1m.zip"


def test_fetch_downloads_verifies_builds_and_skips(tiny, tmp_path):
    cache = tmp_path / "cache"
    out = F.fetch("tiny-tt", cache=cache, base_url=tiny.url, progress=False)
    assert out == cache / "tiny-tt" / "sequences.txt"
    assert out.read_text() == TT_SEQUENCES
    assert (out.parent / "items.tsv").read_text() == TT_ITEMS
    assert (cache / "tiny-tt" / "raw" / "train.dat").read_bytes() == TRAIN
    assert (cache / "tiny-tt" / "raw" / "test.dat").read_bytes() == TEST
    assert not list(cache.rglob("*.part"))
    assert len(tiny.requests) == 2

    mtime = out.stat().st_mtime_ns
    assert F.fetch("tiny-tt", cache=cache, base_url=tiny.url, progress=False) == out
    assert len(tiny.requests) == 2  # nothing downloaded again
    assert out.stat().st_mtime_ns == mtime  # nothing rebuilt

    out.unlink()  # a missing build is redone from the verified raw files, without downloading
    F.fetch("tiny-tt", cache=cache, base_url=tiny.url, progress=False)
    assert out.read_text() == TT_SEQUENCES and len(tiny.requests) == 2

    F.fetch("tiny-tt", cache=cache, base_url=tiny.url, force=True, progress=False)
    assert len(tiny.requests) == 4


def test_fetch_uses_default_cache_and_env_mirror(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDREC_MIRROR", tiny.url)
    out = F.fetch("tiny-tt", progress=False)
    assert out == tmp_path / "default-cache" / "tiny-tt" / "sequences.txt"
    assert out.read_text() == TT_SEQUENCES


def test_fetch_zip_member_chronological(tiny, tmp_path):
    out = F.fetch("tiny-zip", cache=tmp_path, base_url=tiny.url, progress=False)
    assert out.read_text() == ZIP_SEQUENCES
    assert (out.parent / "items.tsv").read_text().splitlines()[1:] == [
        "1\t10", "2\t20", "3\t30", "4\t40"]
    assert sorted(p.name for p in (out.parent / "raw").iterdir()) == ["ratings.dat"]


def test_fetch_ties_by_item_keeps_contiguous_ids(tiny, tmp_path):
    out = F.fetch("tiny-udata", cache=tmp_path, base_url=tiny.url, progress=False)
    assert out.read_text() == UDATA_SEQUENCES
    udata_ids = F.normalise("tiny-udata", out.parent / "raw")
    assert udata_ids.item_ids.tolist() == [0, 2, 5, 9]
    # ids already 1..n are kept and no map is written
    assert F.compact_items([np.array([2, 1, 3])]).item_ids is None


def test_corrupted_download_raises_checksum_error_and_keeps_nothing(tiny, tmp_path):
    bad = TRAIN.replace(b"7", b"6")
    tiny.put(url_path(DATASETS["tiny-tt"].raw[0].url), bad)
    with pytest.raises(ChecksumError) as exc:
        F.fetch("tiny-tt", cache=tmp_path, base_url=tiny.url, progress=False)
    msg = str(exc.value)
    assert "train.dat" in msg and "\n" not in msg
    assert "sha256 mismatch" in msg and sha256(TRAIN) in msg and sha256(bad) in msg
    raw = tmp_path / "tiny-tt" / "raw"
    assert not (raw / "train.dat").exists()
    assert not list(raw.glob("*.part"))
    assert not (tmp_path / "tiny-tt" / "sequences.txt").exists()


def test_checksum_error_names_expected_and_actual(tiny, tmp_path):
    bad = TEST.replace(b"3", b"4")  # same size, different content
    tiny.put(url_path(DATASETS["tiny-tt"].raw[1].url), bad)
    with pytest.raises(ChecksumError) as exc:
        F.fetch("tiny-tt", cache=tmp_path, base_url=tiny.url, progress=False)
    msg = str(exc.value)
    assert "test.dat" in msg and git_blob(TEST) in msg and git_blob(bad) in msg


def test_corrupted_cache_is_reported_and_repaired(tiny, tmp_path):
    out = F.fetch("tiny-tt", cache=tmp_path, base_url=tiny.url, progress=False)
    assert all(ok for _, ok, _ in F.verify("tiny-tt", cache=tmp_path))
    (tmp_path / "tiny-tt" / "raw" / "test.dat").write_bytes(b"0 1\n")
    results = F.verify("tiny-tt", cache=tmp_path)
    assert [(Path(f).name, ok) for f, ok, _ in results] == [
        ("train.dat", True), ("test.dat", False)]
    assert "mismatch" in results[1][2]
    F.fetch("tiny-tt", cache=tmp_path, base_url=tiny.url, progress=False)
    assert (tmp_path / "tiny-tt" / "raw" / "test.dat").read_bytes() == TEST
    assert out.read_text() == TT_SEQUENCES


def test_verify_missing_file_and_missing_dataset(tiny, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="fetch tiny-tt"):
        F.verify("tiny-tt", cache=tmp_path)
    (tmp_path / "tiny-tt" / "raw").mkdir(parents=True)
    (tmp_path / "tiny-tt" / "raw" / "train.dat").write_bytes(TRAIN)
    results = F.verify("tiny-tt", cache=tmp_path)
    assert [(ok, d) for _, ok, d in results][1] == (False, "missing")
    assert results[0][1] and "sha256 ok" in results[0][2] and "git blob ok" in results[0][2]


def test_verify_checks_a_data_root_too(tiny, tmp_path):
    root = tmp_path / "shared"
    (root / "tiny-tt" / "raw").mkdir(parents=True)
    (root / "tiny-tt" / "raw" / "train.dat").write_bytes(TRAIN)
    (root / "tiny-tt" / "raw" / "test.dat").write_bytes(TEST)
    results = F.verify("tiny-tt", root=root, cache=tmp_path / "nocache")
    assert [ok for _, ok, _ in results] == [True, True]
    assert all(str(root) in f for f, _, _ in results)


def test_alternate_url_is_tried(tiny, monkeypatch, tmp_path):
    primary = github_raw("gone/repo", COMMIT, "Data/X/train.dat")
    entry = DATASETS["tiny-tt"]
    alt = RawFile("train.dat", (primary, entry.raw[0].url), sha256=sha256(TRAIN))
    monkeypatch.setitem(DATASETS, "tiny-tt", DatasetInfo(
        "tiny-tt", "x", raw=(alt, entry.raw[1]), convert="train-test"))
    out = F.fetch("tiny-tt", cache=tmp_path, base_url=tiny.url, progress=False)
    assert out.read_text() == TT_SEQUENCES
    assert tiny.requests[0] == url_path(primary)


def test_http_404_is_one_line_error_naming_url(tiny, tmp_path):
    tiny.put("/x", b"")
    (tiny.root / url_path(DATASETS["tiny-tt"].raw[1].url).lstrip("/")).unlink()
    with pytest.raises(FedRecError) as exc:
        F.fetch("tiny-tt", cache=tmp_path, base_url=tiny.url, progress=False)
    msg = str(exc.value)
    assert "HTTP 404" in msg and f"{tiny.url}/owner/repo/{COMMIT}/Data/X/test.dat" in msg
    assert "\n" not in msg


def test_unreachable_server_is_one_line_error(tiny, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(FedRecError) as exc:
        F.fetch("tiny-tt", cache=tmp_path, base_url=base, progress=False, timeout=2)
    msg = str(exc.value)
    assert msg.startswith("download failed: ") and f"{base}/owner/repo/" in msg
    assert "\n" not in msg
    assert not isinstance(exc.value, ChecksumError)


def test_silent_server_times_out(tiny, tmp_path):
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        base = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(FedRecError) as exc:
            F.fetch("tiny-tt", cache=tmp_path, base_url=base, progress=False, timeout=0.3)
    msg = str(exc.value)
    assert "timed out" in msg.lower() and base in msg and "\n" not in msg


def test_bad_archive_and_missing_member(tiny, monkeypatch, tmp_path):
    url = DATASETS["tiny-zip"].raw[0].url
    tiny.put(url_path(url), b"not a zip")
    with pytest.raises(DataFormatError, match="not a valid zip"):
        F.fetch("tiny-zip", cache=tmp_path, base_url=tiny.url, progress=False)
    tiny.put(url_path(url), zip_bytes({"other/ratings.dat": RATINGS}))
    with pytest.raises(DataFormatError, match="no member 'tiny/ratings.dat'"):
        F.fetch("tiny-zip", cache=tmp_path, base_url=tiny.url, progress=False)
    assert not list((tmp_path / "tiny-zip" / "raw").iterdir())


def test_unknown_dataset_lists_valid_names(tmp_path):
    for fn in (lambda: F.fetch("nope", cache=tmp_path), lambda: F.verify("nope"),
               lambda: F.info("nope")):
        with pytest.raises(DatasetNotFoundError) as exc:
            fn()
        for name in ("ml-1m", "ml-1m-chrono", "ml-100k", "steam", "beauty", "toys", "home"):
            assert name in str(exc.value)


def test_info_reports_source_terms_and_local_stats(tiny, monkeypatch, tmp_path):
    d = F.info("tiny-tt")
    assert d["location"] == "missing" and d["stats"] is None and d["local"] is None
    assert d["source"] == DATASETS["tiny-tt"].raw[0].url
    assert [r["file"] for r in d["raw"]] == ["train.dat", "test.dat"]
    F.fetch("tiny-tt", base_url=tiny.url, progress=False)  # into $FEDREC_CACHE
    d = F.info("tiny-tt")
    assert d["location"] == "cache"
    assert d["stats"]["users"] == 3 and d["stats"]["items"] == 6
    assert d["stats"]["interactions"] == 11 and d["stats"]["max_len"] == 4

    real = F.info("ml-1m-chrono")
    grouplens = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    assert real["source"] == grouplens + "#ml-1m/ratings.dat"
    assert "Harper" in real["citation"] and "redistribut" in real["terms"]
