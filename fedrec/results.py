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
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedrec.errors import FedRecError


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


class RunDir:
    """A run directory (see module docstring).

    Parameters
    ----------
    path : str or Path
        The directory (created if needed).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

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
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a corrupt file must be reported, not crash deep
            raise FedRecError(f"{self.checkpoint_path}: unreadable checkpoint ({exc})") from None

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
