"""MovieLens readers shared by the baselines: ratings, users, items and genres.

MovieLens (F. M. Harper, J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS
2015). The ML-100K readers were written for GradCraft's multi-task tables
(:mod:`fedrec.baselines.gradcraft.data`) and moved here so the cross-domain / multi-scenario
builder (:mod:`fedrec.data.domains`) reads the same files the same way. Every malformed input
raises a one-line :class:`~fedrec.errors.DataFormatError` naming ``file:line``.

* ML-100K: ``ratings.csv`` (``user,item,rating,timestamp``) or ``raw/u.data`` (tab-separated),
  ``raw/u.user``, ``raw/u.item`` (19 genre flags, order :data:`ML100K_GENRES`).
* ML-1M: ``raw/movies.dat`` (``MovieID::Title::Genre|Genre``, ISO-8859-1) and an official
  ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) when one is present.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.errors import DataFormatError

#: ML-100K genre columns of ``u.item`` (``raw/u.genre``), in file order
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
#: ML-1M genres of ``movies.dat`` (its README), in the README's order
ML1M_GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M age groups: <18, 18-24, ..., 56+
YEAR_EDGES = (1960, 1970, 1980, 1990, 1995, 1996, 1997, 1998)
N_GENRES = 19


def resolve_ml100k_dir(data_dir: str | Path) -> Path:
    """Locate the ml-100k folder: ``data_dir/ml-100k`` or ``data_dir`` itself.

    Parameters
    ----------
    data_dir : str or Path
        A ``FEDREC_DATA``-style root (containing ``ml-100k/``) or the ml-100k folder.

    Returns
    -------
    Path
        The dataset folder.

    Raises
    ------
    DataFormatError
        If neither location holds ``ratings.csv`` or ``raw/u.data``.
    """
    root = Path(data_dir)
    for cand in (root / "ml-100k", root):
        if (cand / "ratings.csv").is_file() or (cand / "raw" / "u.data").is_file():
            return cand
    raise DataFormatError(
        f"{root / 'ml-100k' / 'ratings.csv'}: file not found (nor raw/u.data); "
        "expected the MovieLens-100K folder under the data directory"
    )


def first_bad_row(frame: pd.DataFrame) -> int | None:
    """0-based index of the first row of ``frame`` holding a missing value, or None."""
    bad = frame.isna().any(axis=1).to_numpy()
    return int(np.argmax(bad)) if bad.any() else None


def read_ratings(folder: Path) -> pd.DataFrame:
    """MovieLens-100K ratings of ``folder`` (``ratings.csv``, else ``raw/u.data``).

    Returns
    -------
    pandas.DataFrame
        int64 columns ``user, item, rating, timestamp`` in file order.

    Raises
    ------
    DataFormatError
        A malformed row (``file:line``), a bad header, no rows, or a duplicate pair.
    """
    csv = folder / "ratings.csv"
    cols = ["user", "item", "rating", "timestamp"]
    if csv.is_file():
        path, header = csv, True
        try:
            raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{csv}: cannot parse as CSV ({exc})".splitlines()[0]) from exc
        if list(raw.columns) != cols:
            raise DataFormatError(
                f"{csv}:1: expected header {','.join(cols)}, got {list(raw.columns)}"
            )
    else:
        path, header = folder / "raw" / "u.data", False
        try:
            raw = pd.read_csv(
                path, sep="\t", header=None, names=cols, dtype=str, keep_default_na=False
            )
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{path}: cannot parse ({exc})".splitlines()[0]) from exc
    num = raw.apply(pd.to_numeric, errors="coerce")
    bad = first_bad_row(num)
    if bad is None:
        r = num["rating"].to_numpy()
        if not np.isin(r, (1, 2, 3, 4, 5)).all():
            bad = int(np.argmax(~np.isin(r, (1, 2, 3, 4, 5))))
        elif (num[["user", "item"]].to_numpy() < 1).any():
            bad = int(np.argmax((num[["user", "item"]].to_numpy() < 1).any(axis=1)))
    if bad is not None:
        line = bad + (2 if header else 1)
        raise DataFormatError(
            f"{path}:{line}: expected integer user, item, rating 1-5, timestamp; "
            f"got {raw.iloc[bad].tolist()}"
        )
    if len(num) == 0:
        raise DataFormatError(f"{path}: no ratings found")
    out = num.astype(np.int64)
    if out.duplicated(["user", "item"]).any():
        line = int(np.argmax(out.duplicated(["user", "item"]).to_numpy())) + (2 if header else 1)
        raise DataFormatError(f"{path}:{line}: duplicate (user, item) pair")
    return out


def latin1_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of each non-blank line of a latin-1 MovieLens file, without its
    line end.

    Raises
    ------
    DataFormatError
        The file does not exist.
    """
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    with open(path, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def read_pipe_file(path: Path, n_fields: int) -> list[list[str]]:
    """Non-empty lines of a ``|``-separated latin-1 file, each with exactly ``n_fields`` fields.

    Raises
    ------
    DataFormatError
        Missing or empty file, or a line with another number of fields (``file:line``).
    """
    rows = []
    for lineno, line in latin1_lines(path):
        parts = line.split("|")
        if len(parts) != n_fields:
            raise DataFormatError(
                f"{path}:{lineno}: expected {n_fields} '|'-separated fields, got {len(parts)}"
            )
        rows.append(parts)
    if not rows:
        raise DataFormatError(f"{path}: file is empty")
    return rows


def read_users(path: Path) -> dict[int, tuple[int, int, str]]:
    """``raw/u.user``: user id -> (age bucket by :data:`AGE_EDGES`, 0 male / 1 female,
    occupation)."""
    out: dict[int, tuple[int, int, str]] = {}
    for lineno, (uid, age, gender, occ, _zip) in enumerate(read_pipe_file(path, 5), start=1):
        if not (uid.isdigit() and age.isdigit()) or gender not in ("M", "F"):
            raise DataFormatError(
                f"{path}:{lineno}: expected 'id|age|M or F|occupation|zip', "
                f"got {uid}|{age}|{gender}"
            )
        age_bucket = int(np.searchsorted(AGE_EDGES, int(age), side="right"))
        out[int(uid)] = (age_bucket, 0 if gender == "M" else 1, occ)
    return out


def read_items(path: Path) -> dict[int, tuple[int, np.ndarray]]:
    """``raw/u.item``: item id -> (release-year bucket, 0 = unknown; ``float32 [19]`` genre flags
    in the column order of :data:`ML100K_GENRES`)."""
    out: dict[int, tuple[int, np.ndarray]] = {}
    for lineno, parts in enumerate(read_pipe_file(path, 5 + N_GENRES), start=1):
        iid, date, flags = parts[0], parts[2], parts[5:]
        if not iid.isdigit() or any(f not in ("0", "1") for f in flags):
            raise DataFormatError(
                f"{path}:{lineno}: expected 'id|title|date|...|19 genre flags 0/1'"
            )
        year_str = date.rsplit("-", 1)[-1] if date else ""
        year_bucket = (
            1 + int(np.searchsorted(YEAR_EDGES, int(year_str), side="right"))
            if year_str.isdigit()
            else 0
        )
        out[int(iid)] = (year_bucket, np.array([int(f) for f in flags], dtype=np.float32))
    return out


def read_ml1m_movies(path: Path) -> dict[int, list[str]]:
    """ML-1M ``movies.dat``: MovieID -> its genres in listed order.

    Raises
    ------
    DataFormatError
        Missing file, or a line that is not ``id::title::genres`` with known genres (``file:line``).
    """
    out: dict[int, list[str]] = {}
    known = set(ML1M_GENRES)
    for lineno, line in latin1_lines(path):
        parts = line.split("::")
        genres = parts[-1].split("|") if len(parts) == 3 else []
        if len(parts) != 3 or not parts[0].isdigit() or not genres or not set(genres) <= known:
            raise DataFormatError(f"{path}:{lineno}: expected 'MovieID::Title::Genre|Genre' "
                                  f"with genres among {', '.join(ML1M_GENRES)}")
        out[int(parts[0])] = genres
    if not out:
        raise DataFormatError(f"{path}: file is empty")
    return out


def read_ml1m_ratings(path: Path) -> pd.DataFrame:
    """Official ML-1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``).

    Returns
    -------
    pandas.DataFrame
        int64 columns ``user, item, rating, timestamp``.

    Raises
    ------
    DataFormatError
        Missing file or a malformed line (``file:line``).
    """
    rows = []
    for lineno, line in latin1_lines(path):
        parts = line.strip().split("::")
        if len(parts) != 4 or not all(p.isdigit() for p in parts) or parts[2] not in "12345":
            raise DataFormatError(f"{path}:{lineno}: expected 'UserID::MovieID::Rating(1-5)::"
                                  f"Timestamp', got {line.strip()[:60]!r}")
        rows.append([int(p) for p in parts])
    if not rows:
        raise DataFormatError(f"{path}: no ratings found")
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"], dtype=np.int64)
