"""Download, verify and normalise the registered datasets (``fedrec datasets fetch|verify|info``).

:func:`fetch` downloads every raw file of a registry entry (:mod:`fedrec.data.registry`) into
``<cache>/<name>/raw/``, extracting zip members where the source is an archive, checks each file
against its registered sha256 and/or git blob id, and converts the raw files into the
normalised ``<cache>/<name>/sequences.txt`` (one line per user, ``user item item ...``, user
ids = line numbers, item ids ``1..n`` all used, 0 free for padding) plus ``items.tsv`` mapping
the new item ids back to the source ids whenever they differ. Every file is written to a
temporary name and moved into place with :func:`os.replace`, so an interrupted run never leaves
a half-written file under its final name; work already done (a verified raw file, a built
``sequences.txt``) is skipped on the next run.

Item renumbering rule, shared by all converters: if the item ids that occur are exactly
``1..n`` they are kept; otherwise they are renumbered ``1..n`` in increasing order of the source
id (so ``items.tsv`` is monotone and the relative order of ids is preserved).

Mirrors: ``base_url`` (or ``$FEDREC_MIRROR``) replaces the scheme and host of every URL, so
``https://raw.githubusercontent.com/o/r/c/p`` is fetched from ``<base_url>/o/r/c/p``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.formats import (
    _id,
    _int,
    _lines,
    _user_items,
    read_gcl4sr,
    read_movielens,
    read_sequences,
)
from fedrec.data.registry import DatasetInfo, RawFile, cache_dir, data_root, get, local_status
from fedrec.errors import ChecksumError, DataFormatError, DatasetNotFoundError, FedRecError

#: Seconds to wait for a server before giving up.
TIMEOUT = 60.0
_CHUNK = 1 << 20
_USER_AGENT = "fedrec-datasets/0.1 (+https://github.com/)"


# --------------------------------------------------------------------------- checksums


def file_checksums(path: str | Path) -> dict[str, object]:
    """sha256, git blob id and size of a file (read once, in chunks).

    Returns
    -------
    dict
        ``{"sha256": hex, "git_blob": hex, "size": int}``.
    """
    path = Path(path)
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
    return {"sha256": sha256.hexdigest(), "git_blob": blob.hexdigest(), "size": size}


def check_file(path: str | Path, spec: RawFile) -> tuple[bool, str]:
    """Compare a file with the checksums registered for it.

    Every declared checksum (sha256, git blob, size) must match.

    Returns
    -------
    ok : bool
        True when all declared checksums match.
    detail : str
        ``"sha256 ok, git blob ok"`` or the first mismatch, ``"sha256 mismatch: expected X,
        got Y"``.
    """
    actual = file_checksums(path)
    passed = []
    for key, label in (("size", "size"), ("sha256", "sha256"), ("git_blob", "git blob")):
        expected = getattr(spec, key)
        if expected is None:
            continue
        if expected != actual[key]:
            return False, f"{label} mismatch: expected {expected}, got {actual[key]}"
        passed.append(f"{label} ok")
    return True, ", ".join(passed)


# --------------------------------------------------------------------------- converters


@dataclass
class Normalised:
    """A dataset in normalised form, ready to be written.

    Attributes
    ----------
    sequences : list of numpy.ndarray
        Row ``u`` is the items of user ``u + 1``; ids in ``1..n_items``, all used.
    item_ids : numpy.ndarray or None
        Source id of each new item id (index 0 unused); None when the ids were kept.
    """

    sequences: list[np.ndarray]
    item_ids: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """Number of distinct items."""
        return int(max(int(s.max()) for s in self.sequences)) if self.sequences else 0

    def sequences_text(self) -> str:
        """The ``sequences.txt`` content."""
        return "".join(
            f"{u} {' '.join(map(str, s.tolist()))}\n" for u, s in enumerate(self.sequences, 1)
        )

    def items_text(self) -> str | None:
        """The ``items.tsv`` content (None when no map is needed)."""
        if self.item_ids is None:
            return None
        rows = (f"{i}\t{int(o)}\n" for i, o in enumerate(self.item_ids[1:].tolist(), 1))
        return "item_id\tsource_item_id\n" + "".join(rows)


def compact_items(seqs: list[np.ndarray]) -> Normalised:
    """Apply the renumbering rule (module docstring) to source-id sequences."""
    if not seqs:
        raise DataFormatError("no sequences to normalise")
    flat = np.concatenate(seqs)
    used, inverse = np.unique(flat, return_inverse=True)  # memory ~ interactions, not ids
    if used[0] == 1 and used[-1] == len(used):
        return Normalised([np.asarray(s, dtype=np.int64) for s in seqs], None)
    if used[0] < 0:
        raise DataFormatError(f"negative item id {int(used[0])} in the source data")
    new = np.split(inverse.reshape(-1).astype(np.int64) + 1, np.cumsum([len(s) for s in seqs])[:-1])
    return Normalised(new, np.concatenate([[0], used]).astype(np.int64))


def _read_rows(path: Path) -> dict[int, np.ndarray]:
    """``user item item ...`` lines with non-negative ids (0-based allowed), one line per user."""
    rows: dict[int, np.ndarray] = {}
    for lineno, line in _lines(path):
        user, items = _user_items(line, path, lineno)
        if min(items) < 0 or user < 0:
            raise DataFormatError(f"{path}:{lineno}: negative id")
        if user in rows:
            raise DataFormatError(f"{path}:{lineno}: user {user} appears on more than one line")
        rows[user] = np.asarray(items, dtype=np.int64)
    if not rows:
        raise DataFormatError(f"{path}: file is empty (expected 'user item item ...' lines)")
    return rows


def convert_train_test(train: Path, test: Path) -> Normalised:
    """Train file then test file, per user (DV-FSR / PoisonFedDLRS layout); users in id order."""
    tr, te = _read_rows(train), _read_rows(test)
    empty = np.empty(0, dtype=np.int64)
    users = sorted(set(tr) | set(te))
    return compact_items([np.concatenate([tr.get(u, empty), te.get(u, empty)]) for u in users])


def convert_movielens(ratings: Path) -> Normalised:
    """MovieLens ratings sorted by timestamp (ties in file order); users in id order."""
    _, seqs = read_movielens(ratings)
    return compact_items(seqs)


def convert_movielens_item_ties(ratings: Path) -> Normalised:
    """MovieLens ratings sorted by timestamp, ties by item id; users in id order."""
    sep = "::" if ratings.name.endswith(".dat") else None
    rows: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for lineno, line in _lines(ratings, encoding="latin-1"):
        toks = line.split(sep) if sep else line.split()
        if len(toks) != 4:
            raise DataFormatError(
                f"{ratings}:{lineno}: expected 4 fields user, item, rating, timestamp; "
                f"got {len(toks)}"
            )
        user = _id(toks[0], ratings, lineno, "user id")
        item = _id(toks[1], ratings, lineno, "item id")
        ts = _int(toks[3], ratings, lineno, "timestamp")
        if item <= 0:
            raise DataFormatError(f"{ratings}:{lineno}: item id {item} is not positive")
        rows[user].append((ts, item))
    if not rows:
        raise DataFormatError(f"{ratings}: no ratings read")
    seqs = [np.asarray([it for _, it in sorted(rows[u])], dtype=np.int64) for u in sorted(rows)]
    return compact_items(seqs)


def convert_sequences(path: Path) -> Normalised:
    """Already-normalised ``user item ...`` lines (ICLRec); users in file order."""
    _, seqs = read_sequences(path)
    return compact_items(seqs)


def convert_gcl4sr(path: Path) -> Normalised:
    """GCL4SR ``user item,item,...`` lines; users in file order."""
    _, seqs = read_gcl4sr(path)
    return compact_items(seqs)


_CONVERTERS: dict[str, Callable[..., Normalised]] = {
    "train-test": convert_train_test,
    "movielens": convert_movielens,
    "movielens-item-ties": convert_movielens_item_ties,
    "sequences": convert_sequences,
    "gcl4sr": convert_gcl4sr,
}


def normalise(name: str | DatasetInfo, raw_dir: str | Path) -> Normalised:
    """Convert the raw files of a registered dataset found in ``raw_dir``.

    Parameters
    ----------
    name : str or DatasetInfo
        Registry name (or entry).
    raw_dir : str or Path
        Folder holding the entry's raw files under their registered names.

    Raises
    ------
    DatasetNotFoundError
        Unknown name.
    DataFormatError
        A raw file is missing or malformed.
    """
    info = name if isinstance(name, DatasetInfo) else get(name)
    raw_dir = Path(raw_dir)
    return _CONVERTERS[info.convert](*(raw_dir / f.name for f in info.raw))


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_normalised(norm: Normalised, out_dir: str | Path) -> Path:
    """Write ``sequences.txt`` (and ``items.tsv`` when ids changed) atomically.

    ``items.tsv`` is written first so that ``sequences.txt`` appearing marks a complete build.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = norm.items_text()
    if items is not None:
        _atomic_write(out_dir / "items.tsv", items.encode("ascii"))
    elif (out_dir / "items.tsv").exists():
        (out_dir / "items.tsv").unlink()
    _atomic_write(out_dir / "sequences.txt", norm.sequences_text().encode("ascii"))
    return out_dir / "sequences.txt"


