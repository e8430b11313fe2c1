"""Time-series classification data: a reader for the sktime/aeon ``.ts`` format, the official
UCR/UEA train/test files, and a seeded, stratified validation split carved from train.

Format (as documented by sktime/aeon and the UEA archive; Bagnall et al., "The UEA multivariate
time series classification archive, 2018", arXiv 1811.00075; Dau et al., "The UCR Time Series
Archive", IEEE/CAA JAS 2019). Lines starting with ``#`` are comments and blank lines are ignored.
A header of ``@`` tags comes first:

* ``@problemName NAME``
* ``@timeStamps true|false`` (only ``false`` is supported: timestamped values ``(t,v)`` are not)
* ``@missing true|false`` (``?`` marks a missing value; with ``false`` a ``?`` is an error)
* ``@univariate true|false`` and ``@dimensions D`` (``univariate true`` means ``D = 1``)
* ``@equalLength true|false`` and ``@seriesLength L`` (checked against every case when given)
* ``@classLabel true LABEL ...`` or ``@classLabel false``
* ``@data``, after which each line is one case: the channels separated by ``:``, the values of a
  channel by ``,``, and (with ``@classLabel true``) the class label last, after a final ``:``.

Unequal lengths are kept as they are, not resampled: ``X`` is padded on the right with NaN to
the longest case of the file and ``lengths`` holds each case's length (the longest of its
channels; a channel shorter than its case is NaN-padded as well). :func:`resample` and
:func:`crop` turn such data into a fixed length for models that need one (documented there).

Class labels are mapped to integers in the order the ``@classLabel`` header lists them, so a
train and a test file of the same problem share the mapping. Every malformed input raises a
one-line :class:`~fedrec.errors.DataFormatError` naming ``file:line`` and what was expected.

The five datasets shipped in the project's shared data are registered in
:data:`fedrec.data.registry.TIMESERIES_DATASETS`; :func:`load` finds
``<root>/timeseries/<Name>/<Name>_TRAIN.ts`` and ``_TEST.ts`` under ``data.root`` /
``$FEDREC_DATA``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.registry import TIMESERIES_DATASETS, data_root, get_timeseries
from fedrec.errors import DataFormatError, DatasetNotFoundError

_BOOL_TAGS = ("timestamps", "missing", "univariate", "equallength")
_KNOWN_TAGS = (
    "problemname", "timestamps", "missing", "univariate", "dimensions", "equallength",
    "serieslength", "classlabel", "data",
)


@dataclass(frozen=True)
class TimeSeriesData:
    """One ``.ts`` file, parsed.

    Attributes
    ----------
    X : ndarray, float32, ``[n, channels, length]``
        Values; missing values (``?``) and the padding of shorter cases are NaN.
    y : ndarray, int64, ``[n]``
        Class index (position of the label in ``class_names``); -1 when the file has no labels.
    lengths : ndarray, int64, ``[n]``
        Length of each case (the longest of its channels).
    class_names : tuple of str
        Labels in the order of the ``@classLabel`` header.
    problem_name : str
        ``@problemName`` (empty when absent).
    path : str
        The file read.
    """

    X: np.ndarray
    y: np.ndarray
    lengths: np.ndarray
    class_names: tuple[str, ...]
    problem_name: str
    path: str

    @property
    def n_channels(self) -> int:
        """Number of channels (dimensions)."""
        return int(self.X.shape[1])

    @property
    def equal_length(self) -> bool:
        """Whether every case has the same length (and no NaN padding was needed)."""
        return bool(self.lengths.size == 0 or (self.lengths == self.lengths[0]).all())

    def subset(self, index: np.ndarray) -> TimeSeriesData:
        """The cases at ``index`` (same class mapping, padding kept)."""
        index = np.asarray(index, dtype=np.int64)
        return TimeSeriesData(self.X[index], self.y[index], self.lengths[index],
                              self.class_names, self.problem_name, self.path)


def _parse_bool(value: str, where: str, tag: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    raise DataFormatError(f"{where}: @{tag} expects 'true' or 'false', got {value.strip()!r}")


def _parse_int(value: str, where: str, tag: str) -> int:
    try:
        out = int(value.strip())
    except ValueError:
        out = 0
    if out < 1:
        raise DataFormatError(f"{where}: @{tag} expects a positive integer, got {value.strip()!r}")
    return out


def _parse_header(tag_line: str, where: str, header: dict[str, object]) -> None:
    name, _, rest = tag_line[1:].partition(" ")
    if "\t" in name:
        name, _, more = name.partition("\t")
        rest = more + " " + rest
    key = name.strip().lower()
    if key not in _KNOWN_TAGS:
        raise DataFormatError(
            f"{where}: unknown header tag @{name.strip()}; expected one of @problemName, "
            "@timeStamps, @missing, @univariate, @dimensions, @equalLength, @seriesLength, "
            "@classLabel, @data"
        )
    if key in header:
        raise DataFormatError(f"{where}: @{name.strip()} given twice")
    rest = rest.strip()
    if key == "data":
        if rest:
            raise DataFormatError(f"{where}: @data takes no value, got {rest!r}")
        header[key] = True
    elif key == "problemname":
        if not rest:
            raise DataFormatError(f"{where}: @problemName expects a name")
        header[key] = rest
    elif key in _BOOL_TAGS:
        header[key] = _parse_bool(rest, where, name.strip())
        if key == "timestamps" and header[key]:
            raise DataFormatError(
                f"{where}: @timeStamps true is not supported (timestamped values); "
                "expected @timeStamps false"
            )
    elif key in ("dimensions", "serieslength"):
        header[key] = _parse_int(rest, where, name.strip())
    else:  # classlabel
        parts = rest.split()
        if not parts:
            raise DataFormatError(f"{where}: @classLabel expects 'true LABEL ...' or 'false'")
        has = _parse_bool(parts[0], where, name.strip())
        labels = parts[1:]
        if has and not labels:
            raise DataFormatError(f"{where}: @classLabel true expects at least one label")
        if not has and labels:
            raise DataFormatError(f"{where}: @classLabel false takes no labels, got {labels[0]!r}")
        if len(set(labels)) != len(labels):
            raise DataFormatError(f"{where}: @classLabel lists a label twice")
        header[key] = tuple(labels) if has else None


def _parse_channel(text: str, where: str, channel: int, missing_ok: bool) -> list[float]:
    if not text.strip():
        raise DataFormatError(f"{where}: channel {channel + 1} is empty; expected comma-separated "
                              "numbers")
    out: list[float] = []
    for token in text.split(","):
        token = token.strip()
        if token == "?":
            if not missing_ok:
                raise DataFormatError(
                    f"{where}: channel {channel + 1} has a missing value '?' but the header says "
                    "@missing false"
                )
            out.append(math.nan)
            continue
        try:
            value = float(token)
        except ValueError:
            raise DataFormatError(
                f"{where}: channel {channel + 1}: expected a number or '?', got {token!r}"
            ) from None
        if not math.isfinite(value):
            raise DataFormatError(
                f"{where}: channel {channel + 1}: expected a finite number or '?', got {token!r}"
            )
        out.append(value)
    return out


def read_ts(path: str | Path) -> TimeSeriesData:
    """Read one ``.ts`` file.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    TimeSeriesData
        ``X`` float32 ``[n, channels, length]`` (NaN for ``?`` and for padding), integer labels
        in header order, per-case lengths.

    Raises
    ------
    DataFormatError
        Missing file, or any malformed header tag, data line, label or count, named by
        ``file:line`` and what was expected.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found; expected a .ts file") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc.reason}); expected a .ts file") \
            from None

    header: dict[str, object] = {}
    cases: list[list[list[float]]] = []
    labels: list[int] = []
    n_dims: int | None = None
    label_index: dict[str, int] = {}
    has_labels = False
    missing_ok = True
    last_line = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        last_line = lineno
        line = raw.strip()
        where = f"{path}:{lineno}"
        if not line or line.startswith("#"):
            continue
        if "data" not in header:
            if not line.startswith("@"):
                raise DataFormatError(f"{where}: expected a header tag (@...) or @data before the "
                                      f"data, got {line[:30]!r}")
            _parse_header(line, where, header)
            if "data" in header:
                if "classlabel" not in header:
                    raise DataFormatError(f"{where}: @classLabel must come before @data")
                labels_decl = header["classlabel"]
                has_labels = labels_decl is not None
                if has_labels:
                    label_index = {lab: i for i, lab in enumerate(labels_decl)}  # type: ignore[arg-type]
                univariate = header.get("univariate")
                dims = header.get("dimensions")
                if univariate is True and dims not in (None, 1):
                    raise DataFormatError(
                        f"{where}: @univariate true contradicts @dimensions {dims}"
                    )
                if univariate is False and dims == 1:
                    raise DataFormatError(f"{where}: @univariate false contradicts @dimensions 1")
                n_dims = 1 if univariate is True else dims  # type: ignore[assignment]
                missing_ok = header.get("missing", True) is not False
            continue
        if line.startswith("@"):
            raise DataFormatError(f"{where}: header tag after @data; expected a data line")
        parts = line.split(":")
        if has_labels:
            if len(parts) < 2:
                raise DataFormatError(
                    f"{where}: expected channels followed by ':LABEL' (the header says "
                    "@classLabel true)"
                )
            label = parts[-1].strip()
            parts = parts[:-1]
            if label not in label_index:
                raise DataFormatError(
                    f"{where}: class label {label!r} is not declared in @classLabel "
                    f"({' '.join(label_index)})"
                )
            labels.append(label_index[label])
        else:
            labels.append(-1)
        if n_dims is None:
            n_dims = len(parts)
        if len(parts) != n_dims:
            raise DataFormatError(f"{where}: {len(parts)} channels; expected {n_dims} "
                                  "(':'-separated)")
        cases.append([_parse_channel(p, where, c, missing_ok) for c, p in enumerate(parts)])
        if header.get("equallength") is True or "serieslength" in header:
            lens = {len(ch) for ch in cases[-1]}
            expect = header.get("serieslength") or len(cases[0][0])
            if lens != {expect}:
                raise DataFormatError(
                    f"{where}: series length {max(lens)}; expected {expect} "
                    f"({'@seriesLength' if 'serieslength' in header else '@equalLength true'})"
                )
    if "data" not in header:
        raise DataFormatError(f"{path}:{last_line}: end of file before @data; expected a header "
                              "ending with @data")
    if not cases:
        raise DataFormatError(f"{path}:{last_line}: no data lines after @data; expected at least "
                              "one case")

    lengths = np.array([max(len(ch) for ch in case) for case in cases], dtype=np.int64)
    n, dims, width = len(cases), int(n_dims or 1), int(lengths.max())
    X = np.full((n, dims, width), np.nan, dtype=np.float32)
    for i, case in enumerate(cases):
        for c, values in enumerate(case):
            X[i, c, : len(values)] = values
    class_names = tuple(header["classlabel"] or ())  # type: ignore[arg-type]
    return TimeSeriesData(X, np.asarray(labels, dtype=np.int64), lengths, class_names,
                          str(header.get("problemname", "")), str(path))


