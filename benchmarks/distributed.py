"""Seconds per round of the distributed engine (Ray actors) vs the single-process local engine.

Workload: FedSGD (or, with ``--protocol fedavg``, FedAvg) rounds of 256 clients on synthetic
data (``--users`` users, ``--items`` items,
fedrec's generator), SASRec (hidden 64, 2 blocks, max_len 50, dropout 0), Krum (f=25) with
row-sparse item updates (``federation.item_updates: sparse``), 5% attackers (``random``).
Engines: ``local`` (one process), ``distributed`` with 1 and 2 workers on a fresh local Ray
instance (``ray_address: local``, one CPU and one torch thread per actor); the driver runs
with one torch thread.

Method: for each engine, one warm-up round (it also starts Ray and the actors), then
``--rounds`` timed rounds (``time.perf_counter`` around ``train_step``); the time spent
producing the benign clients' updates (``benign_updates``: in-process compute, or sharding +
actor compute + transfer) is timed separately, the rest is the driver's share (attackers,
merge, server pipeline). Medians over the timed rounds.

Projection to N nodes (printed as such, not measured): with ``C`` the local engine's
client-compute time, ``O`` the sharding/transfer overhead measured with 1 worker (its client
time minus ``C``), and ``S`` the driver's share, a round on N single-CPU workers takes about
``S + O + C / N`` (the shards are equal, the server does not shrink).

Usage::

    python benchmarks/distributed.py                   # local, 1 and 2 workers
    python benchmarks/distributed.py --rounds 2 --users 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# benchmarks/defenses.py is named like the ``defenses`` package; drop this folder from the
# import path so that the packages are found.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _config(users: int, items: int, engine: str, workers: int, protocol: str = "fedsgd",
            local_epochs: int = 1):
    from fedrec.config import load_config

    return load_config(base={
        "mode": "federated",
        "data": {"name": "synthetic", "synthetic": {"n_users": users, "n_items": items,
                                                    "max_len": 60, "mean_len": 25}},
        "model": {"name": "sasrec", "hidden": 64, "blocks": 2, "max_len": 50, "dropout": 0.0},
        "federation": {"protocol": protocol, "local_epochs": local_epochs, "local_lr": 0.05,
                       "epochs": 1, "clients_per_round": 256,
                       "server_lr": 0.05, "engine": engine, "workers": workers,
                       "ray_address": "local", "item_updates": "sparse"},
        "defense": {"name": "krum", "params": {"f": 25}},
        "attack": {"name": "random", "fraction": 0.05},
        "eval": {"n_negatives": 10},
    })


def _measure(users: int, items: int, engine: str, workers: int, rounds: int,
             protocol: str = "fedsgd", local_epochs: int = 1) -> dict:
    import torch

    from fedrec.engine.context import RunContext
    from fedrec.engine.distributed import DistributedTrainer
    from fedrec.runner import build_trainer

    torch.set_num_threads(1)
    cfg = _config(users, items, engine, workers, protocol, local_epochs)
    trainer = build_trainer(cfg, RunContext.build(cfg))
    client_time: list[float] = []
    inner = trainer.benign_updates

    def timed(*args, **kw):
        t0 = time.perf_counter()
        out = inner(*args, **kw)
        client_time.append(time.perf_counter() - t0)
        return out

    trainer.benign_updates = timed
    totals: list[float] = []
    try:
        for step in range(rounds + 1):
            t0 = time.perf_counter()
            trainer.train_step(step)
            totals.append(time.perf_counter() - t0)
    finally:
        if isinstance(trainer, DistributedTrainer):
            trainer.close()
    total, clients = totals[1:], client_time[1:]
    return {"engine": engine, "workers": workers if engine == "distributed" else 1,
            "round_s": statistics.median(total), "round_min": min(total),
            "round_max": max(total), "clients_s": statistics.median(clients),
            "driver_s": statistics.median(t - c for t, c in zip(total, clients, strict=True)),
            "params": {n: p.clone() for n, p in trainer.params.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=4096)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after 1 warm-up)")
    ap.add_argument("--nodes", default="4,8,16", help="N of the projection rows")
    ap.add_argument("--protocol", default="fedsgd", choices=["fedsgd", "fedavg"])
    ap.add_argument("--local-epochs", type=int, default=1, help="FedAvg local epochs")
    args = ap.parse_args()
    runs = [("local", 1), ("distributed", 1), ("distributed", 2)]
    results = []
    load0 = os.getloadavg()
    for engine, workers in runs:
        results.append(_measure(args.users, args.items, engine, workers, args.rounds,
                                args.protocol, args.local_epochs))
        print(f"  done {engine} x{workers}: {results[-1]['round_s']:.2f} s/round",
              file=sys.stderr, flush=True)
    import torch

    ref = results[0]["params"]
    for r in results[1:]:
        r["max_diff"] = max(float((r["params"][n] - v).abs().max()) for n, v in ref.items())
    proto = ("FedSGD" if args.protocol == "fedsgd"
             else f"FedAvg ({args.local_epochs} local epochs)")
    print(f"# {proto} rounds of 256 clients, synthetic {args.users} users x {args.items} items, "
          f"SASRec d=64, Krum f=25, sparse item rows, 5% attackers; median of {args.rounds} "
          f"rounds after 1 warm-up; torch {torch.__version__}")
    print(f"# cpu: {os.cpu_count()} cores; load average at start "
          f"{' '.join(f'{x:.1f}' for x in load0)}, at end "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| engine | workers | s / round (median) | min–max s | client updates s | "
          "driver s | max abs diff of params vs local |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        diff = f"{r['max_diff']:.1e}" if "max_diff" in r else "—"
        print(f"| {r['engine']} | {r['workers']} | {r['round_s']:.2f} | "
              f"{r['round_min']:.2f}–{r['round_max']:.2f} | {r['clients_s']:.2f} | "
              f"{r['driver_s']:.2f} | {diff} |")
    local, one = results[0], results[1]
    c, o = local["clients_s"], max(0.0, one["clients_s"] - local["clients_s"])
    s = statistics.median(r["driver_s"] for r in results[1:])
    print()
    print(f"Projection (not measured): S + O + C/N with C = {c:.2f} s (local client compute), "
          f"O = {o:.2f} s (sharding/transfer, 1 worker), S = {s:.2f} s (driver share)")
    print()
    print("| nodes N | projected s / round | projected speed-up vs local |")
    print("|---:|---:|---:|")
    for n in [int(x) for x in args.nodes.split(",") if x]:
        t = s + o + c / n
        print(f"| {n} | {t:.2f} | {local['round_s'] / t:.1f}x |")
    print(json.dumps({"rows": [{k: v for k, v in r.items() if k != "params"}
                               for r in results]}), file=sys.stderr)


if __name__ == "__main__":
    main()
