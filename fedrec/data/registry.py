"""Registry of named datasets: where they live locally and where they come from officially.

Local lookup order for a dataset ``name``:

1. ``<root>/<name>/sequences.txt`` where ``root`` is ``data.root`` from the config or the
   ``FEDREC_DATA`` environment variable (a folder laid out like the project's shared data:
   one sub-folder per dataset holding a normalised ``sequences.txt``);
2. the download cache (``FEDREC_CACHE``, default ``~/.cache/fedrec``) filled by
   ``fedrec datasets fetch NAME`` (see :mod:`fedrec.data.fetch`).

Every entry names the upstream raw files by an immutable URL (a GitHub ``raw`` URL pinned to a
commit, or the GroupLens archive plus the member inside it), one or two checksums per file (the
sha256 of the file and/or its git blob id, ``sha1(b"blob <size>\\0" + data)``), the converter
that turns the raw files into the normalised ``sequences.txt`` (one line per user,
``user item item ...``, user ids = line numbers, item ids ``1..n`` all used, 0 free for padding),
and a citation and terms summary. The dataset files themselves are never part of this project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import DatasetNotFoundError

_GITHUB_RAW = "https://raw.githubusercontent.com"
_GROUPLENS = "https://files.grouplens.org/datasets/movielens"

#: Converters known to :mod:`fedrec.data.fetch` (value of :attr:`DatasetInfo.convert`).
CONVERTERS = ("train-test", "movielens", "movielens-item-ties", "sequences", "gcl4sr")


def github_raw(repo: str, commit: str, path: str) -> str:
    """Immutable download URL of ``path`` in GitHub repository ``repo`` at ``commit``."""
    return f"{_GITHUB_RAW}/{repo}/{commit}/{path}"


@dataclass(frozen=True)
class RawFile:
    """One upstream file needed to build a dataset.

    Parameters
    ----------
    name : str
        File name under ``<dataset>/raw/``.
    urls : tuple of str
        Download locations, tried in order (the first is the canonical one). When ``member`` is
        set they point at a zip archive.
    member : str, optional
        Path of the file inside the zip archive.
    sha256 : str, optional
        sha256 hex digest of the file.
    git_blob : str, optional
        Git blob id of the file (``git hash-object FILE``).
    size : int, optional
        Size in bytes.
    """

    name: str
    urls: tuple[str, ...]
    member: str | None = None
    sha256: str | None = None
    git_blob: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"RawFile {self.name!r}: at least one URL is required")
        if not (self.sha256 or self.git_blob):
            raise ValueError(f"RawFile {self.name!r}: a sha256 or git blob checksum is required")

    @property
    def url(self) -> str:
        """The canonical download location."""
        return self.urls[0]


@dataclass(frozen=True)
class DatasetInfo:
    """A named dataset and its official source.

    Parameters
    ----------
    name : str
        Registry name (``data.name``).
    description : str
        One-line description.
    raw : tuple of RawFile
        Upstream files, in the order the converter reads them.
    convert : str
        Converter (one of :data:`CONVERTERS`, see :mod:`fedrec.data.fetch`).
    normalise : str
        How the raw files become ``sequences.txt``, in words.
    order : str
        What the order of items inside a sequence means.
    citation : str
        What to cite.
    terms : str
        Summary of the licence / terms of use.
    """

    name: str
    description: str
    raw: tuple[RawFile, ...] = ()
    convert: str = "sequences"
    normalise: str = ""
    order: str = ""
    citation: str = ""
    terms: str = ""

    @property
    def source(self) -> str:
        """Canonical URL of the first raw file (with the archive member, if any)."""
        if not self.raw:
            return ""
        f = self.raw[0]
        return f"{f.url}#{f.member}" if f.member else f.url


_MOVIELENS_TERMS = (
    "GroupLens (University of Minnesota) terms: research use only; acknowledge the dataset in "
    "publications; do not imply endorsement; no redistribution and no commercial use without "
    "separate permission. Keep local copies private."
)
_MOVIELENS_CITE = (
    "F. M. Harper and J. A. Konstan. The MovieLens Datasets: History and Context. "
    "ACM Transactions on Interactive Intelligent Systems 5(4), 2015."
)
_AMAZON_TERMS = (
    "Amazon review data collected by the McAuley lab (UCSD), provided for research without a "
    "formal open licence: cite the papers and do not redistribute publicly. The hosting "
    "repository's code licence does not cover the data."
)
_AMAZON_CITE = (
    "J. McAuley, C. Targett, Q. Shi, A. van den Hengel. Image-based Recommendations on Styles "
    "and Substitutes. SIGIR 2015; R. He, J. McAuley. Ups and Downs: Modeling the Visual "
    "Evolution of Fashion Trends with One-Class Collaborative Filtering. WWW 2016."
)

_DVFSR = ("qqt-code/DV-FSR", "84c8e741d22ba394be6b2f157e06f799c81edbf4")
_DVFSR_ALT = ("USTCAGI/DV-FSR", "0dfe130c7206638c6cbbc007526d32a37a3413e8")
_POISONFEDDLRS = ("rdz98/PoisonFedDLRS", "484039efb29c2ab92f3762a40d87f9afa5c3f61e")
_ICLREC = ("salesforce/ICLRec", "2890e6c3ff6a22c6699fc19cb863b66786c1cde4")
_GCL4SR = ("sdu-zyx/GCL4SR", "9e6e4d2deb13664384ce013184a88d55253df148")


def _dvfsr_ml(path: str) -> tuple[str, ...]:
    return tuple(github_raw(r, c, path) for r, c in (_DVFSR, _POISONFEDDLRS, _DVFSR_ALT))


def _iclrec_amazon(
    name: str, description: str, file: str, *, sha256: str, git_blob: str, size: int,
    iclrec_cite: str,
) -> DatasetInfo:
    """An Amazon 2014 5-core dataset shipped already normalised in ICLRec's ``data/`` folder."""
    return DatasetInfo(
        name,
        description,
        raw=(
            RawFile(file, (github_raw(*_ICLREC, f"data/{file}"),), sha256=sha256,
                    git_blob=git_blob, size=size),
        ),
        convert="sequences",
        normalise="Already normalised ('user item item ...', contiguous 1-based ids); copied.",
        order="Chronological according to S3-Rec / ICLRec (no timestamps shipped).",
        citation=(
            _AMAZON_CITE + " Preprocessing: Zhou et al., S3-Rec, CIKM 2020; Chen et al., "
            + iclrec_cite
        ),
        terms=_AMAZON_TERMS,
    )


