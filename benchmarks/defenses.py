"""Speed and memory of every registered aggregation rule at the ml-1m SASRec size.

Workload: 256 client updates shaped like the parameters of ``fedrec.models.build_model(
"sasrec", 3706, max_len=200, hidden=64, blocks=2)`` (item table [3707, 64], positional [200, 64],
two transformer blocks, final LayerNorm: 300,608 floats per client; shapes hard-coded below if
``fedrec.models`` is unavailable). Each client's item-table update is nonzero on 200 random
rows; the other params are dense. 24 of the 256 clients are "attackers" that also push one
target row with large values (so selection rules have something to reject). The item table is
marked in ``ctx.item_param_names``.

Method: every rule runs in a fresh subprocess. Time = median wall time of ``--repeats`` calls
after one warm-up call (``time.perf_counter``). Memory = peak resident set size during the
warm-up and timed calls minus the resident size just before them: the kernel's high-water mark
``VmHWM`` is reset by writing ``5`` to ``/proc/self/clear_refs``, then read from
``/proc/self/status`` (tracemalloc does not see torch's allocations). Stateful rules keep their
state between calls (it counts toward the peak).

Usage::

    python benchmarks/defenses.py                 # all rules, table on stdout
    python benchmarks/defenses.py --rules median,krum --repeats 5
    python benchmarks/defenses.py --item-rows     # item table as touched rows
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import status_kib

# This file is named like the ``defenses`` package; drop its folder from the import path so
# that ``import defenses`` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

N_ITEMS = 3706
N_CLIENTS = 256
ROWS_PER_CLIENT = 200
N_ATTACKERS = 24

# rule label -> (registry name, params)
RULES: dict[str, tuple[str, dict]] = {
    "mean": ("mean", {}),
    "unweighted_mean": ("unweighted_mean", {}),
    "sum": ("sum", {}),
    "median": ("median", {}),
    "trimmed_mean(beta=0.1)": ("trimmed_mean", {"beta": 0.1}),
    "krum(f=25)": ("krum", {"f": 25}),
    "multi_krum(f=25)": ("multi_krum", {"f": 25}),
    "bulyan(f=25)": ("bulyan", {"f": 25}),
    "geometric_median": ("geometric_median", {}),
    "dvfsr_hybrid": ("dvfsr_hybrid", {}),
    "norm_bound(tau=1)": ("norm_bound", {"tau": 1.0}),
    "centered_clipping(tau=1)": ("centered_clipping", {"tau": 1.0}),
    "flame": ("flame", {}),
    "foolsgold": ("foolsgold", {}),
    "foolsgold(sketch_dim=4096)": ("foolsgold", {"sketch_dim": 4096}),
    "fltrust": ("fltrust", {}),
    "itemwise_median": ("itemwise_median", {}),
    "itemwise_trimmed_mean(beta=0.1)": ("itemwise_trimmed_mean", {"beta": 0.1}),
    "itemwise_krum(f=25)": ("itemwise_krum", {"f": 25}),
    "itemwise_norm_bound(tau=1)": ("itemwise_norm_bound", {"tau": 1.0}),
    "hics": ("hics", {}),
}


def _param_shapes() -> tuple[dict[str, tuple[int, ...]], str, str]:
    try:
        from fedrec.models import build_model

        model = build_model("sasrec", N_ITEMS, max_len=200, hidden=64, blocks=2)
        shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
        return shapes, "item_emb.weight", "fedrec.models.build_model('sasrec', ...)"
    except Exception:  # noqa: BLE001 - fall back to the documented shapes
        d = 64
        shapes: dict[str, tuple[int, ...]] = {"item_emb.weight": (N_ITEMS + 1, d),
                                              "pos_emb.weight": (200, d)}
        for b in range(2):
            for ln in ("ln_attn", "ln_ffn"):
                shapes[f"blocks.{b}.{ln}.weight"] = (d,)
                shapes[f"blocks.{b}.{ln}.bias"] = (d,)
            for lin in ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.fc1", "ffn.fc2"):
                shapes[f"blocks.{b}.{lin}.weight"] = (d, d)
                shapes[f"blocks.{b}.{lin}.bias"] = (d,)
        shapes["ln_out.weight"] = (d,)
        shapes["ln_out.bias"] = (d,)
        return shapes, "item_emb.weight", "hard-coded SASRec shapes"


def make_workload(seed: int = 0, item_rows: bool = False):
    """Stacked updates, example counts and context of the benchmark round (the item table as
    a :class:`fedrec.rowsparse.RowSparse` stack of touched rows with ``item_rows``, as the
    engine sends it under ``federation.item_updates: sparse``)."""
    import torch

    from fedrec.rowsparse import RowSparse

    from defenses import AggregationContext

    shapes, item_key, _ = _param_shapes()
    gen = torch.Generator().manual_seed(seed)
    n = N_CLIENTS
    stacked: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key == item_key:
            rows = shape[0]
            table = torch.zeros(n, *shape)
            idx = torch.rand(n, rows - 1, generator=gen).argsort(dim=1)[:, :ROWS_PER_CLIENT] + 1
            vals = 0.01 * torch.randn(n, ROWS_PER_CLIENT, shape[1], generator=gen)
            table.scatter_(1, idx[:, :, None].expand(-1, -1, shape[1]), vals)
            table[-N_ATTACKERS:, rows - 1] = 5.0  # target row pushed by the attackers
            stacked[key] = table
        else:
            stacked[key] = 0.01 * torch.randn(n, *shape, generator=gen)
    weights = torch.randint(5, 200, (n,), generator=gen).float()
    ctx = AggregationContext(
        round=1,
        seed=seed,
        item_param_names=(item_key,),
        root_update={k: v[:8].mean(dim=0) for k, v in stacked.items()},
        client_ids=torch.arange(n),
    )
    if item_rows:
        stacked[item_key] = RowSparse.from_dense(stacked[item_key])
    return stacked, weights, ctx


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _worker(label: str, repeats: int, item_rows: bool) -> None:
    import gc

    import torch

    from defenses import build_defense

    name, params = RULES[label]
    stacked, weights, ctx = make_workload(item_rows=item_rows)
    rule = build_defense(name, params)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    rss0 = status_kib("VmRSS")
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out, info = rule(stacked, weights, ctx)
        dt = time.perf_counter() - t0
        if i > 0:
            times.append(dt)
    peak = status_kib("VmHWM")
    input_mib = sum(v.rows.numel() * v.rows.element_size() if hasattr(v, "rows")
                    else v.numel() * v.element_size() for v in stacked.values()) / 2**20
    print(json.dumps({
        "label": label,
        "ms": 1000 * statistics.median(times),
        "ms_min": 1000 * min(times),
        "ms_max": 1000 * max(times),
        "peak_extra_mib": (peak - rss0) / 1024,
        "input_mib": input_mib,
        "kept": int(info.kept.sum()),
        "extra": {k: round(v, 4) for k, v in info.extra.items()},
        "threads": torch.get_num_threads(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", default="", help="comma-separated labels (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per rule (median)")
    ap.add_argument("--item-rows", action="store_true",
                    help="send the item table as touched rows (item_updates: sparse)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.repeats, args.item_rows)
        return
    labels = [r for r in args.rules.split(",") if r] or list(RULES)
    unknown = [r for r in labels if r not in RULES]
    if unknown:
        sys.exit(f"--rules: unknown {unknown}; valid: {', '.join(RULES)}")
    _, _, source = _param_shapes()
    print(f"# {N_CLIENTS} clients, SASRec ml-1m shapes ({source}), "
          f"{ROWS_PER_CLIENT} item rows per client"
          f"{' sent as touched rows' if args.item_rows else ''}, median of {args.repeats} calls")
    print(f"# cpu: {_cpu_model()}, {os.cpu_count()} cores; load average at start: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = []
    for label in labels:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", label,
             "--repeats", str(args.repeats)] + (["--item-rows"] if args.item_rows else []),
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            print(f"{label}: FAILED\n{proc.stderr}", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(res)
        print(f"  done {label}: {res['ms']:.0f} ms", file=sys.stderr, flush=True)
    print(f"# input: {rows[0]['input_mib']:.1f} MiB of updates; torch threads: "
          f"{rows[0]['threads']}" if rows else "# no results")
    print(f"# load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| rule | ms / aggregation (median) | min–max ms | peak extra RSS (MiB) | kept "
          "| notes |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        notes = ", ".join(f"{k}={v:g}" for k, v in r["extra"].items())
        print(f"| {r['label']} | {r['ms']:.0f} | {r['ms_min']:.0f}–{r['ms_max']:.0f} | "
              f"{r['peak_extra_mib']:.0f} | {r['kept']} | {notes} |")


if __name__ == "__main__":
    main()
