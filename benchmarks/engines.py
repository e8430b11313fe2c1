"""Throughput and memory of the federated engines (FedSGD rounds of 256 clients).

Variants, each measured in a fresh subprocess (so peak RSS is its own):

* ``a``   local engine, sum aggregation: one batched forward/backward per round
* ``a2``  local engine with per-client updates materialised (``torch.func.vmap``), as robust
          rules need, then the server pipeline with ``mean`` on the stacked updates
* ``b``   naive per-client loop: deep-copy the model per client and backpropagate each, every
          sequence left-padded to max_len (how the public DV-FSR reference code works)
* ``b1``  the same loop without the padding (each client at its own length): a stronger naive
          baseline
* ``c``   Flower simulation engine on a fresh local Ray instance (steady-state rounds; start-up
          reported separately), one supernode per client
* ``c2``  the same with partition nodes: ``federation.flower_nodes`` = the CPUs Ray gets (one
          node per CPU, ``cpus_per_client: 1``), each computing its share of a round batched
* ``a0``  ``a`` with glibc's default malloc thresholds (``FEDREC_MALLOC_TUNING=0``; see
          ``fedrec/allocator.py``), to show what returning freed memory to the OS each round costs
* ``a2s``, ``c2s``  ``a2`` and ``c2`` with ``federation.item_updates: sparse`` (each client's
          item-table update as the rows it touched, as robust rules can take it)
* ``f``   the floor: one plain batched forward/backward over the same 256 sequences

Also times a full FedSGD epoch over all clients with ``a``. In-process variants also report the
CPU seconds (user + system) and minor page faults of the median round.

``--device cuda`` (the GPU column) runs every variant with ``device: cuda``: the model and
batches on the GPU, timings taken after ``torch.cuda.synchronize()``.

Usage::

    python benchmarks/engines.py --datasets steam ml-1m --rounds 3
    python benchmarks/engines.py --datasets steam ml-1m --rounds 3 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


DEVICE = "cpu"  # set by --device (passed on to the child processes)


def experiment(dataset: str, engine: str = "local", rounds: int | None = None, epochs: int = 1,
               item_updates: str = "dense") -> dict:
    """The DV-FSR-like setting: SASRec d=64, 2 blocks, 2 heads, max_len 200, FedSGD, 256/round."""
    fed = {"protocol": "fedsgd", "clients_per_round": 256, "server_lr": 1e-3, "engine": engine,
           "eval_every": 1000, "item_updates": item_updates}
    if rounds is not None:
        fed.update(rounds=rounds, epochs=None)
    else:
        fed.update(epochs=epochs)
    return {"mode": "federated", "name": f"bench-{dataset}", "device": DEVICE,
            "data": {"name": dataset},
            "model": {"name": "sasrec", "hidden": 64, "blocks": 2, "heads": 2, "dropout": 0.1,
                      "max_len": 200},
            "federation": fed, "defense": {"name": "sum"}, "attack": {"name": "none"},
            "eval": {"n_negatives": 100}}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def clock() -> float:
    """``time.perf_counter()`` after the GPU's queued work is done (when on a GPU)."""
    import torch

    if DEVICE != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def pad_to_max_len(batch: dict, width: int) -> dict:
    """Left-pad every per-position tensor of a one-sequence batch with 0 to ``width``."""
    import torch.nn.functional as F

    out = {}
    for key, value in batch.items():
        missing = width - value.shape[1]
        pad = [0, 0] * (value.dim() - 2) + [missing, 0]
        out[key] = F.pad(value, pad) if missing > 0 else value
    return out


def child(variant: str, dataset: str, rounds: int) -> dict:
    from fedrec.device import device_scope

    with device_scope(DEVICE):
        return _child(variant, dataset, rounds)


