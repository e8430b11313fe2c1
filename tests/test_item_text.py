"""Item side information (fedrec.data.item_text): readers on generated MovieLens-style files,
file:line errors, the missing-modality vectors, and resumable cached text embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedrec.plm.minilm as minilm
from fedrec.data.item_text import (
    load_side_info,
    missing_vectors,
    text_cache_folder,
    text_embeddings,
)
from fedrec.errors import DataFormatError, DatasetNotFoundError


def ml100k(root: Path, bad_line: str | None = None) -> Path:
    folder = root / "ml-100k"
    (folder / "raw").mkdir(parents=True)
    (folder / "sequences.txt").write_text("1 1 2 3\n2 3 1\n")
    flags = ["0"] * 19
    a, b = list(flags), list(flags)
    a[1], a[5], b[8] = "1", "1", "1"  # Action, Comedy; Drama
    lines = [f"1|Heat (1995)|01-Jan-1995||u|{'|'.join(a)}",
             f"2|Fargo (1996)|14-Feb-1996||u|{'|'.join(b)}",
             f"3|Old (1950)|||u|{'|'.join(flags)}"]
    if bad_line is not None:
        lines.append(bad_line)
    (folder / "raw" / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def test_ml100k_texts_and_metadata(tmp_path):
    ml100k(tmp_path)
    info = load_side_info("ml-100k", tmp_path)
    assert info.n_items == 3 and info.texts[0] is None
    assert info.texts[1] == "Heat (1995). Genres: Action, Comedy."
    assert info.meta.shape == (4, 19 + 10)
    assert info.meta[1, [1, 5]].tolist() == [1.0, 1.0] and info.meta[1, :19].sum() == 2
    # year buckets: 1995 is at or after 5 edges (1960, 1970, 1980, 1990, 1995) -> 1 + 5;
    # 1950 (no date: read from the title) is before all -> 1 + 0
    assert np.flatnonzero(info.meta[1, 19:]).tolist() == [6]
    assert np.flatnonzero(info.meta[3, 19:]).tolist() == [1]
    assert info.has_meta.tolist() == [False, True, True, True]


def test_bad_rows_and_names_are_one_line_errors(tmp_path):
    ml100k(tmp_path, bad_line="4|Broken|x")
    with pytest.raises(DataFormatError, match=r"u\.item:4: expected 24 '\|'-separated fields"):
        load_side_info("ml-100k", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="'beauty': no item side information"):
        load_side_info("beauty", tmp_path)


def test_missing_vectors_are_fixed_per_item_and_differ_between_items():
    a = missing_vectors("steam", np.array([3, 4]), 8)
    assert np.array_equal(a, missing_vectors("steam", np.array([3, 4]), 8))
    assert not np.allclose(a[0], a[1])
    assert not np.allclose(a, missing_vectors("ml-1m", np.array([3, 4]), 8))


def test_embeddings_are_cached_in_parts_and_resume_after_an_interruption(tmp_path, monkeypatch):
    ml100k(tmp_path)
    info = load_side_info("ml-100k", tmp_path)
    calls: list[list[str]] = []

    def fake(texts, **kw):
        calls.append(list(texts))
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(minilm, "minilm_encoder", lambda **kw: object())
    monkeypatch.setattr(minilm, "MiniLMTokenizer", lambda: object())
    monkeypatch.setattr(minilm, "sentence_embeddings", fake)
    cache = tmp_path / "cache"
    first = text_embeddings(info, cache, part_size=2)
    assert [len(c) for c in calls] == [2, 1] and first.shape == (4, 3)
    assert first[0].tolist() == [0.0, 0.0, 0.0] and first[2, 0] == len(info.texts[2])
    folder = text_cache_folder(info, cache, 64)
    assert folder.parent == cache / "item_text" and folder.name.startswith("ml-100k-")
    # interrupted after part 0: only part 1 is computed again
    (folder / "embeddings.npy").unlink()
    (folder / "part-00001.npy").unlink()
    calls.clear()
    again = text_embeddings(info, cache, part_size=2)
    assert calls == [[info.texts[3]]]
    assert np.array_equal(first, again)
    calls.clear()
    text_embeddings(info, cache, part_size=2)
    assert calls == []  # finished: read back
    info.texts[1] = "changed"
    assert text_cache_folder(info, cache, 64) != folder


def test_real_side_information(real_data_dir):
    if not (real_data_dir / "ml-100k" / "raw" / "u.item").is_file():
        pytest.skip("ml-100k raw files not present")
    info = load_side_info("ml-100k", real_data_dir)
    assert info.n_items == 1682 and info.has_meta[1:].all()
    assert info.texts[1].startswith("Toy Story (1995)")
    if (real_data_dir / "ml-1m" / "verification").is_dir():
        assert load_side_info("ml-1m", real_data_dir).has_meta.sum() == 218
    if (real_data_dir / "steam" / "sequences.txt").is_file():
        assert not load_side_info("steam", real_data_dir).has_meta.any()
