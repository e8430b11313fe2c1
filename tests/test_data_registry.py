"""Registry entries: pinned official sources, checksums, converters; local lookup order."""

from __future__ import annotations

import re

import pytest

from fedrec.data.registry import (
    CONVERTERS,
    DATASETS,
    DatasetInfo,
    RawFile,
    cache_dir,
    get,
    local_status,
    locate,
)
from fedrec.errors import DatasetNotFoundError

GITHUB = re.compile(r"^https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+$")
GROUPLENS = re.compile(r"^https://files\.grouplens\.org/datasets/movielens/ml-[\w]+\.zip$")


def test_expected_entries():
    assert list(DATASETS) == ["ml-1m", "ml-1m-chrono", "ml-100k", "steam", "beauty", "toys", "home"]
    assert all(DATASETS[n].name == n for n in DATASETS)
    # the old two-argument form still works
    assert DatasetInfo("x", "y").raw == ()


@pytest.mark.parametrize("name", list(DATASETS))
def test_entry_is_complete_and_pinned(name):
    entry = DATASETS[name]
    assert entry.raw and entry.convert in CONVERTERS
    assert entry.citation and entry.terms and entry.normalise and entry.order
    names = [f.name for f in entry.raw]
    assert len(set(names)) == len(names)
    for f in entry.raw:
        for url in f.urls:
            if f.member:
                assert GROUPLENS.match(url), url
                assert f.member.startswith(url.rsplit("/", 1)[1].removesuffix(".zip") + "/")
            else:
                assert GITHUB.match(url), url  # immutable: pinned to a commit
        assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
        assert f.git_blob is None or re.fullmatch(r"[0-9a-f]{40}", f.git_blob)


def test_known_checksums():
    assert get("ml-1m-chrono").raw[0].git_blob == "77a7c4b150f588c23bb9e1f068aa996c0b413695"
    assert get("ml-1m").raw[0].git_blob == "793523e1ac7ced869f03f7a2150818ffcb79133e"
    assert get("ml-100k").raw[0].member == "ml-100k/u.data"
    assert get("home").convert == "gcl4sr"


def test_rawfile_requires_a_checksum_and_url():
    with pytest.raises(ValueError, match="checksum"):
        RawFile("a", ("https://x/a",))
    with pytest.raises(ValueError, match="URL"):
        RawFile("a", (), sha256="0" * 64)


def test_get_unknown_lists_names():
    with pytest.raises(DatasetNotFoundError) as exc:
        get("ml-20m")
    assert "'ml-20m'" in str(exc.value) and ", ".join(DATASETS) in str(exc.value)


def test_locate_prefers_root_then_cache(monkeypatch, tmp_path):
    root, cache = tmp_path / "root", tmp_path / "cache"
    monkeypatch.setenv("FEDREC_CACHE", str(cache))
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    assert cache_dir() == cache
    with pytest.raises(DatasetNotFoundError, match="fedrec datasets fetch steam"):
        locate("steam")
    assert local_status("steam") == ("missing", None)
    (cache / "steam").mkdir(parents=True)
    (cache / "steam" / "sequences.txt").write_text("1 1 2 3\n")
    assert locate("steam") == (cache / "steam" / "sequences.txt", "sequences")
    (root / "steam").mkdir(parents=True)
    (root / "steam" / "sequences.txt").write_text("1 1 2 3\n")
    assert locate("steam", str(root)) == (root / "steam" / "sequences.txt", "sequences")
    monkeypatch.setenv("FEDREC_DATA", str(root))
    assert local_status("steam") == ("data", root / "steam" / "sequences.txt")
