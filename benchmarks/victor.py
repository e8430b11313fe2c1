"""VICTOR benchmark: full pre-training, no pre-training, and each proxy task removed in turn,
over several seeds.

Every variant is ``experiments/centralized/victor_videos.yaml`` run through ``fedrec run`` in
its own process and run directory (``--resume``: an interrupted benchmark continues where it
stopped); "none" sets every task weight to 0 (the steps then train nothing), "-task" sets one
weight to 0. Prints the mean and standard deviation over seeds of the test metrics
(:mod:`fedrec.baselines.victor.evaluate`: retrieval R@k both ways among the split's test videos,
digit/motion probe accuracy, cold-video HR@10/NDCG@10 in full ranking among the test cold
videos), seconds per pre-training epoch and each run's peak RSS.

    nice -n 10 python benchmarks/victor.py --out runs/bench_victor --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parent.parent / "experiments/centralized/victor_videos.yaml"
TASKS = ("mlm", "msom", "mfom", "msg", "intra_mfm", "inter_mfm", "dual_vsa")
#: the contrastive proxy tasks and the dual alignment (off in the ``mlm_style`` variant)
CONTRASTIVE = ("intra_mfm", "inter_mfm", "dual_vsa")
COLUMNS = ("retrieval/v2t_R@1", "retrieval/v2t_R@5", "retrieval/v2t_R@10", "retrieval/t2v_R@1",
           "retrieval/t2v_R@5", "retrieval/t2v_R@10", "class/digit_acc", "class/motion_acc",
           "cold/HR@10", "cold/NDCG@10")


def variants() -> dict[str, list[str]]:
    """Variant name -> config overrides."""
    out = {"full": [], "none": [f"model.params.{t}_weight=0" for t in TASKS] + ["train.epochs=1"]}
    out.update({f"-{t}": [f"model.params.{t}_weight=0"] for t in TASKS})
    # the paper's claim: the contrastive tasks and the dual alignment add to MLM-style tasks
    out["mlm_style"] = [f"model.params.{t}_weight=0" for t in CONTRASTIVE]
    return out


def main() -> None:
    """Run every variant and seed, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_victor")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=None,
                    help="variants to run (default all: full, none, -<task>, mlm_style)")
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name, sets in variants().items():
            if args.variants is not None and name not in args.variants:
                continue
            out = Path(args.out) / f"seed{seed}" / name
            flags = [x for s in [*args.set, f"seed={seed}", f"name=victor_{name}", *sets]
                     for x in ("--set", s)]
            subprocess.run([sys.executable, "-m", "fedrec.cli", "run", str(CONFIG), "--out",
                            str(out), "--resume", "--no-progress", *flags], check=True,
                           stdout=subprocess.DEVNULL)
            results.setdefault(name, []).append(json.loads((out / "summary.json").read_text()))
    short = [c.split("/")[1] for c in COLUMNS]
    print(f"| variant | seeds | {' | '.join(short)} | s/epoch | peak RSS MiB |")
    print("|" + "---|" * (len(COLUMNS) + 4))
    for name, runs in results.items():
        cells = []
        for c in COLUMNS:
            vals = np.array([r["test"][c] for r in runs])
            cells.append(f"{vals.mean():.3f}±{vals.std():.3f}")
        secs = "—" if name == "none" else f"{np.mean([r['seconds_per_step'] for r in runs]):.1f}"
        rss = max(r["peak_rss_mb"] for r in runs)
        print(f"| {name} | {len(runs)} | {' | '.join(cells)} | {secs} | {rss:.0f} |")
    print(json.dumps({n: [r["test"] for r in rs] for n, rs in results.items()}))


if __name__ == "__main__":
    main()
