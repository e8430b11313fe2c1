"""Seconds and peak memory of one FedSGD round as the item catalog grows: dense vs sparse rows.

Workload: one FedSGD round of 256 clients of SASRec (hidden 64, 2 blocks, max_len 50, BCE with
one sampled negative) on a synthetic catalog of ``n_items`` items: client update
(:func:`clients.update.batched_updates`) then the server pipeline
(:class:`strategies.server.ServerAggregator`: validation, the rule, SGD step). Each client holds
one sequence of 10–50 items drawn from a Zipf(1.1) popularity over the catalog (numpy, seeded;
not the fedrec synthetic generator, so that only the round is measured). Rules: Krum (f=25) and
item-wise median. Two item-table layouts: ``dense`` (every client's full ``[n_items + 1, 64]``
table stacked, the engine's ``federation.item_updates: dense``) and ``sparse`` (the rows each
client touched, :class:`fedrec.rowsparse.RowSparse`, ``item_updates: sparse``).

Method: every (catalog, rule, layout) runs in a fresh subprocess with one torch thread. After
building the model, the global parameters and the clients' sequences, the kernel's RSS
high-water mark is reset (``5`` to ``/proc/self/clear_refs``); then one warm-up round and
``--repeats`` timed rounds (rounds 0, 1, ... each with its own negatives) run. Seconds = median
wall time of the timed rounds; peak RSS = ``VmHWM`` over all rounds (absolute, MiB), and the
same minus the RSS before the rounds ("round extra"). A dense run whose stacked tables alone
would exceed ``--dense-max-gb`` is not run; the table says how large that stack would be
(``256 * (n_items + 1) * 64 * 4`` bytes, arithmetic, not a measurement).

Usage::

    python benchmarks/scale_items.py                         # the full table
    python benchmarks/scale_items.py --items 10000 --repeats 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

from common import status_kib

# benchmarks/defenses.py is named like the ``defenses`` package; drop this folder from the
# import path so that ``import defenses`` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

N_CLIENTS = 256
HIDDEN = 64
MAX_LEN = 50
RULES: dict[str, tuple[str, dict]] = {
    "krum(f=25)": ("krum", {"f": 25}),
    "itemwise_median": ("itemwise_median", {}),
}
LAYOUTS = ("dense", "sparse")


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _sequences(n_items: int, seed: int = 0) -> list:
    import numpy as np

    rng = np.random.default_rng([seed, n_items])
    lengths = rng.integers(10, MAX_LEN + 1, size=N_CLIENTS)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    perm = rng.permutation(n_items) + 1  # popularity rank -> item id (1..n_items)
    return [perm[rng.choice(n_items, size=int(k), p=p)].astype(np.int64) for k in lengths]


def _worker(n_items: int, rule_label: str, layout: str, repeats: int) -> None:
    import numpy as np
    import torch

    from clients.update import RoundConfig, batched_updates, num_examples
    from defenses import build_defense
    from fedrec.models import build_model
    from fedrec.rowsparse import RowSparse
    from strategies.optimizer import ServerOptimizer
    from strategies.server import ServerAggregator

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("sasrec", n_items, max_len=MAX_LEN, hidden=HIDDEN, blocks=2,
                        dropout=0.2)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    seqs = _sequences(n_items)
    ids = np.arange(N_CLIENTS)
    weights = torch.tensor([num_examples(s) for s in seqs], dtype=torch.float64)
    name, kw = RULES[rule_label]
    agg = ServerAggregator(build_defense(name, kw), ServerOptimizer("sgd", 1e-3), "fedsgd",
                           tuple(model.item_param_names), seed=0)
    gc.collect()
    rss0 = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    times, nnz = [], 0
    for r in range(repeats + 1):
        rc = RoundConfig(round=r, epoch=0, protocol="fedsgd", seed=0)
        t0 = time.perf_counter()
        stacked, _ = batched_updates(model, params, seqs, ids, rc, chunk_size=64,
                                     sparse_items=layout == "sparse")
        new, report = agg.round(params, stacked, weights, ids, r, 0)
        dt = time.perf_counter() - t0
        table = stacked["item_emb.weight"]
        nnz = table.nnz if isinstance(table, RowSparse) else int(
            (torch.linalg.vector_norm(table, ord=1, dim=2) > 0).sum())
        del stacked, new, table
        gc.collect()
        if r > 0:
            times.append(dt)
    peak = status_kib("VmHWM")
    print(json.dumps({
        "items": n_items, "rule": rule_label, "layout": layout,
        "seconds": statistics.median(times), "seconds_min": min(times),
        "seconds_max": max(times), "peak_mib": peak / 1024, "setup_mib": rss0 / 1024,
        "extra_mib": (peak - rss0) / 1024, "touched_rows": nnz,
        "table_mib": (n_items + 1) * HIDDEN * 4 / 2**20, "kept": int(report.kept.sum()),
        "threads": torch.get_num_threads(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", default="10000,100000,1000000", help="comma-separated catalogs")
    ap.add_argument("--rules", default=",".join(RULES), help="comma-separated rule labels")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per cell (median)")
    ap.add_argument("--dense-max-gb", type=float, default=2.0,
                    help="skip dense runs whose stacked item tables alone exceed this (GB)")
    ap.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(int(args.worker[0]), args.worker[1], args.worker[2], args.repeats)
        return
    catalogs = [int(x) for x in args.items.split(",") if x]
    labels = [r for r in args.rules.split(",") if r]
    unknown = [r for r in labels if r not in RULES]
    if unknown:
        sys.exit(f"--rules: unknown {unknown}; valid: {', '.join(RULES)}")
    print(f"# one FedSGD round of {N_CLIENTS} clients, SASRec d={HIDDEN} 2 blocks max_len="
          f"{MAX_LEN} BCE; median of {args.repeats} timed rounds after 1 warm-up; 1 torch thread")
    print(f"# cpu: {_cpu_model()}, {os.cpu_count()} cores; load average at start: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = []
    for n_items in catalogs:
        for label in labels:
            for layout in LAYOUTS:
                stack_gb = N_CLIENTS * (n_items + 1) * HIDDEN * 4 / 1e9
                if layout == "dense" and stack_gb > args.dense_max_gb:
                    rows.append({"items": n_items, "rule": label, "layout": layout,
                                 "skipped": f"not run: the dense stack alone is "
                                            f"{stack_gb:.1f} GB"})
                    continue
                proc = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", str(n_items), label,
                     layout, "--repeats", str(args.repeats)],
                    capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    tail = proc.stderr.strip().splitlines()[-1:] or ["no stderr"]
                    rows.append({"items": n_items, "rule": label, "layout": layout,
                                 "skipped": f"failed (exit {proc.returncode}): {tail[0]}"})
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(res)
                print(f"  done {n_items} {label} {layout}: {res['seconds']:.2f} s, "
                      f"peak {res['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    print(f"# load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| items | rule | layout | s / round (median) | min–max s | peak RSS MiB | "
          "round extra MiB | one item table MiB | touched rows | kept |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['items']:,} | {r['rule']} | {r['layout']} | {r['skipped']} | | | | | | |")
            continue
        print(f"| {r['items']:,} | {r['rule']} | {r['layout']} | {r['seconds']:.2f} | "
              f"{r['seconds_min']:.2f}–{r['seconds_max']:.2f} | {r['peak_mib']:.0f} | "
              f"{r['extra_mib']:.0f} | {r['table_mib']:.1f} | {r['touched_rows']:,} | "
              f"{r['kept']} |")


if __name__ == "__main__":
    main()
