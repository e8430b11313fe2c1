"""CDL vs its naive pointwise variant vs BPR-MF, on warm and cold (never trained) items:
full-ranking Recall@10 / NDCG@10 / AUC on the test split (mean ± std over seeds), seconds per
epoch and peak memory.

Each (setting, variant, seed) is one ``fedrec run`` in its own process (``peak_rss_mb`` is that
run's), with ``--resume`` into ``--out``: an interrupted benchmark continues where it stopped
and finished runs are read back.

    FEDREC_DATA=../shared/data python benchmarks/cdl.py --out runs/bench_cdl
    python benchmarks/cdl.py --configs experiments/centralized/cdl_digits.yaml --epochs 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import fedrec_run, mean_std

VARIANTS = {"cdl": "CDL (comparative)", "naive": "naive DL (pointwise)", "bprmf": "BPR-MF"}
CONFIGS = ["experiments/centralized/cdl_digits.yaml", "experiments/centralized/cdl_ml100k.yaml"]
METRICS = ["Recall@10", "NDCG@10", "AUC"]


def run_one(config: str, variant: str, seed: int, epochs: int, out: Path,
            extra: list[str]) -> dict:
    """One run through the CLI (resumed if interrupted); its summary."""
    sets = [f"model.params.variant={variant}", f"seed={seed}", f"train.epochs={epochs}", *extra]
    return json.loads((fedrec_run(config, out, sets) / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("runs/bench_cdl"))
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    cols = [f"{side} {m}" for side in ("warm", "cold") for m in METRICS]
    print("| setting | method | " + " | ".join(cols) + " | s/epoch | epochs run | peak MB |")
    print("|---" * (len(cols) + 5) + "|")
    for config in args.configs:
        setting = Path(config).stem
        for v in args.variants:
            runs = [run_one(config, v, s, args.epochs, args.out / f"{setting}_{v}_s{s}",
                            args.extra) for s in args.seeds]
            vals = [mean_std([r["test"][f"{c.split()[0]}/{c.split()[1]}"] for r in runs])
                    for c in cols]
            print(f"| {setting} | {VARIANTS[v]} | " + " | ".join(vals)
                  + f" | {np.mean([r['seconds_per_step'] for r in runs]):.2f}"
                  + f" | {'/'.join(str(r['steps_run']) for r in runs)}"
                  + f" | {max(r['peak_rss_mb'] for r in runs):.0f} |", flush=True)


if __name__ == "__main__":
    main()
