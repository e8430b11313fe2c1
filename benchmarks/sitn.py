"""SITN and its baselines on a cross-domain setting: quality, seconds per epoch, peak memory.

Rows: SITN, the three baselines (target-only, naive shared transfer, separate encoders with no
contrastive level) and the two single-level ablations, each over ``--seeds`` seeds (mean ± std).
Columns: target-domain full-ranking HR@10 / NDCG@10 (history excluded) and sampled AUC
(``domains.n_negatives`` unseen items) for all evaluated users and for the cold-target users,
seconds per epoch and peak RSS. Every run goes through ``fedrec run``'s runner in its own
process (so peak memory is per run), from ``--config`` with ``--epochs`` epochs.

    python benchmarks/sitn.py --config experiments/centralized/sitn_ml100k.yaml --epochs 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

VARIANTS = {
    "SITN": {},
    "target-only": {"variant": "target_only"},
    "shared (naive transfer)": {"variant": "shared"},
    "SITN w/o CL (transfer only)": {"i2i_weight": 0.0, "proto_weight": 0.0},
    "SITN w/o instance-to-instance": {"i2i_weight": 0.0},
    "SITN w/o instance-to-cluster": {"proto_weight": 0.0},
}
COLS = ["full/HR@10", "full/NDCG@10", "sampled/AUC", "cold/full/HR@10", "cold/full/NDCG@10",
        "cold/sampled/AUC"]


def single(config: str, params: str, seed: int, epochs: int, out: str) -> None:
    """Run one configuration and print its summary as JSON (child process)."""
    from fedrec.config import load_config
    from fedrec.runner import run_experiment

    cfg = load_config(config, overrides=[f"seed={seed}", f"train.epochs={epochs}"])
    raw = cfg.model_dump()
    raw["model"]["params"].update(json.loads(params))
    from fedrec.config import validate_config

    cfg = validate_config(raw)
    summary = run_experiment(cfg, out, overwrite=True, progress=False)
    print("SUMMARY " + json.dumps(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/centralized/sitn_ml100k.yaml")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="row names to run")
    ap.add_argument("--single", nargs=3, metavar=("PARAMS", "SEED", "OUT"))
    args = ap.parse_args()
    if args.single:
        single(args.config, args.single[0], int(args.single[1]), args.epochs, args.single[2])
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, params in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            res = []
            for seed in range(args.seeds):
                t0 = time.time()
                proc = subprocess.run(
                    [sys.executable, __file__, "--config", args.config, "--epochs",
                     str(args.epochs), "--single", json.dumps(params), str(seed),
                     f"{tmp}/{len(rows)}_{seed}"], capture_output=True, text=True, check=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")][-1]
                res.append(json.loads(line[8:]))
                print(f"# {name} seed {seed}: {time.time() - t0:.0f}s", file=sys.stderr)
            rows.append((name, res))
    head = ["method", *COLS, "s/epoch", "peak MiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, res in rows:
        cells = [name]
        for c in COLS:
            v = np.array([r["test"].get(c, np.nan) for r in res])
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
        cells.append(f"{np.mean([r['seconds_per_step'] for r in res]):.2f}")
        cells.append(f"{max(r['peak_rss_mb'] for r in res):.0f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
