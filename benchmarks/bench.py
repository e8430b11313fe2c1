"""Wall time of ``fedrec bench`` on a grid (default: the bundled quickstart), end to end.

What is timed: the CLI command exactly as a user types it (``fedrec bench quickstart --out
<fresh folder>``), in a subprocess, from start to exit: Python start-up and imports, Ray
start-up (a fresh local instance), every cell, the tidy table, the report and its plots. Each
repeat uses a new output folder (nothing to resume) and, with ``--fresh-mpl``, an empty
matplotlib cache (as on a fresh machine, where matplotlib builds its font cache once).

Printed: one row per repeat (total wall time, the time the bench itself reports for the cells,
the rest = start-up + table + report, the median/max wall time of one cell and the peak memory
of one cell from the tidy table), plus the machine (CPU model, cores, load average before and
after: other work on the machine inflates the numbers).

Usage::

    python benchmarks/bench.py                      # quickstart, 1 repeat
    python benchmarks/bench.py --repeat 3 --fresh-mpl
    python benchmarks/bench.py --grid experiments/grids/defenses_synthetic.yaml -- --max-parallel 2
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    """Run the timing and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="quickstart", help="grid file or bundled grid name")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--fresh-mpl", action="store_true", help="empty matplotlib cache per repeat")
    ap.add_argument("extra", nargs="*", help="extra `fedrec bench` arguments (after --)")
    args = ap.parse_args()

    import pandas as pd

    fedrec = shutil.which("fedrec") or f"{sys.executable} -m fedrec.cli"
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="fedrec-bench-") as tmp:
            env = dict(os.environ)
            if args.fresh_mpl:
                env["MPLCONFIGDIR"] = str(Path(tmp) / "mpl")
            out = Path(tmp) / "out"
            cmd = [*fedrec.split(), "bench", args.grid, "--out", str(out), "--no-progress",
                   *args.extra]
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            total = time.perf_counter() - t0
            load_after = os.getloadavg()[0]
            if res.returncode not in (0, 1):
                sys.exit(f"fedrec bench failed ({res.returncode}):\n{res.stdout}{res.stderr}")
            m = re.search(r"(\d+) cells: (\d+) run, \d+ already finished, (\d+) failed; ([\d.]+) s",
                          res.stdout)
            cells_s = float(m.group(4)) if m else float("nan")
            df = pd.read_parquet(out / "results.parquet")
            per_cell = df.drop_duplicates("cell_id")
            rows.append({"repeat": i + 1, "cells": int(m.group(1)) if m else None,
                         "failed": int(m.group(3)) if m else None,
                         "total_s": round(total, 1), "cells_s": round(cells_s, 1),
                         "startup+report_s": round(total - cells_s, 1),
                         "cell_median_s": round(per_cell["wall_time_s"].median(), 1),
                         "cell_max_s": round(per_cell["wall_time_s"].max(), 1),
                         "cell_peak_mb": round(per_cell["peak_memory_mb"].max()),
                         "load_before": round(load_before, 2), "load_after": round(load_after, 2)})
    print(f"# fedrec bench {args.grid} {' '.join(args.extra)}".rstrip())
    print(f"# machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