DATASETS: dict[str, DatasetInfo] = {
    "ml-1m": DatasetInfo(
        "ml-1m",
        "MovieLens-1M as used by PoisonFedDLRS / DV-FSR (file order, not time order), "
        "6,040 users, 3,706 items",
        raw=(
            RawFile("train.dat", _dvfsr_ml("Data/ML/train.dat"),
                    sha256="007936b9f74eba871cedbcd4f91a464a13f2a321b9df2d793dcbdc9d0fb2a408",
                    git_blob="793523e1ac7ced869f03f7a2150818ffcb79133e", size=3435801),
            RawFile("test.dat", _dvfsr_ml("Data/ML/test.dat"),
                    sha256="b4da1eb04b1cc6780d2b54aa7c35c7c2e701b81aa030f0547420ab16c7487518",
                    git_blob="ba364f5c9cc0ad91f19831a112e4d1f47cdbaab0", size=863393),
        ),
        convert="train-test",
        normalise=(
            "train.dat and test.dat hold 'user item item ...' lines with 0-based ids; each "
            "user's train items are followed by their test items and every id is shifted by +1 "
            "(items.tsv maps back)."
        ),
        order=(
            "The order of MovieLens ratings.dat (file order), which is not chronological; one "
            "rating (the first line of ratings.dat) is missing."
        ),
        citation=(
            _MOVIELENS_CITE + " Federated copy: Rong et al., Poisoning Deep Learning Based "
            "Recommender Model in Federated Learning Scenarios (PoisonFedDLRS), IJCAI 2022; "
            "Qin et al., DV-FSR, arXiv 2409.07500."
        ),
        terms=_MOVIELENS_TERMS + " The hosting repositories' code is for learning and research "
        "purposes only.",
    ),
    "ml-1m-chrono": DatasetInfo(
        "ml-1m-chrono",
        "MovieLens-1M from the official GroupLens archive, sorted by timestamp",
        raw=(
            RawFile("ratings.dat", (f"{_GROUPLENS}/ml-1m.zip",), member="ml-1m/ratings.dat",
                    git_blob="77a7c4b150f588c23bb9e1f068aa996c0b413695"),
        ),
        convert="movielens",
        normalise=(
            "ratings.dat ('user::item::rating::timestamp', every rating kept) is grouped by user "
            "and sorted by timestamp, ties in file order; MovieIDs are renumbered 1..n in "
            "increasing order (items.tsv maps back); user ids are the MovieLens UserIDs."
        ),
        order="Chronological (timestamp, ties in file order).",
        citation=_MOVIELENS_CITE,
        terms=_MOVIELENS_TERMS,
    ),
    "ml-100k": DatasetInfo(
        "ml-100k",
        "MovieLens-100K (GroupLens), 943 users, 1,682 items, sorted by timestamp",
        raw=(
            RawFile("u.data", (f"{_GROUPLENS}/ml-100k.zip",), member="ml-100k/u.data",
                    sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                    git_blob="16ef21ed827cae1a3f71e89e23cffb5a8f44baae", size=1979173),
        ),
        convert="movielens-item-ties",
        normalise=(
            "u.data ('user<TAB>item<TAB>rating<TAB>timestamp', every rating kept) is grouped by "
            "user and sorted by timestamp, ties by item id; the original ids are already "
            "contiguous and kept."
        ),
        order="Chronological (timestamp; ties, which are common, by item id).",
        citation=_MOVIELENS_CITE,
        terms=_MOVIELENS_TERMS,
    ),
    "steam": DatasetInfo(
        "steam",
        "Steam-200K as used by FedRecAttack / DV-FSR, 3,753 users, 5,092 items",
        raw=(
            RawFile("train_after_final.dat",
                    (github_raw(*_DVFSR, "Data/steam/train_after_final.dat"),),
                    sha256="273b5bd19eba03e90b7e39d67af9f6be3b48bb5dcc1fa359b624440fc5be23ab",
                    git_blob="c0a7b3db55bbb6b067b5df2fc19da46141eb3566", size=480008),
            RawFile("test_after_final.dat",
                    (github_raw(*_DVFSR, "Data/steam/test_after_final.dat"),),
                    sha256="5cf9d9236a180a9665cd5ad16489ea1afc914204bf3d679d7016cf8bca0f5c19",
                    git_blob="fa345feeac2a0b7fb20ca64a8ddc8be1da8c5e90", size=33596),
        ),
        convert="train-test",
        normalise=(
            "train 'user item item ...' lines followed by each user's single test item (1-based "
            "ids); the 5,092 item ids that occur are renumbered 1..n keeping their order "
            "(items.tsv maps back); user ids unchanged."
        ),
        order="No timestamps upstream; the last item is the DV-FSR test item.",
        citation=(
            "Steam Video Games (Steam-200K), Kaggle, collected from the public Steam API. "
            "Federated copy: Rong et al., FedRecAttack: Model Poisoning Attack to Federated "
            "Recommendation, ICDE 2022; Qin et al., DV-FSR, arXiv 2409.07500."
        ),
        terms=(
            "Kaggle 'Steam Video Games' terms as listed on its page (not verified here); the "
            "hosting repository's code is for learning and research purposes only. Do not "
            "redistribute."
        ),
    ),
    "beauty": _iclrec_amazon(
        "beauty",
        "Amazon Beauty 2014, 5-core (S3-Rec / ICLRec preprocessing), 22,363 users, 12,101 items",
        "Beauty.txt",
        sha256="226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        git_blob="a29773026846d857ec8176cb25f37b23ecf20155", size=1090094,
        iclrec_cite="Intent Contrastive Learning for Sequential Recommendation (ICLRec), WWW 2022.",
    ),
    "toys": _iclrec_amazon(
        "toys",
        "Amazon Toys and Games 2014, 5-core (ICLRec), 19,412 users, 11,924 items",
        "Toys_and_Games.txt",
        sha256="176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
        git_blob="5459307b30f65949605b34d350bfad37586a1b97", size=922166,
        iclrec_cite="ICLRec, WWW 2022.",
    ),
    "home": DatasetInfo(
        "home",
        "Amazon Home and Kitchen (GCL4SR copy), 66,519 users, 28,237 items",
        raw=(
            RawFile("home.txt", (github_raw(*_GCL4SR, "datasets/home/home.txt"),),
                    sha256="dde43dc9e4a167b4003166ccc0ba7e7554e79ed7b7bbfa8e54999d7f49afd39b",
                    git_blob="8b8f6be1326bbdc9c51c9bc418c1a5f59488a843", size=3288428),
        ),
        convert="gcl4sr",
        normalise=(
            "GCL4SR 'user item,item,...' lines (0-based users, 1-based contiguous items); user "
            "ids +1, items unchanged."
        ),
        order="As shipped by GCL4SR (presumably chronological; no timestamps shipped).",
        citation=(
            _AMAZON_CITE + " Copy: Zhang et al., Enhancing Sequential Recommendation with "
            "Graph Contrastive Learning (GCL4SR), IJCAI 2022."
        ),
        terms=_AMAZON_TERMS,
    ),
}


