"""Helpers the benchmark scripts share: one ``fedrec run`` in a subprocess, ``mean ± std``
cells, and the process's memory counters.

The scripts are run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and
they import it as ``common``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def fedrec_run(config: str | Path, out: Path, sets: Sequence[str]) -> Path:
    """Run ``fedrec run config --out out --resume`` with ``--set`` for each of ``sets`` in its
    own process (so its ``peak_rss_mb`` is its own; an interrupted run resumes, a finished one
    is left as is); its run directory.

    Raises
    ------
    SystemExit
        The run failed: the command and the tail of its stderr.
    """
    cmd = [sys.executable, "-m", "fedrec.cli", "run", str(config), "--out", str(out),
           "--resume", "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}")
    return out


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` (population std over seeds); ``—`` for no value."""
    if len(values) == 0:
        return "—"
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` counter in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
