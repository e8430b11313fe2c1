"""SASS and its four comparison variants under one protocol: per-scenario full-ranking
Recall@20 / NDCG@20 on the test split (mean ± std over seeds), the pre-training gain (SASS minus
SASS-Base) on the sparsest scenario, seconds per epoch and peak memory.

Each (variant, seed) is one ``fedrec run`` in its own process (so ``peak_rss_mb`` is that run's).

    FEDREC_DATA=../shared/data python benchmarks/sass.py --epochs 6 --seeds 0 1 2
    python benchmarks/sass.py --config experiments/centralized/sass_synthetic.yaml --epochs 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {"sass": "SASS", "sass_base": "SASS-Base", "shared_bottom": "Shared-bottom",
            "mixed": "Mixed", "single": "Single"}


def run_one(config: str, variant: str, seed: int, epochs: int, out: Path, extra: list[str]) -> dict:
    """One run through the CLI; its summary."""
    cmd = [sys.executable, "-m", "fedrec.cli", "run", config, "--out", str(out), "--overwrite",
           "--set", f"model.params.variant={variant}", "--set", f"seed={seed}",
           "--set", f"train.epochs={epochs}", "--set", f"model.params.domains.seed={seed}"]
    for e in extra:
        cmd += ["--set", e]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


def sparsest_scenario(config: str) -> str:
    """The scenario with the fewest positive train pairs in ``config``'s data."""
    from fedrec.baselines.sass.data import load_scenarios
    from fedrec.config import load_config
    from fedrec.data.registry import data_root

    cfg = load_config(config)
    data = load_scenarios(cfg.model.params.get("domains"), data_root(cfg.data.root))
    return data.scenarios[int(np.argmin([len(u) for u, _ in data.train]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/centralized/sass_ml100k.yaml")
    ap.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--sparsest", help="scenario for the pre-training gain (default: fewest "
                    "train pairs)")
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for v in args.variants:
            for s in args.seeds:
                out = Path(tmp) / f"{v}_{s}"
                runs[v].append(run_one(args.config, v, s, args.epochs, out, args.extra))
                print(f"# done {v} seed {s}", file=sys.stderr, flush=True)
    first = runs[args.variants[0]][0]["test"]
    scen = sorted({k.split("/")[1] for k in first if k.count("/") == 2})
    fmt = lambda xs: f"{np.mean(xs):.4f} ± {np.std(xs):.4f}"  # noqa: E731
    cols = [f"{s} R@20 / N@20" for s in scen]
    print("| model | " + " | ".join(cols) + " | mean R@20 | mean N@20 | s/epoch | peak RSS MiB |")
    print("|" + "---|" * (len(cols) + 5))
    for v in args.variants:
        rs = runs[v]
        cells = [f"{fmt([r['test'][f'full/{s}/Recall@20'] for r in rs])} / "
                 f"{fmt([r['test'][f'full/{s}/NDCG@20'] for r in rs])}" for s in scen]
        print(f"| {VARIANTS[v]} | " + " | ".join(cells)
              + f" | {fmt([r['test']['full/Recall@20'] for r in rs])}"
              + f" | {fmt([r['test']['full/NDCG@20'] for r in rs])}"
              + f" | {np.mean([r['seconds_per_step'] for r in rs]):.2f}"
              + f" | {np.max([r['peak_rss_mb'] for r in rs]):.0f} |")
    if "sass" in runs and "sass_base" in runs:
        sparse = args.sparsest or sparsest_scenario(args.config)
        for m in ("Recall@20", "NDCG@20"):
            gain = [a["test"][f"full/{sparse}/{m}"] - b["test"][f"full/{sparse}/{m}"]
                    for a, b in zip(runs["sass"], runs["sass_base"], strict=True)]
            print(f"\npre-training gain on the sparsest scenario ({sparse}), {m}: {fmt(gain)}")


if __name__ == "__main__":
    main()