def _child(variant: str, dataset: str, rounds: int) -> dict:
    import numpy as np
    import torch

    from clients.update import RoundConfig, batched_updates, num_examples
    from fedrec.config import load_config
    from fedrec.data.random import stream_key
    from fedrec.engine.context import RunContext
    from fedrec.engine.federated import FederatedTrainer
    from fedrec.engine.federation import Federation, build_aggregator

    cfg = load_config(base=experiment(dataset))
    ctx = RunContext.build(cfg)
    fed = Federation.build(ctx)
    model = ctx.model
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    sched = fed.schedule
    times, cpus, faults = [], [], []
    if variant == "epoch":
        tr = FederatedTrainer(fed, build_aggregator(cfg, model.item_param_names))
        t0 = clock()
        for step in range(sched.rounds_per_epoch):
            tr.train_step(step)
        return {"epoch_s": clock() - t0, "rounds": sched.rounds_per_epoch,
                "clients": len(fed.threat.participants()), "peak_mb": peak_mb()}
    for r in range(rounds + 1):  # round 0 is warm-up
        ids = sched.clients(r)
        seqs = [ctx.split.train[int(c)] for c in ids]
        rc = RoundConfig(round=r, epoch=0, seed=cfg.seed)
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = clock()
        if variant in ("a", "a0"):
            tr = FederatedTrainer(fed, build_aggregator(cfg, model.item_param_names)) if r == 0 else tr
            tr.train_step(r)
        elif variant in ("a2", "a2s"):
            stacked, _ = batched_updates(model, params, seqs, ids, rc, chunk_size=64,
                                         sparse_items=variant == "a2s")
            agg = build_aggregator(load_config(base={**experiment(dataset), "defense": {"name": "mean"}}),
                                   model.item_param_names)
            w = torch.tensor([num_examples(s) for s in seqs], dtype=torch.float64)
            agg.round(params, stacked, w, ids, r, 0)
        elif variant in ("b", "b1"):
            total = {n: torch.zeros_like(p) for n, p in params.items()}
            for cid, seq in zip(ids, seqs):
                local = copy.deepcopy(model)
                local.train()
                batch = local.prepare_batch([seq], stream_key(cfg.seed, r, np.array([cid]), 0))
                if variant == "b":  # the reference pads every client's sequence to max_len
                    batch = pad_to_max_len(batch, model.max_len)
                local.zero_grad()
                local(batch)[0].backward()
                for n, p in local.named_parameters():
                    total[n] += p.grad
        elif variant == "f":
            model.train()
            batch = model.prepare_batch(seqs, stream_key(cfg.seed, r, ids, 0))
            model.zero_grad()
            model.loss(batch).backward()
        times.append(clock() - t0)
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        cpus.append(u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime)
        faults.append(u1.ru_minflt - u0.ru_minflt)
    med = statistics.median(times[1:])
    return {"round_s": med, "updates_per_s": 256 / med, "peak_mb": peak_mb(),
            "cpu_s": statistics.median(cpus[1:]), "minflt": statistics.median(faults[1:]),
            "width": int(max(min(len(s), 200) for s in seqs))}


def flower(dataset: str, rounds: int, nodes: int | None = None, item_updates: str = "dense") -> dict:
    """Variant ``c`` (``nodes`` None: one supernode per client) or ``c2``/``c2s`` (``nodes``
    partition nodes of one CPU each; ``c2s`` with row-sparse item updates)."""
    import tempfile

    from fedrec.config import load_config
    from fedrec.results import RunDir
    from fedrec.runner import run_experiment

    raw = experiment(dataset, engine="flower", rounds=rounds + 1, item_updates=item_updates)
    if nodes is not None:
        raw["federation"].update(flower_nodes=nodes, cpus_per_client=1)
    cfg = load_config(base=raw)
    out = Path(tempfile.mkdtemp()) / "run"
    t0 = time.perf_counter()
    run_experiment(cfg, out, progress=False)
    total = time.perf_counter() - t0
    secs = [r["seconds"] for r in RunDir(out).read_metrics()]
    med = statistics.median(secs[1:])
    return {"round_s": med, "updates_per_s": 256 / med, "first_round_s": secs[0],
            "total_s": total, "peak_mb": peak_mb()}


def run_child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if args[0] == "a0":
        env["FEDREC_MALLOC_TUNING"] = "0"
    out = subprocess.run([sys.executable, __file__, "--device", DEVICE, "--child", *args],
                         capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["steam", "ml-1m"])
    ap.add_argument("--variants", nargs="+",
                    default=["f", "a", "a0", "a2", "a2s", "b", "b1", "c", "c2", "c2s", "epoch"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "DATASET", "ROUNDS"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.child:
        variant, dataset, rounds = args.child
        if variant == "c":
            res = flower(dataset, int(rounds))
        elif variant in ("c2", "c2s"):  # one partition node per CPU of the local Ray instance
            res = {**flower(dataset, int(rounds), nodes=os.cpu_count() or 1,
                            item_updates="sparse" if variant == "c2s" else "dense"),
                   "nodes": os.cpu_count() or 1}
        else:
            res = child(variant, dataset, int(rounds))
        print(json.dumps(res))
        return
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  load {load}  "
          f"device {DEVICE}", flush=True)
    rows = []
    for ds in args.datasets:
        res = {v: run_child([v, ds, str(args.rounds)]) for v in args.variants}
        floor = res.get("f", {}).get("round_s")
        for v in args.variants:
            r = res[v]
            row = {"dataset": ds, "variant": v, **r}
            if floor and "round_s" in r:
                row["x_floor"] = r["round_s"] / floor
            rows.append(row)
        for other in ("a0", "b", "b1", "c", "c2", "c2s"):
            if "round_s" in res.get("a", {}) and "round_s" in res.get(other, {}):
                rows.append({"dataset": ds, "variant": f"a vs {other}",
                             "speedup": res[other]["round_s"] / res["a"]["round_s"]})
    import pandas as pd

    df = pd.DataFrame(rows)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
