"""Seconds and peak RSS of the synthetic generator as users or items grow.

Each cell runs in a fresh subprocess (so its peak RSS is its own); a cell that passes
``--budget`` seconds is killed and printed as ``> budget`` (never a made-up number). The
sequential generator (the default, historical draws) is only run on the smaller sizes.

Usage::

    python benchmarks/synthetic.py --users 10000 100000 1000000 --items 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child(generator: str, n_users: int, n_items: int) -> None:
    from fedrec.data.synthetic import generate

    t0, c0 = time.perf_counter(), time.process_time()
    ds = generate(generator=generator, n_users=n_users, n_items=n_items)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": sec, "cpu_s": cpu, "peak_mb": rss,
                      "interactions": ds.n_interactions}))


def run_cell(generator: str, n_users: int, n_items: int, budget: float) -> dict | None:
    """One generation in a subprocess; None when it ran past ``budget`` seconds."""
    cmd = [sys.executable, __file__, "--child", generator, str(n_users), str(n_items)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, check=True)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--items", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--sequential-max", type=int, default=100_000,
                    help="largest size the sequential generator is run at")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per cell")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    cells = [(u, 500) for u in args.users] + [(1000, i) for i in args.items]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print("| generator | users | items | interactions | seconds | CPU s | CPU µs / interaction "
          "| peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n_users, n_items in cells:
        for gen in ("sequential", "vectorized"):
            if gen == "sequential" and max(n_users, n_items) > args.sequential_max:
                continue
            r = run_cell(gen, n_users, n_items, args.budget)
            if r is None:
                print(f"| {gen} | {n_users} | {n_items} | | > {args.budget:.0f} | | | |",
                      flush=True)
                continue
            per = 1e6 * r["cpu_s"] / r["interactions"]
            print(f"| {gen} | {n_users} | {n_items} | {r['interactions']} | {r['seconds']:.2f} "
                  f"| {r['cpu_s']:.2f} | {per:.2f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
