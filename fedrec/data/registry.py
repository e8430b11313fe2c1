"""Registry of named datasets: where they live locally and where they come from officially.

Local lookup order for a dataset ``name``:

1. ``<root>/<name>/sequences.txt`` where ``root`` is ``data.root`` from the config or the
   ``FEDREC_DATA`` environment variable (a folder laid out like the project's shared data:
   one sub-folder per dataset holding a normalised ``sequences.txt``);
2. the download cache (``FEDREC_CACHE``, default ``~/.cache/fedrec``) filled by
   ``fedrec datasets fetch NAME``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedrec.errors import DatasetNotFoundError


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset."""

    name: str
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "ml-1m": DatasetInfo("ml-1m", "MovieLens-1M (GroupLens), 6,040 users, 3,706 items"),
    "ml-100k": DatasetInfo("ml-100k", "MovieLens-100K (GroupLens), 943 users, 1,682 items"),
    "steam": DatasetInfo("steam", "Steam-200K as used by FedRecAttack / DV-FSR"),
    "beauty": DatasetInfo("beauty", "Amazon Beauty 2014, 5-core (S3-Rec / ICLRec preprocessing)"),
    "toys": DatasetInfo("toys", "Amazon Toys and Games 2014, 5-core (ICLRec)"),
    "home": DatasetInfo("home", "Amazon Home and Kitchen (GCL4SR copy)"),
}


def data_root(root: str | None = None) -> Path | None:
    """The local dataset root: ``root`` if given, else ``$FEDREC_DATA``, else None."""
    value = root or os.environ.get("FEDREC_DATA")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Download cache: ``$FEDREC_CACHE`` or ``~/.cache/fedrec``."""
    return Path(os.environ.get("FEDREC_CACHE", "~/.cache/fedrec")).expanduser()


def locate(name: str, root: str | None = None) -> tuple[Path, str]:
    """Find a local copy of dataset ``name``.

    Returns
    -------
    path : Path
        The file to read.
    fmt : str
        Its format (see :mod:`fedrec.data.formats`).

    Raises
    ------
    DatasetNotFoundError
        Unknown name, or no local copy.
    """
    if name not in DATASETS:
        raise DatasetNotFoundError(
            f"data.name={name!r}: unknown dataset; expected 'synthetic' or one of "
            f"{', '.join(DATASETS)} (or set data.path to a file)"
        )
    candidates = []
    base = data_root(root)
    if base is not None:
        candidates.append(base / name / "sequences.txt")
    candidates.append(cache_dir() / name / "sequences.txt")
    for path in candidates:
        if path.is_file():
            return path, "sequences"
    where = " or ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found at {where}; set FEDREC_DATA (or data.root) to a folder "
        f"holding {name}/sequences.txt, or run `fedrec datasets fetch {name}`"
    )
