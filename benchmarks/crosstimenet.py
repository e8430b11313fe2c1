"""CrossTimeNet on the five UCR/UEA sets: test accuracy and macro-F1 (mean ± std over seeds) of
every variant the paper's claims need, a classical reference (1-NN with DTW), codebook usage per
domain, seconds and peak memory.

Per seed, the stages are separate ``fedrec run`` runs chained by ``model.params.init_from``
(each resumable; the benchmark skips what ``--out`` already holds):

* ``tok``: one tokenizer per domain (shared by every variant of the seed);
* pre-training runs over the joint vocabulary of all five domains: ``cross@r`` (all five
  domains, MiniLM initialisation, mask ratio ``r`` for each ``--ratios``), ``cross-random``
  (random initialisation, ratio 0.3) and ``single/<d>`` (domain ``d`` only, MiniLM, 0.3);
* fine-tuning runs (full fine-tuning) on every target domain from each of them, and
  ``scratch`` (the same encoder, randomly initialised, no pre-training) and ``plm-only``
  (MiniLM initialisation, no pre-training).

The accuracy of the fine-tuning epoch with the best validation accuracy is reported (the
validation split is carved from the official train file; the official test split is used only
for the report). ``dtw`` is 1-NN under DTW with the window chosen by leave-one-out on the train
split, on the same scaled series.

    FEDREC_DATA=../shared/data python benchmarks/crosstimenet.py --out runs/bench_ctn
    python benchmarks/crosstimenet.py --domains sines1 sines3 --seeds 0 --out /tmp/ctn  # no data
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import mean_std

CONFIG = "experiments/centralized/crosstimenet_ucr.yaml"
DATASETS = ["BasicMotions", "JapaneseVowels", "GunPoint", "ArrowHead", "ItalyPowerDemand"]


def run(config: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    """One run (resumed when interrupted, returned as is when finished); its summary."""
    from fedrec.config import load_config
    from fedrec.runner import run_experiment

    t0 = time.perf_counter()
    cfg = load_config(config, overrides)
    summary = run_experiment(cfg, out, resume=True, progress=False)
    return {**summary, "wall_s": time.perf_counter() - t0}


def dtw_row(domain: str, seed: int, root: str | None) -> dict[str, float]:
    """1-NN DTW on ``domain`` (window by leave-one-out on train)."""
    from fedrec.baselines.crosstimenet.data import load_domain
    from fedrec.baselines.crosstimenet.dtw import choose_window, one_nn_dtw
    from fedrec.baselines.crosstimenet.trainer import macro_f1

    t0 = time.perf_counter()
    d = load_domain(domain, root, seed=seed)
    window, _ = choose_window(d.X["train"], d.y["train"])
    pred = one_nn_dtw(d.X["train"], d.y["train"], d.X["test"], window)
    y = d.y["test"]
    return {"accuracy": float((pred == y).float().mean()),
            "macro_f1": macro_f1(y.numpy(), pred.numpy()), "window": window,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--domains", nargs="+", default=DATASETS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.15, 0.3, 0.5, 0.75])
    ap.add_argument("--tokenizer-epochs", type=int, default=60)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--no-single", action="store_true", help="skip single-domain pre-training")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_crosstimenet"))
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_before = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") \
        else ["?"] * 3
    common = [f"model.params.domains={json.dumps(args.domains)}", "train.eval_every=1",
              f"model.params.tokenizer_epochs={args.tokenizer_epochs}",
              f"model.params.pretrain_epochs={args.pretrain_epochs}",
              f"train.epochs={args.finetune_epochs}",
              f"train.patience={args.finetune_epochs}", *args.extra]
    results: dict[str, dict[str, list[dict]]] = {}  # variant -> domain -> summaries
    usage: dict[str, list[float]] = {d: [] for d in args.domains}
    seconds: dict[str, list[float]] = {}
    for seed in args.seeds:
        base = args.out / f"seed{seed}"
        tok = base / "tok"
        s = run(args.config, tok, common + [f"seed={seed}", "model.params.stages=[tokenizer]",
                                            "train.metric=neg_mse"])
        seconds.setdefault("tokenizers (all domains)", []).append(s["wall_s"])
        for d in args.domains:
            usage[d].append(s["test"][f"usage/{d}"])
        pre: dict[str, tuple[Path, list[str]]] = {
            f"cross@{r:g}": (base / f"cross_{r:g}", [f"model.params.mask_ratio={r}"])
            for r in args.ratios}
        pre["cross-random"] = (base / "cross_random", ["model.params.init=random",
                                                       "model.params.mask_ratio=0.3"])
        if not args.no_single:
            for d in args.domains:
                pre[f"single/{d}"] = (base / f"single_{d}",
                                      [f"model.params.pretrain_domains=[{d}]",
                                       "model.params.mask_ratio=0.3"])
        for name, (path, sets) in pre.items():
            s = run(args.config, path, common + sets + [
                f"seed={seed}", "model.params.stages=[pretrain]", f"model.params.init_from={tok}",
                "train.metric=neg_mlm_loss"])
            seconds.setdefault("pre-training " + name.split("/")[0], []).append(s["wall_s"])
        for d in args.domains:
            starts = {"scratch": (tok, ["model.params.init=random"]),
                      "plm-only": (tok, ["model.params.init=plm"])}
            for name, (path, _) in pre.items():
                if name.startswith("single/") and name != f"single/{d}":
                    continue
                starts["single" if name.startswith("single/") else name] = (path, [])
            for name, (path, sets) in starts.items():
                s = run(args.config, base / "ft" / d / name.replace("@", "_"), common + sets + [
                    f"seed={seed}", "model.params.stages=[finetune]",
                    f"model.params.init_from={path}", f"model.params.target={d}",
                    "train.metric=accuracy"])
                results.setdefault(name, {}).setdefault(d, []).append(s["test"])
                seconds.setdefault("fine-tuning", []).append(s["wall_s"])
            got = dtw_row(d, seed, None)
            results.setdefault("dtw", {}).setdefault(d, []).append(got)
            seconds.setdefault("1-NN DTW", []).append(got["seconds"])
        print(f"seed {seed} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    order = ["dtw", "scratch", "plm-only", "single", "cross-random",
             *[f"cross@{r:g}" for r in args.ratios]]
    print(f"\ntest accuracy / macro-F1, mean ± std over seeds {args.seeds} "
          f"(fine-tuning epoch chosen on validation accuracy)\n")
    print("| variant | " + " | ".join(args.domains) + " | mean accuracy |")
    print("|---" * (len(args.domains) + 2) + "|")
    for v in [v for v in order if v in results]:
        cells, accs = [], []
        for d in args.domains:
            rows = results[v].get(d, [])
            acc = [r["accuracy"] for r in rows]
            f1 = [r["macro_f1"] for r in rows]
            accs.append(np.mean(acc) if acc else np.nan)
            cells.append(f"{mean_std(acc, 3)} / {mean_std(f1, 3)}")
        print(f"| {v} | " + " | ".join(cells) + f" | {np.nanmean(accs):.3f} |")
    print("\ncodebook usage of the test tokens (share of the codes used), mean over seeds: "
          + ", ".join(f"{d} {np.mean(u):.2f}" for d, u in usage.items()))
    print("\n| stage | runs | mean seconds per run |\n|---|---|---|")
    for k, v in seconds.items():
        print(f"| {k} | {len(v)} | {np.mean(v):.1f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_after = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") \
        else ["?"] * 3
    print(f"\npeak RSS of the benchmark process {peak:.0f} MB; {time.perf_counter() - t_start:.0f}"
          f" s in all; load before {' '.join(load_before)}, after {' '.join(load_after)}")


if __name__ == "__main__":
    main()