def stratified_split(
    y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with ``fraction`` of each class held out.

    Each class holds out ``round(fraction * count)`` cases, at least one when the class has two
    or more cases and ``fraction > 0``, and never all of them. The draw is a permutation from
    ``numpy.random.default_rng(seed)``, so the split depends on the seed and the labels only.

    Parameters
    ----------
    y : ndarray of int
        Labels.
    fraction : float
        Share to hold out, in ``[0, 1)``.
    seed : int
        Seed.

    Returns
    -------
    kept, held_out : ndarray of int64
        Sorted indices.

    Raises
    ------
    ValueError
        ``fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction: expected a value in [0, 1), got {fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        count = len(idx)
        k = int(round(fraction * count))
        if fraction > 0 and count >= 2:
            k = max(k, 1)
        k = min(k, count - 1)
        held.append(rng.permutation(idx)[:k])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(y)), out)
    return kept.astype(np.int64), out.astype(np.int64)


@dataclass(frozen=True)
class TimeSeriesSplits:
    """A registered problem's official train/test files and a validation split from train."""

    name: str
    train: TimeSeriesData
    val: TimeSeriesData
    test: TimeSeriesData

    @property
    def class_names(self) -> tuple[str, ...]:
        """Labels, in header order."""
        return self.train.class_names

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return self.train.n_channels