def _entry(table: dict[str, Any], name: str, kind: str) -> Any:
    """``table[name]``, or :class:`DatasetNotFoundError` listing the valid names."""
    if name not in table:
        raise DatasetNotFoundError(f"unknown {kind} {name!r}; expected one of {', '.join(table)}")
    return table[name]


def get(name: str) -> DatasetInfo:
    """The registry entry of ``name``.

    Raises
    ------
    DatasetNotFoundError
        Unknown name (the message lists the valid ones).
    """
    return _entry(DATASETS, name, "dataset")


def data_root(root: str | None = None) -> Path | None:
    """The local dataset root: ``root`` if given, else ``$FEDREC_DATA``, else None."""
    value = root or os.environ.get("FEDREC_DATA")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Download cache: ``$FEDREC_CACHE`` or ``~/.cache/fedrec``."""
    return Path(os.environ.get("FEDREC_CACHE", "~/.cache/fedrec")).expanduser()


def local_status(name: str, root: str | None = None) -> tuple[str, Path | None]:
    """Where a local copy of ``name`` is: ``("data", path)``, ``("cache", path)`` or
    ``("missing", None)`` (``data`` = under ``root`` / ``$FEDREC_DATA``)."""
    base = data_root(root)
    if base is not None and (base / name / "sequences.txt").is_file():
        return "data", base / name / "sequences.txt"
    cached = cache_dir() / name / "sequences.txt"
    if cached.is_file():
        return "cache", cached
    return "missing", None


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
    status, path = local_status(name, root)
    if path is not None:
        return path, "sequences"
    candidates = []
    base = data_root(root)
    if base is not None:
        candidates.append(base / name / "sequences.txt")
    candidates.append(cache_dir() / name / "sequences.txt")
    where = " or ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found at {where}; set FEDREC_DATA (or data.root) to a folder "
        f"holding {name}/sequences.txt, or run `fedrec datasets fetch {name}`"
    )


# --- Time-series classification datasets (CrossTimeNet domains) -------------------------------
# These are not fetched: they are the UCR/UEA `.ts` files shipped inside the aeon 1.6.0 wheel,
# laid out as ``<root>/timeseries/<Name>/<Name>_{TRAIN,TEST}.ts`` under ``data.root`` /
# ``$FEDREC_DATA`` (read by :mod:`fedrec.data.timeseries`). They have no raw URL or converter, so
# they are a table of their own and `fedrec datasets fetch` does not list them.

_UCR_CITE = (
    "H. A. Dau et al. The UCR Time Series Archive. IEEE/CAA J. Autom. Sinica 6(6), 2019; "
    "A. Bagnall et al. The UEA multivariate time series classification archive, 2018, "
    "arXiv 1811.00075; plus the dataset's own paper (named in the file's comment header)."
)
_UCR_TERMS = (
    "UCR/UEA archive: free for research, cite the archive and the dataset's paper. Copied from "
    "the aeon 1.6.0 wheel (BSD-3-Clause code)."
)


@dataclass(frozen=True)
class TimeSeriesInfo:
    """A named UCR/UEA classification problem (official train/test `.ts` files).

    Parameters
    ----------
    name : str
        Registry name, also the folder and file stem (``<name>_TRAIN.ts``).
    description : str
        One-line description (the domain, for cross-domain pre-training).
    channels : int
        Number of channels (dimensions).
    min_length, max_length : int
        Shortest and longest series over both splits (equal when the lengths are equal).
    n_classes : int
        Number of classes.
    n_train, n_test : int
        Cases in the official train and test files.
    citation, terms : str
        What to cite; licence summary.
    """

    name: str
    description: str
    channels: int
    min_length: int
    max_length: int
    n_classes: int
    n_train: int
    n_test: int
    citation: str = _UCR_CITE
    terms: str = _UCR_TERMS


TIMESERIES_DATASETS: dict[str, TimeSeriesInfo] = {
    "BasicMotions": TimeSeriesInfo(
        "BasicMotions", "smart-watch accelerometer + gyroscope, 4 activities (HAR-like)",
        channels=6, min_length=100, max_length=100, n_classes=4, n_train=40, n_test=40),
    "JapaneseVowels": TimeSeriesInfo(
        "JapaneseVowels", "12 LPC cepstrum coefficients of spoken vowels, 9 speakers (speech)",
        channels=12, min_length=7, max_length=29, n_classes=9, n_train=270, n_test=370),
    "GunPoint": TimeSeriesInfo(
        "GunPoint", "hand x-coordinate, gun-draw vs point (motion)",
        channels=1, min_length=150, max_length=150, n_classes=2, n_train=50, n_test=150),
    "ArrowHead": TimeSeriesInfo(
        "ArrowHead", "arrowhead outlines as angle series, 3 classes (shape)",
        channels=1, min_length=251, max_length=251, n_classes=3, n_train=36, n_test=175),
    "ItalyPowerDemand": TimeSeriesInfo(
        "ItalyPowerDemand", "daily Italian power demand, winter vs summer (electricity)",
        channels=1, min_length=24, max_length=24, n_classes=2, n_train=67, n_test=1029),
}


def get_timeseries(name: str) -> TimeSeriesInfo:
    """The time-series registry entry of ``name``.

    Raises
    ------
    DatasetNotFoundError
        Unknown name (the message lists the valid ones).
    """
    return _entry(TIMESERIES_DATASETS, name, "time-series dataset")
