"""Benchmark: GradCraft vs equal weighting vs PCGrad vs MGDA on multi-task MovieLens-100K.

GradCraft: Bai et al., "Elevating Multi-task Recommendations through Holistic Gradient
Crafting", KDD 2024, arXiv:2407.19682. Baselines: equal weighting (sum of task gradients),
PCGrad (Yu et al., NeurIPS 2020), MGDA (Sener & Koltun, NeurIPS 2018).

Each (seed, combiner) pair is one :func:`fedrec.baselines.gradcraft.train.train_multitask` run;
for a given seed every combiner sees the same data (negative sampling and split use the seed),
the same initial weights and the same batch order, so per-seed differences are paired. Runs are
interleaved (seed-major) so that load from other processes on a shared machine spreads over all
combiners. Prints a Markdown table (mean ± sample std over seeds) and paired differences.

Usage::

    python benchmarks/gradcraft.py                       # ml-100k, 3 seeds, PLE
    python benchmarks/gradcraft.py --seeds 0 --epochs 2  # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fedrec.baselines.gradcraft.train import MultiTaskConfig, train_multitask

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
COMBINERS = ["gradcraft", "equal_weighting", "pcgrad", "mgda"]


def _fmt(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _micro(args: argparse.Namespace) -> None:
    """Time each combiner alone on a [T, d] gradient matrix the size of the benchmark model.

    Interleaved repetitions and the median make this robust to other load on the machine; it is
    the per-step overhead a combiner adds on top of the T backward passes (which every combiner,
    equal weighting included, pays in :func:`multi_objective_backward`).
    """
    import torch

    from fedrec.baselines.gradcraft.combiners import get_combiner
    from fedrec.baselines.gradcraft.mtl import build_model

    torch.set_num_threads(args.threads)
    n_tasks = len(args.tasks) if args.dataset == "ml-100k" else 3
    vocab = [944, 1683, 7, 2, 21, 10] if args.dataset == "ml-100k" else [500, 1000, 20, 20, 20, 20]
    n_dense = 19 if args.dataset == "ml-100k" else 0
    model = build_model(args.model, vocab, n_tasks, n_dense, args.embedding_dim, args.hidden,
                        args.tower)
    d = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(d, generator=gen)
    grads = torch.stack([(1 if t % 2 == 0 else -1) * 0.3 * common + torch.randn(d, generator=gen)
                         for t in range(n_tasks)]) * torch.logspace(0, -2, n_tasks)[:, None]
    has = torch.ones(n_tasks, d, dtype=torch.bool)
    has[:, d // 2:] = False
    for t in range(n_tasks):
        has[t, d // 2 + t * (d // 2 // n_tasks): d // 2 + (t + 1) * (d // 2 // n_tasks)] = True
    combiners = {c: get_combiner(c) for c in args.combiners}
    times: dict[str, list[float]] = {c: [] for c in combiners}
    for _ in range(args.micro_reps):
        for name, comb in combiners.items():
            t0 = time.perf_counter()
            comb(grads, has)
            times[name].append(time.perf_counter() - t0)
    print()
    print(f"Combiner-only time per step, T = {n_tasks}, d = {d} (median of {args.micro_reps}):")
    print()
    print("| combiner | ms / step |")
    print("|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {1000 * statistics.median(ts):.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("FEDREC_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--dataset", choices=["ml-100k", "synthetic"], default="ml-100k")
    parser.add_argument("--tasks", nargs="+", default=["watched", "liked", "loved"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--combiners", nargs="+", default=COMBINERS)
    parser.add_argument("--model", choices=["ple", "shared_bottom"], default="ple")
    parser.add_argument("--hidden", type=int, nargs="+", default=[32])
    parser.add_argument("--tower", type=int, nargs="+", default=[16])
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--eps", type=float, default=1e-10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write all run results here")
    parser.add_argument("--micro-reps", type=int, default=30,
                        help="repetitions of the combiner-only timing (0: skip)")
    parser.add_argument("--micro-only", action="store_true",
                        help="only time the combiners on model-sized gradients (no training)")
    args = parser.parse_args(argv)
    if args.micro_only:
        _micro(args)
        return 0

    base: dict[str, Any] = {
        "dataset": args.dataset,
        "model": args.model,
        "hidden_units": args.hidden,
        "tower_units": args.tower,
        "embedding_dim": args.embedding_dim,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "patience": args.patience,
        "num_threads": args.threads,
    }
    if args.dataset == "ml-100k":
        base.update({"data_dir": args.data_dir, "tasks": args.tasks})

    t_start = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in args.combiners}
    for seed in args.seeds:
        for name in args.combiners:
            params = {"tau": args.tau, "eps": args.eps} if name == "gradcraft" else {}
            run = {"combiner": name, "combiner_params": params, "seed": seed, "data_seed": seed}
            cfg = MultiTaskConfig.from_mapping({**base, **run})
            res = train_multitask(cfg)
            results[name].append(res)
            print(
                f"# seed {seed} {name:16s} mean AUC {res['mean_auc']:.4f} "
                f"GAUC {res['mean_gauc']:.4f} epochs {res['epochs']} (best {res['best_epoch']}) "
                f"{res['seconds_per_epoch']:.2f} s/epoch "
                f"conflicting pairs/step {res['mean_conflicting_pairs']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    total = time.perf_counter() - t_start

    first = next(iter(results.values()))[0]
    tasks = list(first["test"]["auc"])
    print(f"dataset {args.dataset}, tasks {tasks}, rows {first['rows']}")
    print("test positive rates (seed %d): " % args.seeds[0]
          + ", ".join(f"{t} {r:.3f}" for t, r in first["positive_rates"]["test"].items()))
    print(f"model {args.model} hidden {args.hidden} tower {args.tower} emb {args.embedding_dim}, "
          f"{first['num_params']} params; Adam lr {args.lr}, batch {args.batch_size}, "
          f"<= {args.epochs} epochs, patience {args.patience}; seeds {args.seeds}; "
          f"torch threads {args.threads}")
    print()
    header = (["combiner", "mean AUC", "mean GAUC"] + [f"AUC {t}" for t in tasks]
              + [f"GAUC {t}" for t in tasks] + ["epochs", "s/epoch", "conflicts/step"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, runs in results.items():
        row = [name, _fmt([r["mean_auc"] for r in runs]), _fmt([r["mean_gauc"] for r in runs])]
        row += [_fmt([r["test"]["auc"][t] for r in runs]) for t in tasks]
        row += [_fmt([r["test"]["gauc"][t] for r in runs]) for t in tasks]
        row += [_fmt([float(r["epochs"]) for r in runs], 1),
                _fmt([r["seconds_per_epoch"] for r in runs], 2),
                _fmt([r["mean_conflicting_pairs"] for r in runs], 3)]
        print("| " + " | ".join(row) + " |")
    if "gradcraft" in results and len(results) > 1:
        print()
        print("Paired differences, GradCraft minus baseline (same seed = same data/init/batches):")
        print()
        print("| baseline | Δ mean AUC | Δ mean GAUC | GradCraft better (AUC) |")
        print("|---|---|---|---|")
        gc = results["gradcraft"]
        for name, runs in results.items():
            if name == "gradcraft":
                continue
            d_auc = [a["mean_auc"] - b["mean_auc"] for a, b in zip(gc, runs, strict=True)]
            d_gauc = [a["mean_gauc"] - b["mean_gauc"] for a, b in zip(gc, runs, strict=True)]
            wins = sum(d > 0 for d in d_auc)
            print(f"| {name} | {_fmt(d_auc)} | {_fmt(d_gauc)} | {wins}/{len(d_auc)} seeds |")
    print()
    print(f"total wall time {total:.0f} s")
    if args.micro_reps > 0:
        _micro(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
