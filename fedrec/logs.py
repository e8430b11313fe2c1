"""Logging set-up: quiet by default, ``-v`` for detail; Flower and Ray noise suppressed."""

from __future__ import annotations

import logging
import os
import warnings


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
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False
    if verbose:
        logging.getLogger("flwr").setLevel(logging.INFO)