def dataset_dir(name: str, root: str | Path | None = None) -> Path:
    """Folder holding ``<name>_TRAIN.ts`` and ``<name>_TEST.ts``.

    Looks in ``<root>/timeseries/<name>`` then ``<root>/<name>``, ``root`` being the argument,
    else ``$FEDREC_DATA``.

    Raises
    ------
    DatasetNotFoundError
        Unknown name, no root, or the files are not there.
    """
    get_timeseries(name)
    base = data_root(str(root) if root is not None else None)
    if base is None:
        raise DatasetNotFoundError(
            f"time-series dataset {name!r}: no data root; set FEDREC_DATA (or data.root) to a "
            f"folder holding timeseries/{name}/{name}_TRAIN.ts"
        )
    candidates = [base / "timeseries" / name, base / name]
    for folder in candidates:
        if (folder / f"{name}_TRAIN.ts").is_file() and (folder / f"{name}_TEST.ts").is_file():
            return folder
    raise DatasetNotFoundError(
        f"time-series dataset {name!r} not found: expected {name}_TRAIN.ts and {name}_TEST.ts in "
        + " or ".join(str(c) for c in candidates)
    )


def load(
    name: str, root: str | Path | None = None, *, val_fraction: float = 0.2, seed: int = 0
) -> TimeSeriesSplits:
    """Load a registered UCR/UEA problem: official train and test, plus a validation split.

    The validation split is :func:`stratified_split` of the official train file (``val_fraction``
    of each class, seeded); the test file is never used for selection.

    Raises
    ------
    DatasetNotFoundError
        See :func:`dataset_dir`.
    DataFormatError
        A malformed file, or train and test disagreeing on channels or class labels.
    """
    folder = dataset_dir(name, root)
    train = read_ts(folder / f"{name}_TRAIN.ts")
    test = read_ts(folder / f"{name}_TEST.ts")
    if train.class_names != test.class_names:
        raise DataFormatError(
            f"{test.path}: @classLabel {' '.join(test.class_names)}; expected the train file's "
            f"{' '.join(train.class_names)}"
        )
    if train.n_channels != test.n_channels:
        raise DataFormatError(f"{test.path}: {test.n_channels} channels; expected the train "
                              f"file's {train.n_channels}")
    kept, held = stratified_split(train.y, val_fraction, seed)
    return TimeSeriesSplits(name, train.subset(kept), train.subset(held), test)