# --------------------------------------------------------------------------- downloading


def mirror_url(url: str, base_url: str | None) -> str:
    """``url`` with its scheme and host replaced by ``base_url`` (unchanged when None)."""
    if not base_url:
        return url
    parts = urllib.parse.urlsplit(url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return base_url.rstrip("/") + tail


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _download(url: str, dest: Path, desc: str, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``dest``; network problems become one-line :class:`FedRecError`."""
    from tqdm.auto import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as fh:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                      disable=not (progress and sys.stderr.isatty()), leave=False) as bar:
                while chunk := resp.read(_CHUNK):
                    fh.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if total is not None and got != total:
                raise FedRecError(
                    f"download failed: {url}: got {got} of {total} bytes (connection cut)"
                )
    except urllib.error.HTTPError as exc:
        raise FedRecError(f"download failed: {url}: HTTP {exc.code} {_one_line(exc.reason)}") \
            from None
    except urllib.error.URLError as exc:
        raise FedRecError(f"download failed: {url}: {_one_line(exc.reason)}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise FedRecError(
            f"download failed: {url}: {type(exc).__name__} {_one_line(exc)}".rstrip()
        ) from None


def _tmp_path(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def _fetch_group(
    files: list[RawFile], raw_dir: Path, base_url: str | None, progress: bool, timeout: float
) -> None:
    """Download one source (a plain file, or an archive holding several members), verify, and
    move the results into ``raw_dir``. Alternate URLs are tried when a source fails."""
    errors: list[FedRecError] = []
    for url in files[0].urls:
        real = mirror_url(url, base_url)
        tmp = _tmp_path(raw_dir, files[0].name)
        extracted: list[Path] = []
        try:
            _download(real, tmp, files[0].name, progress, timeout)
            if files[0].member is None:
                extracted = [tmp]
            else:
                extracted = _extract(tmp, files, raw_dir, real)
            for f, path in zip(files, extracted):
                ok, detail = check_file(path, f)
                if not ok:
                    raise ChecksumError(f"{raw_dir / f.name} (from {real}): {detail}")
            for f, path in zip(files, extracted):
                os.replace(path, raw_dir / f.name)
            return
        except FedRecError as exc:
            errors.append(exc)
        finally:
            for path in [tmp, *extracted]:
                if path.exists():
                    path.unlink()
    bad = [e for e in errors if isinstance(e, (ChecksumError, DataFormatError))]
    if bad:
        raise bad[0]
    if len(errors) == 1:
        raise errors[0]
    raise FedRecError("; ".join(str(e) for e in errors))


def _extract(archive: Path, files: list[RawFile], raw_dir: Path, url: str) -> list[Path]:
    out = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for f in files:
                dest = _tmp_path(raw_dir, f.name)
                out.append(dest)
                try:
                    src = zf.open(f.member)
                except KeyError:
                    raise DataFormatError(f"{url}: archive has no member {f.member!r}") from None
                with src, open(dest, "wb") as fh:
                    shutil.copyfileobj(src, fh, _CHUNK)
    except zipfile.BadZipFile:
        for p in out:
            p.unlink(missing_ok=True)
        raise DataFormatError(f"{url}: not a valid zip archive") from None
    except DataFormatError:
        for p in out:
            p.unlink(missing_ok=True)
        raise
    return out


def _groups(files: Iterable[RawFile]) -> list[list[RawFile]]:
    by_source: dict[tuple[str, ...], list[RawFile]] = {}
    for f in files:
        by_source.setdefault(f.urls, []).append(f)
    return list(by_source.values())


def fetch(
    name: str,
    cache: str | Path | None = None,
    base_url: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = TIMEOUT,
) -> Path:
    """Download, verify and normalise a registered dataset.

    Parameters
    ----------
    name : str
        Registry name.
    cache : str or Path, optional
        Cache root (default :func:`fedrec.data.registry.cache_dir`); files go to
        ``<cache>/<name>/raw/`` and ``<cache>/<name>/sequences.txt``.
    base_url : str, optional
        Mirror replacing scheme and host of every URL (default ``$FEDREC_MIRROR``).
    force : bool
        Download and rebuild even when verified files are present.
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    timeout : float
        Seconds to wait for a server.

    Returns
    -------
    Path
        The normalised ``sequences.txt``.

    Raises
    ------
    DatasetNotFoundError
        Unknown name.
    FedRecError
        A server could not be reached (the message names the URL).
    ChecksumError
        A downloaded file does not match its registered checksum (nothing is kept).
    DataFormatError
        A downloaded file cannot be parsed.
    """
    entry = get(name)
    base_url = base_url or os.environ.get("FEDREC_MIRROR") or None
    ddir = (Path(cache).expanduser() if cache else cache_dir()) / name
    raw_dir = ddir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    out = ddir / "sequences.txt"

    todo = [f for f in entry.raw
            if force or not (raw_dir / f.name).is_file() or not check_file(raw_dir / f.name, f)[0]]
    for group in _groups(todo):
        _fetch_group(group, raw_dir, base_url, progress, timeout)
    if todo or force or not out.is_file():
        write_normalised(normalise(entry, raw_dir), ddir)
    return out


# --------------------------------------------------------------------------- verify / info


def verify(
    name: str, root: str | Path | None = None, cache: str | Path | None = None
) -> list[tuple[str, bool, str]]:
    """Re-check the raw files of ``name`` against the registry.

    Checks ``<cache>/<name>/raw/`` and, when ``root`` (or ``$FEDREC_DATA``) is set, the
    ``<root>/<name>/raw/`` folder of a tree laid out like the project's shared data. Only
    locations that have a ``raw/`` folder for the dataset are checked.

    Returns
    -------
    list of (str, bool, str)
        ``(file, ok, detail)`` per registered file and location (``detail`` is ``"missing"``
        for an absent file).

    Raises
    ------
    DatasetNotFoundError
        Unknown name, or no raw folder for it anywhere.
    """
    entry = get(name)
    results = []
    for place in _raw_places(name, root, cache):
        for f in entry.raw:
            path = place / f.name
            if not path.is_file():
                results.append((str(path), False, "missing"))
            else:
                ok, detail = check_file(path, f)
                results.append((str(path), ok, detail))
    return results


def _raw_places(name: str, root: str | Path | None, cache: str | Path | None) -> list[Path]:
    """The existing ``raw/`` folders of ``name``: in the cache, then under ``root``.

    Raises
    ------
    DatasetNotFoundError
        No raw folder anywhere.
    """
    places = [(Path(cache).expanduser() if cache else cache_dir()) / name / "raw"]
    base = data_root(str(root) if root is not None else None)
    if base is not None:
        places.append(base / name / "raw")
    present = [p for p in places if p.is_dir()]
    if not present:
        raise DatasetNotFoundError(
            f"no raw files of {name!r} at {' or '.join(map(str, places))}; "
            f"run `fedrec datasets fetch {name}`"
        )
    return present


def _first_difference(a: bytes, b: bytes) -> int:
    """1-based number of the first line where ``a`` and ``b`` differ (they must differ)."""
    la, lb = a.split(b"\n"), b.split(b"\n")
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if x != y:
            return i + 1
    return min(len(la), len(lb)) + 1


def verify_sequences(
    name: str, root: str | Path | None = None, cache: str | Path | None = None
) -> list[tuple[str, bool, str]]:
    """Check each ``sequences.txt`` of ``name`` against its raw files.

    Where :func:`verify` checks a ``raw/`` folder, the ``sequences.txt`` next to it must be
    byte for byte what those raw files normalise to (:func:`normalise`), so an edited line
    is caught even though ``sequences.txt`` has no registered checksum.

    Returns
    -------
    list of (str, bool, str)
        ``(sequences.txt path, ok, detail)`` per location; ``detail`` is ``"missing"``, ``"not
        checked: a raw file failed"``, ``"differs from what the raw files normalise to (first
        difference on line N)"`` or ``"matches what the raw files normalise to"``.

    Raises
    ------
    DatasetNotFoundError
        Unknown name, or no raw folder for it anywhere.
    DataFormatError
        A raw file passes its checksums but cannot be converted (a registry error).
    """
    entry = get(name)
    results = []
    for place in _raw_places(name, root, cache):
        seq = place.parent / "sequences.txt"
        if not seq.is_file():
            results.append((str(seq), False, "missing"))
        elif not all((place / f.name).is_file() and check_file(place / f.name, f)[0]
                     for f in entry.raw):
            results.append((str(seq), False, "not checked: a raw file failed"))
        else:
            expected = normalise(entry, place).sequences_text().encode("ascii")
            actual = seq.read_bytes()
            if actual == expected:
                results.append((str(seq), True, "matches what the raw files normalise to"))
            else:
                line = _first_difference(actual, expected)
                results.append((str(seq), False, "differs from what the raw files normalise "
                                f"to (first difference on line {line})"))
    return results


def info(name: str, root: str | Path | None = None) -> dict:
    """Source, citation, terms and (when a local copy exists) statistics of ``name``.

    Returns
    -------
    dict
        Keys ``name, description, source, raw, normalise, order, citation, terms, local,
        location, stats``; ``location`` is ``"data"`` (under ``root`` / ``$FEDREC_DATA``),
        ``"cache"`` or ``"missing"``; ``stats`` is :meth:`SequenceDataset.stats` of the local
        ``sequences.txt`` or None.
    """
    entry = get(name)
    where, path = local_status(name, str(root) if root is not None else None)
    stats = None
    if path is not None:
        from fedrec.data.loader import read_dataset  # the loader imports the registry

        stats = read_dataset(path, "sequences", name).stats()
    return {
        "name": entry.name,
        "description": entry.description,
        "source": entry.source,
        "raw": [
            {"file": f.name, "urls": list(f.urls), "member": f.member, "sha256": f.sha256,
             "git_blob": f.git_blob, "size": f.size}
            for f in entry.raw
        ],
        "normalise": entry.normalise,
        "order": entry.order,
        "citation": entry.citation,
        "terms": entry.terms,
        "local": str(path) if path is not None else None,
        "location": where,
        "stats": stats,
    }
