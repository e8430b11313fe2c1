"""`fedrec datasets` sub-app: list / info / fetch / verify and one-line errors (exit 2)."""

from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from fedrec.cli_datasets import app
from fedrec.data.registry import DATASETS, DatasetInfo, RawFile, github_raw

COMMIT = "f" * 40
DATA = b"1 1 2 3\n2 2 3\n"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    monkeypatch.delenv("FEDREC_MIRROR", raising=False)
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny(monkeypatch, http_server):
    url = github_raw("o/r", COMMIT, "data/tiny.txt")
    entry = DatasetInfo("tiny", "a tiny dataset", raw=(
        RawFile("tiny.txt", (url,), sha256=hashlib.sha256(DATA).hexdigest()),),
        convert="sequences", normalise="copied", order="as is", citation="me", terms="none")
    monkeypatch.setitem(DATASETS, "tiny", entry)
    http_server.put(f"/o/r/{COMMIT}/data/tiny.txt", DATA)
    return http_server


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_help_lists_commands():
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("list", "info", "fetch", "verify"):
        assert cmd in res.output
    assert "List, describe, download and verify datasets." in res.output


def test_list_shows_local_status(monkeypatch, tmp_path):
    root = tmp_path / "root"
    (root / "beauty").mkdir(parents=True)
    (root / "beauty" / "sequences.txt").write_text("1 1 2 3\n")
    (tmp_path / "cache" / "toys").mkdir(parents=True)
    (tmp_path / "cache" / "toys" / "sequences.txt").write_text("1 1 2 3\n")
    monkeypatch.setenv("FEDREC_DATA", str(root))
    res = run("list")
    assert res.exit_code == 0
    lines = {ln.split()[0]: ln for ln in res.output.splitlines()}
    assert set(lines) == set(DATASETS)
    assert "found under FEDREC_DATA" in lines["beauty"]
    assert "cached" in lines["toys"]
    assert "missing" in lines["steam"]


def test_fetch_verify_info_roundtrip(tiny, tmp_path):
    res = run("fetch", "tiny", "--cache", str(tmp_path / "c"), "--mirror", tiny.url)
    assert res.exit_code == 0, res.output
    out = tmp_path / "c" / "tiny" / "sequences.txt"
    assert res.stdout.strip() == str(out)
    assert out.read_bytes() == DATA
    res = run("verify", "tiny", "--cache", str(tmp_path / "c"))
    assert res.exit_code == 0 and "2 passed, 0 failed" in res.stdout  # raw file + sequences
    (tmp_path / "c" / "tiny" / "raw" / "tiny.txt").write_bytes(b"1 1\n")
    res = run("verify", "tiny", "--cache", str(tmp_path / "c"))
    assert res.exit_code == 1 and "FAIL" in res.stdout and "sha256 mismatch" in res.stdout
    res = run("info", "tiny")
    assert res.exit_code == 0
    assert github_raw("o/r", COMMIT, "data/tiny.txt") in res.stdout
    assert "local:       missing" in res.stdout


def test_info_with_local_stats(monkeypatch, tmp_path):
    root = tmp_path / "root"
    (root / "steam").mkdir(parents=True)
    (root / "steam" / "sequences.txt").write_text("1 1 2 3\n2 2 3\n")
    res = run("info", "steam", "--root", str(root))
    assert res.exit_code == 0
    assert "users=2 items=3 interactions=5" in res.stdout
    assert "Data/steam/train_after_final.dat" in res.stdout


@pytest.mark.parametrize("args", [("info", "nope"), ("fetch", "nope"), ("verify", "nope"),
                                  ("verify", "steam")])
def test_errors_are_one_line_exit_2(args):
    res = run(*args)
    assert res.exit_code == 2
    assert res.stdout == ""
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "Traceback" not in res.output


def test_unreachable_mirror_is_one_line_exit_2(tiny, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mirror = f"http://127.0.0.1:{port}"
    res = run("fetch", "tiny", "--cache", str(tmp_path / "c"), "--mirror", mirror)
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: download failed: http://127.0.0.1:")


@pytest.fixture
def tiny_root(monkeypatch, tmp_path):
    """A registered dataset 'tiny' and a root folder holding its raw file and sequences.txt."""
    entry = DatasetInfo("tiny", "a tiny dataset", raw=(
        RawFile("tiny.txt", (github_raw("o/r", COMMIT, "data/tiny.txt"),),
                sha256=hashlib.sha256(DATA).hexdigest()),), convert="sequences")
    monkeypatch.setitem(DATASETS, "tiny", entry)
    root = tmp_path / "root"
    (root / "tiny" / "raw").mkdir(parents=True)
    (root / "tiny" / "raw" / "tiny.txt").write_bytes(DATA)
    (root / "tiny" / "sequences.txt").write_bytes(DATA)
    return root


def test_verify_checks_sequences_txt(tiny_root):
    res = run("verify", "tiny", "--root", str(tiny_root))
    assert res.exit_code == 0, res.output
    seq = tiny_root / "tiny" / "sequences.txt"
    assert f"ok    {seq}" in res.stdout and "2 passed, 0 failed" in res.stdout
    seq.write_bytes(DATA.replace(b"2 2 3", b"2 3 2"))  # one changed line
    res = run("verify", "tiny", "--root", str(tiny_root))
    assert res.exit_code == 1
    assert f"FAIL  {seq}  differs from what the raw files normalise to (first difference on " \
        "line 2)" in res.stdout
    assert "1 passed, 1 failed" in res.stdout
    seq.unlink()
    res = run("verify", "tiny", "--root", str(tiny_root))
    assert res.exit_code == 1 and f"FAIL  {seq}  missing" in res.stdout
    (tiny_root / "tiny" / "raw" / "tiny.txt").write_bytes(b"1 1\n")
    seq.write_bytes(DATA)
    res = run("verify", "tiny", "--root", str(tiny_root))
    assert res.exit_code == 1 and f"FAIL  {seq}  not checked: a raw file failed" in res.stdout


@pytest.mark.parametrize("args", [("list",), ("info", "steam"), ("verify", "steam")])
def test_missing_root_folder_is_one_line_exit_2(tmp_path, args):
    res = run(*args, "--root", str(tmp_path / "nowhere"))
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and "Traceback" not in res.output
    err = res.stderr.strip().splitlines()
    assert err == [f"error: --root {tmp_path / 'nowhere'}: folder not found, expected a dataset "
                   "root holding <name>/sequences.txt"]


def test_status_label_names_root_option(monkeypatch, tmp_path):
    root = tmp_path / "root"
    (root / "steam").mkdir(parents=True)
    (root / "steam" / "sequences.txt").write_text("1 1 2 3\n2 2 3\n")
    res = run("list", "--root", str(root))
    line = next(ln for ln in res.output.splitlines() if ln.startswith("steam"))
    assert "found under --root" in line and "FEDREC_DATA" not in line
    res = run("info", "steam", "--root", str(root))
    assert f"local:       {root / 'steam' / 'sequences.txt'} (found under --root)" in res.stdout
    monkeypatch.setenv("FEDREC_DATA", str(root))
    assert "(found under FEDREC_DATA)" in run("info", "steam").stdout
