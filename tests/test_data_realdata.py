"""The registry against the real shared data (skipped when absent).

The converters applied to each ``<root>/<name>/raw/`` must reproduce ``<root>/<name>/sequences.txt``
byte for byte, the raw files must pass the registered checksums, and a full ``fetch`` through a
loopback mirror laid out like the official URLs must give the same result.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fedrec.data import fetch as F
from fedrec.data.registry import DATASETS, get

pytestmark = pytest.mark.realdata

SHARED = ["ml-1m", "ml-100k", "steam", "beauty", "toys", "home"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    monkeypatch.delenv("FEDREC_MIRROR", raising=False)
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))


def _raw(root, name):
    raw = root / name / "raw"
    if not (raw / get(name).raw[0].name).is_file():
        pytest.skip(f"{raw} has no {get(name).raw[0].name}")
    return raw


@pytest.mark.parametrize("name", SHARED)
def test_converter_reproduces_shared_sequences(real_data_dir, name):
    norm = F.normalise(name, _raw(real_data_dir, name))
    expected = (real_data_dir / name / "sequences.txt").read_bytes()
    assert norm.sequences_text().encode("ascii") == expected


@pytest.mark.parametrize("name", ["ml-1m", "steam"])
def test_item_map_agrees_with_shared_map(real_data_dir, name):
    norm = F.normalise(name, _raw(real_data_dir, name))
    shared = np.loadtxt(real_data_dir / name / "items.tsv", skiprows=1, dtype=np.int64, ndmin=2)
    assert norm.item_ids is not None
    np.testing.assert_array_equal(shared[:, 0], np.arange(1, len(shared) + 1))
    np.testing.assert_array_equal(norm.item_ids[1:], shared[:, 1])  # dvfsr_item_id column


@pytest.mark.parametrize("name", SHARED)
def test_verify_passes_on_shared_raw_files(real_data_dir, name):
    _raw(real_data_dir, name)
    results = F.verify(name, root=real_data_dir)
    assert [ok for _, ok, _ in results] == [True] * len(DATASETS[name].raw)
    for _, _, detail in results:
        assert "sha256 ok" in detail and "git blob ok" in detail


def test_fetch_through_mirror_equals_shared(real_data_dir, http_server, tmp_path):
    """Publish the shared raw files at the official URL paths (zips for GroupLens) and fetch."""
    names = [n for n in SHARED if (real_data_dir / n / "raw" / get(n).raw[0].name).is_file()]
    if not names:
        pytest.skip("no shared raw files")
    for name in names:
        for f in get(name).raw:
            data = (real_data_dir / name / "raw" / f.name).read_bytes()
            path = "/" + f.url.split("/", 3)[3]
            if f.member:
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                    zf.writestr(f.member, data)
                data = buf.getvalue()
            http_server.put(path, data)
    for name in names:
        out = F.fetch(name, cache=tmp_path / "c", base_url=http_server.url, progress=False)
        assert out.read_bytes() == (real_data_dir / name / "sequences.txt").read_bytes(), name
    assert all(ok for n in names for _, ok, _ in F.verify(n, cache=tmp_path / "c"))


def test_info_stats_match_shared_stats(real_data_dir):
    import json

    stats_file = real_data_dir / "STATS.json"
    if not stats_file.is_file():
        pytest.skip("no STATS.json")
    expected = json.loads(stats_file.read_text())["sequences"]["steam/sequences.txt"]
    d = F.info("steam", root=real_data_dir)
    assert d["location"] == "data"
    for key in ("users", "items", "interactions", "min_len", "max_len"):
        assert d["stats"][key] == expected[key]
    assert d["stats"]["top1pct_share"] == pytest.approx(expected["top1pct_share"], abs=1e-6)
