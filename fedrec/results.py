"""Run directories: resolved config, per-step metrics log, summary, atomic checkpoints.

Layout of a run directory::

    config.yaml        resolved experiment config
    metrics.jsonl      one JSON object per evaluation/round (append-only, fsync'ed)
    checkpoint.pt      latest training state (written atomically)
    summary.json       final results (written atomically; its presence marks a finished run)
    error.txt          the error message if the run failed

Everything is written so that a crash at any moment loses nothing already computed: files are
replaced atomically (write to a temporary file in the same folder, fsync, ``os.replace``), and
on resume the metrics log is cut back to the last checkpointed step so records are not
duplicated.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from fedrec.errors import ConfigError, FedRecError

log = logging.getLogger("fedrec")


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temp file that then replaces ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda fh: fh.write(text), "w")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load a checkpoint without executing anything from it.

    ``torch.load(weights_only=True)``: only tensors and plain Python/numeric containers are
    rebuilt; a pickle that names any other callable (a planted ``checkpoint.pt`` on a shared
    filesystem) is refused.

    Raises
    ------
    FedRecError
        One line naming the file: unreadable, or holding objects a checkpoint may not hold.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file must be reported, not crash deep
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
        if found:
            raise FedRecError(f"{path}: refused to load: the checkpoint names {found.group(1)}, "
                              "and a checkpoint may hold only tensors and plain data") from None
        raise FedRecError(f"{path}: unreadable checkpoint (not a checkpoint of tensors and plain "
                          f"data: {type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise FedRecError(f"{path}: not a fedrec checkpoint (expected a mapping)")
    return state


class RunDir:
    """A run directory (see module docstring).

    Parameters
    ----------
    path : str or Path
        The directory (created if needed).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise FedRecError(f"{self.path}: cannot use as a run directory "
                              f"({exc.strerror or type(exc).__name__})") from None

    @property
    def metrics_path(self) -> Path:
        """Path of the metrics log."""
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        """Path of the checkpoint."""
        return self.path / "checkpoint.pt"

    @property
    def summary_path(self) -> Path:
        """Path of the summary."""
        return self.path / "summary.json"

    def is_finished(self) -> bool:
        """True when a summary was written."""
        return self.summary_path.is_file()

    def has_content(self) -> bool:
        """True when anything but the config was written."""
        return any(p.name != "config.yaml" for p in self.path.iterdir())

    def has_started(self) -> bool:
        """True once the run computed something: a metrics record, a checkpoint or a summary."""
        return self.is_finished() or self.checkpoint_path.is_file() or bool(self.read_metrics())

    def clear(self) -> None:
        """Remove the files of a run that never started (config, error, log, empty metrics)."""
        for name in ("config.yaml", "error.txt", "run.log", "metrics.jsonl"):
            (self.path / name).unlink(missing_ok=True)

    def read_config(self) -> dict[str, Any] | None:
        """The stored resolved config as a plain mapping (read with ``yaml.safe_load``)."""
        path = self.path / "config.yaml"
        if not path.is_file():
            return None
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raise FedRecError(f"{path}: unreadable stored config") from None
        return raw if isinstance(raw, dict) else None

    def write_config(self, text: str) -> None:
        """Store the resolved config."""
        atomic_write_text(self.path / "config.yaml", text)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record to the metrics log (flushed and fsync'ed)."""
        line = json.dumps(_jsonable(record), sort_keys=True)
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete records of the metrics log (a torn last line is ignored)."""
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records with ``step <= last_step`` (used when resuming)."""
        kept = [r for r in self.read_metrics() if r.get("step", -1) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Atomically save the training state."""
        atomic_write(self.checkpoint_path, lambda fh: torch.save(state, fh), "wb")

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The saved training state, or None."""
        if not self.checkpoint_path.is_file():
            return None
        return load_checkpoint_file(self.checkpoint_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Atomically write the summary (marks the run finished)."""
        atomic_write_text(self.summary_path, json.dumps(_jsonable(summary), indent=2, sort_keys=True))

    def read_summary(self) -> dict[str, Any] | None:
        """The summary, or None if the run is not finished."""
        if not self.summary_path.is_file():
            return None
        return json.loads(self.summary_path.read_text(encoding="utf-8"))

    def write_error(self, message: str) -> None:
        """Record why the run failed."""
        atomic_write_text(self.path / "error.txt", message + "\n")


# ----------------------------------------------------------------------------- resume policy

#: keys that change only speed, where output goes, or where the shared data directory is mounted
#: (``data.root``: the dataset itself is named by ``data.name``; a run moved to another machine, or
#: the Flower engine, which makes the root absolute for its workers, sees another path): they may
#: differ on ``--resume``
RESUME_FREE_KEYS = ("name", "output_dir", "threads", "eval.batch_users", "federation.ray_address",
                    "federation.cpus_per_client", "federation.checkpoint_every", "data.root")
#: step counts ``--resume`` may raise: the run continues up to the new count (the schedule, the
#: learning-rate steps and the data order of the first steps do not depend on the total)
RESUME_EXTENDABLE_KEYS = ("train.epochs", "federation.epochs", "federation.rounds")


def flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars are leaves)."""
    if not isinstance(raw, dict):
        return {prefix: raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two raw configs: ``key -> (old, new)``."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resume_extensions(stored: dict[str, Any], new: dict[str, Any], where: Path) -> list[str]:
    """Check that ``new`` may continue the run whose config is ``stored``.

    Returns
    -------
    list of str
        ``key: old -> new`` for each raised step count (empty when nothing is extended).

    Raises
    ------
    ConfigError
        One line naming the keys that differ and may not (anything that changes what was
        computed, or a step count that shrinks).
    """
    changes = config_changes(stored, new)
    extended, refused = [], []
    for key, (old, cur) in changes.items():
        if key in RESUME_FREE_KEYS:
            continue
        if (key in RESUME_EXTENDABLE_KEYS and isinstance(old, int) and isinstance(cur, int)
                and cur > old):
            extended.append(f"{key}: {old} -> {cur}")
        else:
            refused.append(f"{key} ({old!r} -> {cur!r})")
    if refused:
        shown = ", ".join(refused[:6]) + (f" and {len(refused) - 6} more" if len(refused) > 6 else "")
        raise ConfigError(f"{where}: --resume with a config that differs from the run's config.yaml "
                          f"in {shown}; only {', '.join(RESUME_EXTENDABLE_KEYS)} may grow; use "
                          "another run directory or --overwrite")
    return extended


def open_run_dir(path: str | Path, config: dict[str, Any], config_text: str, *, resume: bool,
                 overwrite: bool = False) -> tuple[RunDir, dict[str, Any] | None]:
    """Open a run directory for a run of ``config`` and say whether there is anything to do.

    * ``overwrite``: the directory is deleted first.
    * A directory whose run never started (failed before its first step, e.g. a bad name)
      is cleared and reused without a flag.
    * A started run needs ``resume``; the stored config must then equal ``config`` up to
      :data:`RESUME_FREE_KEYS`, and the step counts of :data:`RESUME_EXTENDABLE_KEYS` may grow
      (a finished run is then continued, its summary removed).
    * ``resume`` of a finished run with the same config returns its summary.

    Returns
    -------
    (RunDir, dict or None)
        The run directory (config written) and, when the run is already finished, its summary.

    Raises
    ------
    ConfigError
        A started run without ``resume``, or a config that may not continue it.
    """
    path = Path(path)
    if overwrite and path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path}: not a directory")
        shutil.rmtree(path)
    run = RunDir(path)
    if not run.has_started():
        run.clear()
    elif not resume:
        raise ConfigError(f"{path}: run directory already holds a run; pass --resume to continue "
                          "it or --overwrite to start over")
    else:
        stored = run.read_config()
        extended = resume_extensions(stored, config, path) if stored is not None else []
        if run.is_finished():
            if not extended:
                log.warning("%s: the run is already finished; its summary is returned as is", path)
                return run, run.read_summary() or {}
            run.summary_path.unlink()
        if extended:
            log.warning("%s: continuing the run with %s", path, "; ".join(extended))
        (run.path / "error.txt").unlink(missing_ok=True)
    run.write_config(config_text)
    return run, None
