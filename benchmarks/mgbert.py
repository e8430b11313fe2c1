"""NCF vs NCF + MG-BERT/PMGT pre-trained item vectors: full-ranking Recall/NDCG@10/20 on the
test split for all held-out items and for sparse items (mean ± std over seeds), the held-out
link-prediction AUC of the pre-training (first and last epoch), seconds per epoch of each stage
and peak memory, under the code's random 80/20 split and fedrec's leave-one-out.

Each (protocol, init, seed) is one ``fedrec run`` in its own process (``peak_rss_mb`` is that
run's), with ``--resume`` into ``--out``: an interrupted benchmark continues where it stopped.

    FEDREC_DATA=../shared/data python benchmarks/mgbert.py --out runs/bench_mgbert
    python benchmarks/mgbert.py --config experiments/centralized/mgbert_synthetic.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import fedrec_run, mean_std

INITS = {"random": "NCF", "pretrained": "NCF + MG-BERT"}
METRICS = ["full/Recall@10", "full/Recall@20", "full/NDCG@10", "full/NDCG@20",
           "sparse/Recall@10", "sparse/Recall@20", "sparse/NDCG@20"]


def run_one(config: str, protocol: str, init: str, seed: int, out: Path, extra: list[str]) -> Path:
    """One run through the CLI (resumed if interrupted); its folder."""
    sets = [f"model.params.init={init}", f"seed={seed}", f"model.params.protocol={protocol}"]
    return fedrec_run(config, out, [*sets, *extra])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/centralized/mgbert_ml100k.yaml")
    ap.add_argument("--protocols", nargs="+", default=["random80", "loo"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_mgbert"))
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    print("| protocol | method | " + " | ".join(METRICS) + " | link AUC first → last | "
          "s/epoch pre-train | s/epoch NCF | NCF epochs run | peak MB |")
    print("|---" * (len(METRICS) + 7) + "|")
    for protocol in args.protocols:
        for init in ("random", "pretrained"):
            sums, links, pre_s, ncf_s, epochs = [], [], [], [], []
            for s in args.seeds:
                path = run_one(args.config, protocol, init, s,
                               args.out / f"{Path(args.config).stem}_{protocol}_{init}_s{s}",
                               args.extra)
                sums.append(json.loads((path / "summary.json").read_text()))
                recs = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
                pre = [r for r in recs if r.get("stage") == "pretrain"]
                ncf = [r for r in recs if r.get("stage") == "ncf"]
                if pre:
                    links.append((pre[0]["train/link_AUC"], pre[-1]["train/link_AUC"]))
                    pre_s.append(np.mean([r["seconds"] for r in pre]))
                ncf_s.append(np.mean([r["seconds"] for r in ncf]))
                epochs.append(len(ncf))
            vals = [mean_std([r["test"][m] for r in sums if m in r["test"]]) for m in METRICS]
            link = (f"{mean_std([a for a, _ in links], 3)} → {mean_std([b for _, b in links], 3)}"
                    if links else "—")
            pre_txt = f"{np.mean(pre_s):.2f}" if pre_s else "—"
            print(f"| {protocol} | {INITS[init]} | " + " | ".join(vals) + f" | {link} | "
                  f"{pre_txt} | {np.mean(ncf_s):.2f} | {'/'.join(map(str, epochs))} | "
                  f"{max(r['peak_rss_mb'] for r in sums):.0f} |", flush=True)


if __name__ == "__main__":
    main()
