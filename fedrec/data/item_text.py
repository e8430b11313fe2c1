"""Item side information of the real datasets: titles (+ genres) as text, structured metadata
(genres multi-hot, release year) as a second modality, and cached MiniLM text embeddings.

Used by MG-BERT/PMGT (:mod:`fedrec.baselines.mgbert`, whose paper fuses an image and a text
modality per item) and CDL (:mod:`fedrec.baselines.cdl`, whose item sub-network reads item
content). What each dataset holds (``FEDREC_DATA`` layout, see the datasets' READMEs):

* **ml-100k**: ``raw/u.item`` gives every item's title (with its year), release date and 19
  genre flags; item ids are the sequence ids.
* **ml-1m**: the sequence ids are DV-FSR's re-indexed ids, which cannot be mapped to MovieLens
  MovieIDs from the files we have, except the 218 items listed in
  ``verification/item_movieid_partial.tsv`` (title and MovieID; genres from ``raw/movies.dat``).
  Every other item has **no** side information.
* **steam**: ``items.tsv`` holds only id mappings (no game names), so no item has text.

Substitution for the image modality (documented for the methods): the papers' second modality
is an image; none of these datasets has item images, so the second modality here is the
structured metadata vector ``[genre multi-hot (19 or 18), year bucket one-hot]`` (buckets of
:data:`fedrec.data.movielens_meta.YEAR_EDGES`, bucket 0 = unknown year).

A missing modality gets PMGT's treatment (its ``data_process.py``): a random standard-normal
vector, seeded by (dataset, item id), so it carries no information but is fixed.

The text embeddings are computed once by ``fedrec datasets embed <name>`` (or
:func:`text_embeddings`), in batches written as ``part-XXXXX.npy`` files under
``<cache>/item_text/<name>-<hash>/`` (``<cache>`` = ``$FEDREC_CACHE`` or ``~/.cache/fedrec``);
the hash covers the texts, the encoder name and ``max_len``, so changed data gives a new folder.
An interrupted computation resumes at the first missing part.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.movielens_meta import (
    ML1M_GENRES,
    ML100K_GENRES,
    YEAR_EDGES,
    latin1_lines,
    read_pipe_file,
)
from fedrec.errors import DataFormatError, DatasetNotFoundError

log = logging.getLogger("fedrec")

#: datasets with a side-information reader
SIDE_INFO_DATASETS = ("ml-100k", "ml-1m", "steam")
#: name of the text encoder (part of the cache key)
ENCODER = "all-MiniLM-L6-v2"
N_YEAR_BUCKETS = len(YEAR_EDGES) + 2  # 0 = unknown, 1 .. len+1


@dataclass
class ItemSideInfo:
    """Side information of items ``1..n_items`` (row 0 is padding, never an item).

    Attributes
    ----------
    name : str
        Dataset name.
    texts : list of str or None
        ``texts[i]`` is item ``i``'s text (title and genres), None where unknown; ``texts[0]``
        is None.
    meta : ndarray [n_items + 1, n_meta], float32
        Genre multi-hot and year-bucket one-hot; rows of items without metadata are zero.
    has_meta : ndarray [n_items + 1], bool
        Whether the item has metadata (and text: both come from the same record).
    """

    name: str
    texts: list[str | None]
    meta: np.ndarray
    has_meta: np.ndarray

    @property
    def n_items(self) -> int:
        """Number of items (ids ``1..n_items``)."""
        return len(self.texts) - 1


def _year_bucket(year: int | None) -> int:
    """Bucket of a release year (0 = unknown)."""
    return 0 if year is None else 1 + int(np.searchsorted(YEAR_EDGES, year, side="right"))


def _meta_row(genres: list[str], vocab: tuple[str, ...], year: int | None) -> np.ndarray:
    row = np.zeros(len(vocab) + N_YEAR_BUCKETS, dtype=np.float32)
    for g in genres:
        row[vocab.index(g)] = 1.0
    row[len(vocab) + _year_bucket(year)] = 1.0
    return row


def _text(title: str, genres: list[str]) -> str:
    return f"{title}. Genres: {', '.join(genres) if genres else 'unknown'}."


def _title_year(title: str) -> int | None:
    """The ``(YYYY)`` at the end of a MovieLens title, if any."""
    t = title.strip()
    if len(t) >= 6 and t.endswith(")") and t[-6] == "(" and t[-5:-1].isdigit():
        return int(t[-5:-1])
    return None


def _n_items(folder: Path) -> int:
    """Largest item id of ``sequences.txt`` (file:line error on a non-integer token)."""
    path = folder / "sequences.txt"
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected the normalised sequences")
    top = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if not all(p.isdigit() for p in parts):
                raise DataFormatError(f"{path}:{lineno}: expected 'user_id item_id ...' integers")
            top = max(top, *(int(p) for p in parts[1:])) if len(parts) > 1 else top
    return top


def _ml100k(folder: Path) -> ItemSideInfo:
    n = _n_items(folder)
    path = folder / "raw" / "u.item"
    texts: list[str | None] = [None] * (n + 1)
    meta = np.zeros((n + 1, len(ML100K_GENRES) + N_YEAR_BUCKETS), dtype=np.float32)
    rows = read_pipe_file(path, 5 + len(ML100K_GENRES))
    for lineno, parts in enumerate(rows, start=1):
        iid, title, date, flags = parts[0], parts[1], parts[2], parts[5:]
        if not iid.isdigit() or any(f not in ("0", "1") for f in flags):
            raise DataFormatError(f"{path}:{lineno}: expected 'id|title|date|...|19 genre flags'")
        i = int(iid)
        if i > n:
            continue  # an item no user rated: not in the sequences
        genres = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"]
        year_str = date.rsplit("-", 1)[-1] if date else ""
        year = int(year_str) if year_str.isdigit() else _title_year(title)
        texts[i] = _text(title, genres)
        meta[i] = _meta_row(genres, ML100K_GENRES, year)
    return ItemSideInfo("ml-100k", texts, meta, np.array([t is not None for t in texts]))


def _ml1m(folder: Path) -> ItemSideInfo:
    n = _n_items(folder)
    movies: dict[int, tuple[str, list[str]]] = {}
    mpath = folder / "raw" / "movies.dat"
    for lineno, line in latin1_lines(mpath):
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].isdigit():
            raise DataFormatError(f"{mpath}:{lineno}: expected 'MovieID::Title::Genre|Genre'")
        genres = parts[2].split("|")
        if not set(genres) <= set(ML1M_GENRES):
            raise DataFormatError(f"{mpath}:{lineno}: unknown genre in {parts[2]!r}")
        movies[int(parts[0])] = (parts[1], genres)
    path = folder / "verification" / "item_movieid_partial.tsv"
    texts: list[str | None] = [None] * (n + 1)
    meta = np.zeros((n + 1, len(ML1M_GENRES) + N_YEAR_BUCKETS), dtype=np.float32)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected the item -> MovieID table")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1:
                if parts[:3] != ["item_id", "dvfsr_item_id", "ml1m_movie_id"]:
                    raise DataFormatError(f"{path}:1: expected header item_id, dvfsr_item_id, "
                                          "ml1m_movie_id, title")
                continue
            if len(parts) != 4 or not parts[0].isdigit() or not parts[2].isdigit():
                raise DataFormatError(f"{path}:{lineno}: expected 'item_id\\tdvfsr_item_id\\t"
                                      "ml1m_movie_id\\ttitle'")
            i, mid = int(parts[0]), int(parts[2])
            if mid not in movies or i > n:
                raise DataFormatError(f"{path}:{lineno}: MovieID {mid} / item {i} not in "
                                      f"{mpath.name} / sequences.txt")
            title, genres = movies[mid]
            texts[i] = _text(title, genres)
            meta[i] = _meta_row(genres, ML1M_GENRES, _title_year(title))
    return ItemSideInfo("ml-1m", texts, meta, np.array([t is not None for t in texts]))


def _steam(folder: Path) -> ItemSideInfo:
    n = _n_items(folder)
    return ItemSideInfo("steam", [None] * (n + 1), np.zeros((n + 1, 0), dtype=np.float32),
                        np.zeros(n + 1, dtype=bool))


def load_side_info(name: str, root: str | Path) -> ItemSideInfo:
    """Item side information of dataset ``name`` under the data root ``root``.

    Parameters
    ----------
    name : {"ml-100k", "ml-1m", "steam"}
        Dataset (module docstring for what each holds).
    root : str or Path
        Folder holding ``<name>/`` (the ``FEDREC_DATA`` layout).

    Returns
    -------
    ItemSideInfo

    Raises
    ------
    DatasetNotFoundError
        A name without a side-information reader.
    DataFormatError
        A missing or malformed file (``file:line``).
    """
    readers = {"ml-100k": _ml100k, "ml-1m": _ml1m, "steam": _steam}
    if name not in readers:
        raise DatasetNotFoundError(f"{name!r}: no item side information; expected one of "
                                   f"{', '.join(SIDE_INFO_DATASETS)}")
    return readers[name](Path(root) / name)


def missing_vectors(name: str, ids: np.ndarray, dim: int) -> np.ndarray:
    """PMGT's stand-in for a missing modality: standard-normal vectors seeded by (dataset, id).

    Returns
    -------
    ndarray [len(ids), dim], float32
    """
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    out = np.zeros((len(ids), dim), dtype=np.float32)
    for r, i in enumerate(ids):
        out[r] = np.random.default_rng([key, int(i)]).standard_normal(dim)
    return out


def text_cache_folder(info: ItemSideInfo, cache: Path, max_len: int) -> Path:
    """``<cache>/item_text/<name>-<hash>`` for the texts of ``info`` (module docstring)."""
    h = hashlib.sha256(f"{ENCODER}|{max_len}|".encode())
    for t in info.texts:
        h.update(b"\x00" if t is None else t.encode("utf-8") + b"\x01")
    return cache / "item_text" / f"{info.name}-{h.hexdigest()[:16]}"


def text_embeddings(info: ItemSideInfo, cache: Path, *, batch_size: int = 64,
                    max_len: int = 64, part_size: int = 256) -> np.ndarray:
    """MiniLM sentence embeddings of the items' texts, computed in parts and cached.

    Items without text get :func:`missing_vectors` (scaled to unit norm like the embeddings).

    Parameters
    ----------
    info : ItemSideInfo
        The items.
    cache : Path
        Cache root (``<cache>/item_text/...``).
    batch_size, max_len : int
        Encoder batch and token limit.
    part_size : int
        Texts per cached part (the unit of resumption).

    Returns
    -------
    ndarray [n_items + 1, 384], float32
        Row 0 is zero (padding).
    """
    if part_size < 1 or batch_size < 1:
        raise ValueError(f"part_size={part_size}, batch_size={batch_size}: expected >= 1")
    folder = text_cache_folder(info, cache, max_len)
    final = folder / "embeddings.npy"
    if final.is_file():
        return np.load(final)
    ids = np.flatnonzero(info.has_meta)
    texts = [info.texts[i] for i in ids]
    folder.mkdir(parents=True, exist_ok=True)
    parts, encoder, tokenizer = [], None, None
    for p, lo in enumerate(range(0, len(texts), part_size)):
        path = folder / f"part-{p:05d}.npy"
        if not path.is_file():
            from fedrec.plm.minilm import MiniLMTokenizer, minilm_encoder, sentence_embeddings

            if encoder is None:
                encoder, tokenizer = minilm_encoder(pretrained=True), MiniLMTokenizer()
            emb = sentence_embeddings(texts[lo:lo + part_size], batch_size=batch_size,
                                      max_len=max_len, encoder=encoder, tokenizer=tokenizer)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, emb)
            tmp.replace(path)
            log.info("item_text %s: part %d (%d texts) written", info.name, p, len(emb))
        parts.append(np.load(path))
    dim = parts[0].shape[1] if parts else 384
    out = np.zeros((info.n_items + 1, dim), dtype=np.float32)
    if parts:
        out[ids] = np.concatenate(parts)
    missing = np.setdiff1d(np.arange(1, info.n_items + 1), ids)
    if len(missing):
        vec = missing_vectors(info.name, missing, dim)
        out[missing] = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    tmp = folder / "embeddings.tmp.npy"
    np.save(tmp, out)
    tmp.replace(final)
    return out
