"""GCL4SR vs SASRec under GCL4SR's protocol (Zhang et al., IJCAI 2022, arXiv 2205.14837).

Each (dataset, model) pair is one ``fedrec run`` in its own subprocess (so ``peak_rss_mb`` of the
summary is that run's own peak resident set size), from
``experiments/centralized/gcl4sr_<dataset>.yaml`` (GCL4SR) or
``experiments/centralized/sasrec_home.yaml`` with ``data.name`` overridden (SASRec); model
``gcl4sr-code`` is GCL4SR with ``model.params.preset=code`` (the public code's variant):
leave-one-out, full ranking over all items with history items removed, model selection on
validation NDCG@20, test metrics of the best epoch. ``--epochs`` caps the number of epochs
per dataset (the budget cut is printed with the table). The table is printed in Markdown with
the paper's figures (Table 2, Home only) beside ours.

Usage::

    python benchmarks/gcl4sr.py --datasets beauty --epochs beauty=20 --threads 1
    python benchmarks/gcl4sr.py --datasets home --epochs home=2 --out runs/bench_gcl4sr
    python benchmarks/gcl4sr.py --datasets home beauty --table-only   # summarise finished runs
    # cost of one epoch, both presets beside SASRec (s/epoch = training only)
    python benchmarks/gcl4sr.py --datasets beauty --epochs beauty=1 \
        --models gcl4sr gcl4sr-code sasrec
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "gcl4sr": "experiments/centralized/gcl4sr_{dataset}.yaml",
    "gcl4sr-code": "experiments/centralized/gcl4sr_{dataset}.yaml",  # + model.params.preset=code
    "sasrec": "experiments/centralized/sasrec_home.yaml",
}
#: Paper Table 2 (HR@10, HR@20, NDCG@10, NDCG@20); only Home is shared with our data.
PAPER = {
    ("home", "gcl4sr"): (0.0313, 0.0422, 0.0190, 0.0218),
    ("home", "sasrec"): (0.0228, 0.0316, 0.0141, 0.0163),
}


def machine() -> dict[str, str]:
    """CPU model, core count, load and library versions."""
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"cpu": model, "cores": str(os.cpu_count()), "load": load,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="minutes")}


def run_one(dataset: str, model: str, epochs: int | None, out: Path, threads: int,
            bucket: bool, resume: bool, extra: list[str]) -> dict:
    """Run one experiment (or resume it) and return its summary plus wall time."""
    cfg = ROOT / CONFIGS[model].format(dataset=dataset)
    run_dir = out / f"{dataset}_{model}"
    cmd = [sys.executable, "-m", "fedrec.cli", "run", str(cfg), "--out", str(run_dir),
           "--no-progress", "--set", f"data.name={dataset}", "--set", f"threads={threads}"]
    if epochs is not None:
        cmd += ["--set", f"train.epochs={epochs}"]
    if model.startswith("gcl4sr") and bucket:
        cmd += ["--set", "model.params.bucket_batches=true"]
    if model == "gcl4sr-code":
        cmd += ["--set", "model.params.preset=code"]
    for item in extra:
        cmd += ["--set", item]
    cmd += ["--resume"] if resume else ["--overwrite"]
    print("$", " ".join(cmd[1:]), flush=True)
    env = dict(os.environ)
    if "FEDREC_DATA" not in env and (ROOT.parent / "shared" / "data").is_dir():
        env["FEDREC_DATA"] = str(ROOT.parent / "shared" / "data")
    t0 = time.perf_counter()
    cpu0 = _children_cpu()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    summary = summarise(run_dir) or {}
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["cpu_seconds"] = _children_cpu() - cpu0
    return summary


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (whole run, start to test)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def summarise(run_dir: Path) -> dict | None:
    """Summary of a finished run (None if unfinished).

    ``wall_seconds`` (training, every evaluation and the final test) is the time between the
    run's ``config.yaml`` (written at the start) and its ``summary.json``.
    """
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    summary["run_dir"] = str(run_dir)
    summary["wall_seconds"] = path.stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime
    return summary


def table(rows: list[tuple[str, str, dict]]) -> str:
    """Markdown table of the runs beside the paper's figures."""
    head = ("| dataset | model | epochs run (cap) | best epoch | s/epoch (train) | wall min "
            "| CPU s (run) | peak RSS MiB | HR@10 | HR@20 | NDCG@10 | NDCG@20 | paper HR@20 "
            "| paper NDCG@20 |")
    lines = [head, "|" + "---|" * 14]
    for dataset, model, s in rows:
        t = s.get("test", {})
        paper = PAPER.get((dataset, model))
        cap = s.get("epochs_cap", "?")
        nan = float("nan")
        metrics = " | ".join(f"{t.get(f'full/{m}', nan):.4f}"
                             for m in ("HR@10", "HR@20", "NDCG@10", "NDCG@20"))
        lines.append(
            f"| {dataset} | {model} | {s['steps_run']} ({cap}) | {s.get('best_step', -1) + 1} "
            f"| {s['seconds_per_step']:.0f} | {s.get('wall_seconds', nan) / 60:.0f} "
            f"| {s.get('cpu_seconds', nan):.0f} | {s['peak_rss_mb']:.0f} | {metrics} "
            f"| {paper[1] if paper else '-'} | {paper[3] if paper else '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["beauty", "home"])
    ap.add_argument("--models", nargs="+", default=["gcl4sr", "sasrec"], choices=sorted(CONFIGS))
    ap.add_argument("--epochs", nargs="*", default=[],
                    help="per-dataset epoch caps, e.g. home=2 beauty=20 (default: config, 200)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--no-bucket", action="store_true",
                    help="uniformly random GCL4SR batches (default: length-bucketed)")
    ap.add_argument("--out", default="runs/bench_gcl4sr")
    ap.add_argument("--resume", action="store_true", help="continue unfinished runs")
    ap.add_argument("--table-only", action="store_true", help="only summarise finished runs")
    ap.add_argument("--set", dest="extra", action="append", default=[],
                    help="extra config override for every run (repeatable)")
    args = ap.parse_args(argv)
    caps = dict(item.split("=", 1) for item in args.epochs)
    out = Path(args.out)
    env = machine()
    print(f"# {env['date']}  cpu: {env['cpu']} x{env['cores']}  load: {env['load']}  "
          f"torch {env['torch']}  python {env['python']}", flush=True)
    rows = []
    for dataset in args.datasets:
        for model in args.models:
            cap = int(caps[dataset]) if dataset in caps else None
            if args.table_only:
                s = summarise(out / f"{dataset}_{model}")
                if s is None:
                    continue
            else:
                s = run_one(dataset, model, cap, out, args.threads, not args.no_bucket,
                            args.resume, args.extra)
                print(f"# load after {dataset}/{model}: {os.getloadavg()[0]:.2f}", flush=True)
            s["epochs_cap"] = cap if cap is not None else 200
            rows.append((dataset, model, s))
    print(table(rows))


if __name__ == "__main__":
    main()
