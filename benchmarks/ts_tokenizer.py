"""CrossTimeNet's time-series tokenizer trained per dataset on the UCR/UEA files (part 1 of the
CrossTimeNet baseline): reconstruction MSE, codebook perplexity and usage, seconds.

For each registered time-series dataset: the official train file minus a seeded, stratified
validation split (``--val-fraction``) trains one tokenizer for ``--epochs`` epochs; the table
reports the validation and official-test reconstruction MSE (scaled units: per-sample min-max to
[-1, 1] then x2.5, as the CrossTimeNet code), the MSE of a zero reconstruction on the test split
(the scaled data's mean square, the "knows nothing" level) and the MSE of the untrained
tokenizer, and the test codes' perplexity and usage (eval mode, no codebook update). Lengths
follow the spec's small-scale table: ArrowHead is cropped from 251 to 250 steps and
JapaneseVowels (7-29 steps) is linearly resampled to 25 steps.

    FEDREC_DATA=../shared/data python benchmarks/ts_tokenizer.py --epochs 30
"""

from __future__ import annotations

import argparse
import time

import torch

from fedrec.data import timeseries as T
from fedrec.tokenizers.timeseries import (
    TimeSeriesTokenizer,
    evaluate,
    scale_series,
    train_tokenizer,
)

#: dataset -> (fixed length, patch length wl); lengths from the data, wl from the spec's table.
SETUP = {
    "BasicMotions": (100, 4),
    "JapaneseVowels": (25, 1),
    "GunPoint": (150, 5),
    "ArrowHead": (250, 10),
    "ItalyPowerDemand": (24, 1),
}


def prepare(data: T.TimeSeriesData, length: int) -> torch.Tensor:
    """Fixed-length, scaled tensor ``[n, C, length]``."""
    if data.equal_length and int(data.lengths[0]) >= length:
        return scale_series(T.crop(data, length))
    return scale_series(T.resample(data, length))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="data root (default $FEDREC_DATA)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--codebook-size", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-blocks", type=int, default=2)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--datasets", nargs="*", default=list(SETUP))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, d {args.d_model}, "
          f"blocks {args.n_blocks}, seed {args.seed}, torch threads {args.threads}")
    print("| dataset | channels | length | wl | tokens | codebook | train/val/test | "
          "zero-recon MSE | init MSE | val MSE | test MSE | test perplexity | test usage | "
          "restarts | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        length, wl = SETUP[name]
        s = T.load(name, args.root, val_fraction=args.val_fraction, seed=args.seed)
        Xtr, Xva, Xte = (prepare(p, length) for p in (s.train, s.val, s.test))
        tok = TimeSeriesTokenizer(s.n_channels, length, wl, codebook_size=args.codebook_size,
                                  d_model=args.d_model, n_blocks=args.n_blocks, seed=args.seed)
        init = evaluate(tok, Xte)["mse"]
        t0 = time.perf_counter()
        train_tokenizer(tok, Xtr, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed)
        secs = time.perf_counter() - t0
        val, test = evaluate(tok, Xva), evaluate(tok, Xte)
        print(f"| {name} | {s.n_channels} | {length} | {wl} | {length // wl} | "
              f"{args.codebook_size} | {len(Xtr)}/{len(Xva)}/{len(Xte)} | "
              f"{float(Xte.pow(2).mean()):.3f} | {init:.3f} | {val['mse']:.3f} | "
              f"{test['mse']:.3f} | {test['perplexity']:.1f} | {test['usage']:.2f} | "
              f"{tok.vq.restarts} | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
