"""Logging set-up: quiet by default, ``-v`` for detail; Flower and Ray noise suppressed.

Long work reports one line per step on the ``fedrec.progress`` logger. On the console those
lines show when no progress bar is drawn (output is not a terminal, e.g. a log file or a
cluster job); every run also writes them, with warnings and errors, to its ``run.log``
(:func:`log_to_file`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _ProgressBarState:
    """Whether a progress bar is drawn now (then per-step lines stay off the console)."""

    active = False


BAR = _ProgressBarState()


def _console_filter(record: logging.LogRecord) -> bool:
    return not (BAR.active and record.name == "fedrec.progress")


class _StderrHandler(logging.StreamHandler):
    """Console handler writing to the *current* ``sys.stderr`` (which tests and tools swap),
    without per-step progress lines while a progress bar is drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_console_filter)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # set by StreamHandler.__init__; ignored
        pass


@contextmanager
def log_to_file(path: str | Path) -> Iterator[None]:
    """Copy the ``fedrec`` logs (per-step progress lines, warnings, errors) to ``path``.

    Parameters
    ----------
    path : str or Path
        Log file, appended to.
    """
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("fedrec")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def quiet_third_party() -> None:
    """Silence Flower, Ray and their warnings (set before they are imported where possible)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for name in ("flwr", "ray", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")


def setup_logging(verbose: bool = False) -> None:
    """Configure the ``fedrec`` logger (WARNING by default, INFO with ``verbose``)."""
    quiet_third_party()
    level = logging.INFO if verbose else logging.WARNING
    logger = logging.getLogger("fedrec")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False
    logging.getLogger("fedrec.progress").setLevel(logging.INFO)
    if verbose:
        logging.getLogger("flwr").setLevel(logging.INFO)
