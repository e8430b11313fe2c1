"""Benchmark: centralized SASRec on the real datasets, quality and cost.

SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018, arXiv
1808.09781) trained centrally with the hyper-parameters of the widely used public PyTorch port
(``experiments/centralized/sasrec_beauty.yaml``, ``sasrec_ml1m.yaml``), early-stopped on
validation ``sampled/NDCG@10``. One run per dataset yields both protocols: the test split of the
selected model is scored against 100 uniformly sampled negatives (the SASRec paper's protocol)
and by full ranking over all items (history items excluded).

Each dataset runs in a fresh process (spawned), so the peak resident set size reported is that
run's own. Seconds per epoch count training only (evaluation excluded), as
``summary["seconds_per_step"]`` does.

Usage::

    python benchmarks/centralized.py                      # beauty + ml-1m, configured epochs
    python benchmarks/centralized.py --datasets beauty --epochs 3 --patience 2   # quick check
    python benchmarks/centralized.py --time-epochs 3 --threads 2   # training speed only

Data: ``--data`` or ``FEDREC_DATA`` (default ``../shared/data`` next to the repository) must
hold ``<dataset>/sequences.txt``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "beauty": REPO / "experiments" / "centralized" / "sasrec_beauty.yaml",
    "ml-1m": REPO / "experiments" / "centralized" / "sasrec_ml1m.yaml",
}


def default_data_root() -> Path:
    """``$FEDREC_DATA`` or ``<repo>/../shared/data``."""
    value = os.environ.get("FEDREC_DATA")
    return Path(value).expanduser() if value else REPO.parent / "shared" / "data"


def run_one(dataset: str, overrides: list[str], run_dir: str) -> dict[str, Any]:
    """Run one dataset's config (in a child process) and return its summary plus wall time.

    Parameters
    ----------
    dataset : str
        Key of :data:`CONFIGS`.
    overrides : list of str
        ``--set`` style overrides.
    run_dir : str
        Run directory (overwritten).

    Returns
    -------
    dict
        The run summary with ``wall_seconds`` added.
    """
    from fedrec.config import load_config
    from fedrec.runner import run_experiment

    cfg = load_config(CONFIGS[dataset], overrides)
    t0 = time.perf_counter()
    summary = run_experiment(cfg, run_dir, overwrite=True, progress=False)
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["config"] = {"max_len": cfg.model.max_len, "hidden": cfg.model.hidden,
                         "dropout": cfg.model.dropout, "lr": cfg.train.lr,
                         "batch_size": cfg.train.batch_size, "patience": cfg.train.patience,
                         "metric": cfg.train.metric, "threads": cfg.threads,
                         "n_negatives": cfg.eval.n_negatives}
    return summary


def time_epochs(dataset: str, overrides: list[str], n: int) -> dict[str, Any]:
    """Time ``n`` training epochs of one dataset's config (no evaluation, no run directory).

    Parameters
    ----------
    dataset : str
        Key of :data:`CONFIGS`.
    overrides : list of str
        ``--set`` style overrides.
    n : int
        Epochs to time.

    Returns
    -------
    dict
        ``seconds`` (one entry per epoch) and the process's ``peak_rss_mb``.
    """
    from fedrec.config import load_config
    from fedrec.engine.context import RunContext
    from fedrec.engine.loop import peak_rss_mb
    from fedrec.runner import build_trainer

    cfg = load_config(CONFIGS[dataset], overrides)
    ctx = RunContext.build(cfg)
    trainer = build_trainer(cfg, ctx)
    seconds = []
    for step in range(n):
        t0 = time.perf_counter()
        trainer.train_step(step)
        seconds.append(time.perf_counter() - t0)
    return {"dataset": dataset, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "threads": cfg.threads}


def machine() -> str:
    """CPU model name and core count (from ``lscpu``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), platform.processor())
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def load_average() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the results (one row per dataset × protocol)."""
    head = ("| dataset | protocol | test HR@10 | test NDCG@10 | s/epoch | peak RSS MB | "
            "best epoch | epochs run | wall min |")
    lines = [head, "|" + "---|" * 9]
    for s in rows:
        for proto, label in (("sampled", "100 sampled negatives"), ("full", "full ranking")):
            test = s["test"]
            if f"{proto}/HR@10" not in test:
                continue
            lines.append(
                f"| {s['dataset']} | {label} | {test[f'{proto}/HR@10']:.4f} | "
                f"{test[f'{proto}/NDCG@10']:.4f} | {s['seconds_per_step']:.1f} | "
                f"{s['peak_rss_mb']:.0f} | {s['best_step'] + 1} | {s['steps_run']} | "
                f"{s['wall_seconds'] / 60:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the datasets, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--patience", type=int, default=None, help="override train.patience")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: robust on a shared 2-core machine)")
    ap.add_argument("--data", type=Path, default=None, help="data root (default FEDREC_DATA)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fedrec-bench-centralized"),
                    help="parent folder of the run directories")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra config override a.b=value (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    ap.add_argument("--time-epochs", type=int, default=0, metavar="N",
                    help="only time N training epochs per dataset (no evaluation) and exit")
    args = ap.parse_args()

    root = (args.data or default_data_root()).resolve()
    overrides = [f"data.root={root}", f"threads={args.threads}", *args.overrides]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.patience is not None:
        overrides.append(f"train.patience={args.patience}")

    print(f"machine: {machine()}; load average at start: {load_average()}")
    ctx = mp.get_context("spawn")
    if args.time_epochs:
        print("| dataset | threads | s/epoch (median) | min | max | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for name in args.datasets:
            with ctx.Pool(1) as pool:
                r = pool.apply(time_epochs, (name, overrides, args.time_epochs))
            sec = sorted(r["seconds"])
            print(f"| {name} | {r['threads']} | {sec[len(sec) // 2]:.1f} | {sec[0]:.1f} | "
                  f"{sec[-1]:.1f} | {r['peak_rss_mb']:.0f} |", flush=True)
        print(f"load average at end: {load_average()}")
        return
    rows = []
    for name in args.datasets:
        with ctx.Pool(1) as pool:
            summary = pool.apply(run_one, (name, overrides, str(args.out / name)))
        summary["dataset"] = name
        rows.append(summary)
        print(f"{name}: done in {summary['wall_seconds'] / 60:.1f} min "
              f"(load average now {load_average()})", flush=True)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
