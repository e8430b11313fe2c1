"""LaVIT-style tokenizer benchmark: the dynamic tokenizer and its fixed-length ablation.

Runs ``experiments/centralized/lavit_images.yaml`` through ``fedrec run``'s code path twice
(``model.params.mode: dynamic`` and ``fixed``; same seed, hence the same teacher and data), each
in its own run directory with checkpoints, so an interrupted benchmark continues with
``--resume`` semantics. Prints one table of the final test metrics
(:mod:`fedrec.baselines.lavit.pipeline`) with seconds per epoch (mean over all stages' epochs)
and each run's peak RSS.

    nice -n 10 python benchmarks/lavit.py --out runs/bench_lavit [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "experiments/centralized/lavit_images.yaml"
COLUMNS = ("recon_cosine", "tokens_mean", "tokens_std", "tokens_complexity_corr",
           "codebook_usage", "codebook_perplexity", "probe_decoded", "probe_teacher",
           "probe_pixels", "caption_accuracy", "text_to_image_accuracy", "teacher_accuracy")


def main() -> None:
    """Run both variants and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_lavit")
    ap.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = ap.parse_args()
    rows = []
    for mode in ("dynamic", "fixed"):  # one process per run: its own peak RSS
        out = Path(args.out) / mode
        sets = [x for s in [*args.set, f"model.params.mode={mode}", f"name=lavit_{mode}"]
                for x in ("--set", s)]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fedrec.cli", "run", str(CONFIG), "--out", str(out),
                        "--resume", "--no-progress", *sets], check=True)
        summary = json.loads((out / "summary.json").read_text())
        rows.append((mode, summary, time.perf_counter() - t0))
    print(f"| tokenizer | {' | '.join(COLUMNS)} | s/epoch | peak RSS MiB |")
    print("|" + "---|" * (len(COLUMNS) + 3))
    for mode, s, _ in rows:
        vals = [f"{s['test'][c]:.3f}" if c in s["test"] else "—" for c in COLUMNS]
        print(f"| {mode} | {' | '.join(vals)} | {s['seconds_per_step']:.1f} | "
              f"{s['peak_rss_mb']:.0f} |")
    print(json.dumps({m: s["test"] for m, s, _ in rows}, indent=1))


if __name__ == "__main__":
    main()
