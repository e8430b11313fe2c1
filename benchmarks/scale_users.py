"""Seconds per FedSGD epoch and peak RSS as the number of clients grows (10^4 .. 10^6).

Synthetic users (``generator: vectorized``) over a fixed catalog, SASRec (d 64, 2 blocks,
2 heads, max_len 50), FedSGD rounds of 256 clients, sum rule, no attack. Each size runs in a
fresh subprocess so its peak RSS is its own. Reported per size:

* ``setup``: data generation, leave-one-out split, threat model and schedule (seconds);
* ``rounds``: rounds timed (a full epoch where ``--epoch-max`` allows, else ``--rounds``);
* ``s/round`` and ``µs/token`` (a token is one training position: ``min(len, max_len)``
  summed over the round's clients), and ``epoch s``: measured when the whole epoch ran, else
  ``rounds_per_epoch × mean s/round`` (marked ``extrapolated``);
* ``CPU µs/token``: the same in process CPU time (one torch thread), the cost measure that
  holds on a shared machine where wall time follows the load;
* ``eval s``: one test evaluation (full ranking + 100 sampled negatives) of ``--eval-users``
  users drawn with ``eval.users``;
* ``RSS setup`` / ``RSS peak``: peak resident memory after setup and at the end (MB).

Usage::

    python benchmarks/scale_users.py --users 10000 100000 1000000
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


def experiment(n_users: int, n_items: int, eval_users: int, device: str = "cpu") -> dict:
    """The benchmark's config for ``n_users`` synthetic users."""
    return {"mode": "federated", "name": f"scale-{n_users}", "device": device,
            "data": {"synthetic": {"n_users": n_users, "n_items": n_items,
                                   "generator": "vectorized"}},
            "model": {"name": "sasrec", "hidden": 64, "blocks": 2, "heads": 2, "dropout": 0.1,
                      "max_len": 50},
            "federation": {"protocol": "fedsgd", "clients_per_round": 256, "server_lr": 1e-3,
                           "epochs": 1},
            "defense": {"name": "sum"}, "attack": {"name": "none"},
            "eval": {"n_negatives": 100, "users": eval_users}}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(n_users: int, n_items: int, rounds: int, epoch_max: int, eval_users: int,
          device: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from fedrec.config import load_config
    from fedrec.engine.context import RunContext
    from fedrec.engine.federated import FederatedTrainer
    from fedrec.engine.federation import Federation, build_aggregator

    cfg = load_config(base=experiment(n_users, n_items, eval_users, device))
    t0 = time.perf_counter()
    ctx = RunContext.build(cfg)
    fed = Federation.build(ctx)
    trainer = FederatedTrainer(fed, build_aggregator(cfg, ctx.model.item_param_names))
    setup = time.perf_counter() - t0
    rss_setup = peak_mb()
    sched = fed.schedule
    n_rounds = sched.rounds_per_epoch if sched.rounds_per_epoch <= epoch_max else rounds
    max_len = ctx.model.max_len
    tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(n_rounds):
        ids = sched.clients(step)
        tokens += sum(min(len(ctx.split.train[int(c)]), max_len) for c in ids)
        trainer.train_step(step)
    train, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    metrics = trainer.evaluate("test")
    ev = time.perf_counter() - t0
    return {"users": n_users, "interactions": int(sum(len(s) for s in ctx.split.train)),
            "setup_s": setup, "rounds": n_rounds, "rounds_per_epoch": sched.rounds_per_epoch,
            "train_s": train, "train_cpu_s": train_cpu, "tokens": tokens, "eval_s": ev,
            "eval_users": metrics.get("eval_users"), "rss_setup_mb": rss_setup,
            "peak_mb": peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=40, help="rounds timed when not a whole epoch")
    ap.add_argument("--epoch-max", type=int, default=400,
                    help="run the whole epoch when it has at most this many rounds")
    ap.add_argument("--eval-users", type=int, default=10_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child(args.users[0], args.items, args.rounds, args.epoch_max, args.eval_users,
                    args.device)
        print(json.dumps(res))
        return
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  load {load}  "
          f"items {args.items}  device {args.device}", flush=True)
    print("| users | interactions | setup s | rounds | s/round | µs/token | CPU µs/token | epoch s "
          "| eval s (users) | RSS setup MB | RSS peak MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.users:
        cmd = [sys.executable, __file__, "--child", "--users", str(n), "--items",
               str(args.items), "--rounds", str(args.rounds), "--epoch-max", str(args.epoch_max),
               "--eval-users", str(args.eval_users), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode != 0:
            print(f"| {n} | failed: {out.stderr.strip().splitlines()[-1]} |", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per_round = r["train_s"] / r["rounds"]
        whole = r["rounds"] == r["rounds_per_epoch"]
        epoch = (f"{r['train_s']:.1f}" if whole else
                 f"{per_round * r['rounds_per_epoch']:.0f} (extrapolated: "
                 f"{r['rounds_per_epoch']} × {per_round:.3f})")
        print(f"| {n} | {r['interactions']} | {r['setup_s']:.1f} | {r['rounds']} | "
              f"{per_round:.3f} | {1e6 * r['train_s'] / r['tokens']:.1f} | "
              f"{1e6 * r['train_cpu_s'] / r['tokens']:.1f} | {epoch} | "
              f"{r['eval_s']:.1f} ({r['eval_users']:.0f}) | {r['rss_setup_mb']:.0f} | "
              f"{r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