def resample(data: TimeSeriesData, length: int) -> np.ndarray:
    """Each case linearly interpolated onto ``length`` equally spaced points.

    A case's valid part (its first ``lengths[i]`` steps) is mapped onto ``[0, 1]`` and sampled
    at ``length`` points with ``numpy.interp``, channel by channel; missing values (NaN) inside
    it are bridged by the same interpolation (a channel with no value at all becomes zeros).
    Equal-length data at ``length`` comes back unchanged apart from filled gaps.

    Returns
    -------
    ndarray, float32, ``[n, channels, length]``
    """
    if length < 1:
        raise ValueError(f"length: expected a positive integer, got {length}")
    n, dims, _ = data.X.shape
    out = np.zeros((n, dims, length), dtype=np.float32)
    grid = np.linspace(0.0, 1.0, length)
    for i in range(n):
        m = int(data.lengths[i])
        src = np.linspace(0.0, 1.0, m) if m > 1 else np.zeros(1)
        for c in range(dims):
            values = data.X[i, c, :m].astype(np.float64)
            ok = np.isfinite(values)
            if ok.any():
                out[i, c] = np.interp(grid, src[ok], values[ok])
    return out


def crop(data: TimeSeriesData, length: int) -> np.ndarray:
    """The first ``length`` steps of every case (all cases must be at least that long and have no
    missing values in them).

    Raises
    ------
    ValueError
        A case shorter than ``length`` or a missing value in the kept part.
    """
    if length < 1 or int(data.lengths.min()) < length:
        raise ValueError(f"length: expected 1..{int(data.lengths.min())} (the shortest case), "
                         f"got {length}")
    out = data.X[:, :, :length]
    if not np.isfinite(out).all():
        raise ValueError(f"{data.path}: missing values in the first {length} steps; use resample")
    return np.ascontiguousarray(out, dtype=np.float32)


__all__ = [
    "TIMESERIES_DATASETS", "TimeSeriesData", "TimeSeriesSplits", "crop", "dataset_dir", "load",
    "read_ts", "resample", "stratified_split",
]
