"""Attack success, utility and cost of every registered attack under one federated protocol.

Default protocol: ``experiments/attacks/dvfsr_steam.yaml`` (the DV-FSR reference protocol on
Steam-200K: SASRec 64/2/2, dropout 0.1, max_len 200, BCE with 1 negative, FedSGD with summed
gradients over rounds of 256 clients, server lr 1e-3, ρ = 0.1 % added attackers, least-popular
target, 3 epochs). Every attack runs the same config with only ``attack.name`` (and the
knowledge the attack needs: popularity for popular/bandwagon/pipattack, ξ = 1 % public
interactions for fedrecattack) changed; the DV-FSR family keeps the config's ``attack.params``.

``--attacks`` also accepts the variant labels of :data:`VARIANTS` (``dvfsr_leak``: DV-FSR with
the reference code's accidental extra CE gradient). Reported per attack (test split, benign
users; ER over benign users without the target): sampled-protocol ER@5/10/20 (1,000 uniform
negatives, target in every candidate list), full-ranking ER@5/10/20, HR@10 and NDCG@10 in both protocols, training wall time per epoch, and the
time of one malicious ``craft`` at the final global parameters (median of 3).

``--craft-only`` runs no training: it times one attacker's ``craft``, cold (the first of a
round, which also computes the coalition's shared benign-like updates where the attack uses
them) and warm (again in the same round, the memo reused), at the initial global parameters
or at ``--params`` (e.g. a converged ``model.pt``)::

    python benchmarks/attacks.py --craft-only --attacks dvfsr,pipattack,alie,min_max --threads 1

``--diagnose`` also prints, at the initial and the final global parameters of each run, the
L2 norm of one malicious update and of the summed benign gradient of a 256-client round (whole
update and the target's item-embedding row), and the mean target logit over benign users
against the mean logit of all items — the checks behind "does the target's score rise and how
big is the malicious push compared with the benign sum".

Each run writes a normal run directory under ``--out``; finished runs are reused unless
``--overwrite``. Usage::

    FEDREC_DATA=../shared/data python benchmarks/attacks.py --out runs/bench_attacks
    python benchmarks/attacks.py --attacks none,dvfsr --set federation.epochs=1 --diagnose
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

# This file is named like the ``attacks`` package; drop its folder from the import path so
# that ``import attacks`` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "experiments" / "attacks" / "dvfsr_steam.yaml"

ATTACKS = ["none", "dvfsr", "s_fsr", "c_fsr", "random", "popular", "bandwagon", "eb",
           "pipattack", "fedrecattack", "a_ra", "a_hum", "psmu"]
#: the general model-poisoning and adaptive attacks (issue 18); ``--craft-only`` times them
GENERAL = ["alie", "ipm", "min_max", "min_sum", "fang_krum", "fang_trmean", "label_flip",
           "dvfsr_adaptive", "dvfsr_ref_adaptive", "pipattack_adaptive"]
DVFSR_FAMILY = {"dvfsr", "s_fsr", "c_fsr", "dvfsr_adaptive"}
#: extra rows: label -> (attack, params added to the config's attack.params)
VARIANTS = {"dvfsr_leak": ("dvfsr", {"leak_substitution_grad": True}),
            "s_fsr_leak": ("s_fsr", {"leak_substitution_grad": True})}
KNOWLEDGE = {"popular": {"popularity": True}, "bandwagon": {"popularity": True},
             "pipattack": {"popularity": True}, "fedrecattack": {"public_fraction": 0.01},
             # the adaptive attacks assume FLAME (angle and norm checks: the two costliest)
             "dvfsr_adaptive": {"defense": "flame"}, "dvfsr_ref_adaptive": {"defense": "flame"},
             "pipattack_adaptive": {"popularity": True, "defense": "flame"}}


def attack_raw(base: dict, label: str) -> dict:
    """The config of one benchmark row: ``base`` with attack ``label`` (a registry name or a
    :data:`VARIANTS` label) and the knowledge it needs."""
    from attacks.registry import ALIASES

    name, extra = VARIANTS.get(label, (label, {}))
    raw = copy.deepcopy(base)
    att = raw.setdefault("attack", {})
    params = dict(att.get("params") or {}) if name in DVFSR_FAMILY else {}
    for key in ALIASES.get(name, (None, {}))[1]:
        params.pop(key, None)
    params.update(extra)
    att["name"] = name
    att["params"] = params
    att["knowledge"] = {**(att.get("knowledge") or {}), **KNOWLEDGE.get(name, {})}
    raw["name"] = f"{raw.get('name', 'attacks')}_{label}"
    return raw


def _load_final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    from fedrec.results import load_checkpoint_file

    return load_checkpoint_file(run_dir / "checkpoint.pt")["trainer"]["params"]


def _norm(t: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in t.values())))


def diagnose(cfg, params: dict[str, torch.Tensor]) -> dict[str, float]:
    """Magnitudes of malicious vs summed benign updates and the target's score at ``params``."""
    from clients.update import RoundConfig, combined_fedsgd_gradient
    from fedrec.engine.context import RunContext
    from fedrec.engine.federation import Federation

    ctx = RunContext.build(cfg)
    fed = Federation.build(ctx)
    t = int(fed.threat.targets[0])
    rc = RoundConfig(round=0, epoch=0, protocol=cfg.federation.protocol, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    benign = np.sort(rng.choice(fed.threat.benign_users(), size=min(256, len(fed.threat.benign_users())),
                                replace=False))
    seqs = [ctx.split.train[int(u)] for u in benign]
    g_sum, _ = combined_fedsgd_gradient(ctx.model, params, seqs, benign, torch.ones(len(benign)), rc)
    out = {"benign_sum_norm": _norm(g_sum), "benign_sum_target_row": float(g_sum["item_emb.weight"][t].norm())}
    if fed.threat.n_malicious and cfg.attack.name != "none":
        upd = fed.attack.craft(ctx.model, params, int(fed.threat.malicious_ids[0]), fed.threat, rc)
        out["malicious_norm"] = _norm(upd.params)
        out["malicious_target_row"] = float(upd.params["item_emb.weight"][t].norm())
    with torch.no_grad():
        for n, p in ctx.model.named_parameters():
            p.copy_(params[n])
        ctx.model.eval()
        hist = ctx.split.test_inputs()
        users = fed.threat.benign_users()[:512]
        seqs_t = ctx.model.histories_to_tensor([hist[int(u)] for u in users])
        scores = ctx.model.scores(seqs_t)[:, 1:]
        out["target_logit"] = float(scores[:, t - 1].mean())
        out["mean_logit"] = float(scores.mean())
        out["target_rank_full"] = float((scores > scores[:, t - 1: t]).sum(1).float().mean() + 1)
    return out


def craft_seconds(cfg, params: dict[str, torch.Tensor], repeats: int = 3) -> float:
    """Median wall time of one malicious ``craft`` at ``params``."""
    from clients.update import RoundConfig
    from fedrec.engine.context import RunContext
    from fedrec.engine.federation import Federation

    ctx = RunContext.build(cfg)
    fed = Federation.build(ctx)
    if not fed.threat.n_malicious:
        return float("nan")
    cid = int(fed.threat.malicious_ids[0])
    times = []
    for r in range(repeats):
        rc = RoundConfig(round=r, epoch=0, protocol=cfg.federation.protocol, seed=cfg.seed,
                         local_epochs=cfg.federation.local_epochs, local_lr=cfg.federation.local_lr)
        t0 = time.perf_counter()
        fed.attack.craft(ctx.model, params, cid, fed.threat, rc)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def round_craft_seconds(cfg, params: dict[str, torch.Tensor], rounds: int = 3
                        ) -> tuple[float, float]:
    """Craft cost of one attacker within a round: ``(cold, warm)``, medians over ``rounds``.

    *cold*: the first craft of a round. *warm*: the same attacker crafting again in that round
    with the attack object reused, as the local engine reuses it for the round's other
    attackers. The coalition attacks (ALIE, IPM, Min-Max/Sum, Fang, the adaptive ones) compute
    the coalition's benign-like updates once per round and process (:mod:`attacks.coalition`):
    cold includes that, warm does not. A round with ``k`` attackers costs about
    ``cold + (k − 1) · warm`` (accounts of other lengths aside).
    """
    from clients.update import RoundConfig
    from fedrec.engine.context import RunContext
    from fedrec.engine.federation import Federation

    ctx = RunContext.build(cfg)
    fed = Federation.build(ctx)
    cid = int(fed.threat.malicious_ids[0])
    cold, warm = [], []
    for r in range(rounds):
        rc = RoundConfig(round=r, epoch=0, protocol=cfg.federation.protocol, seed=cfg.seed,
                         local_epochs=cfg.federation.local_epochs, local_lr=cfg.federation.local_lr)
        for times in (cold, warm):
            t0 = time.perf_counter()
            fed.attack.craft(ctx.model, params, cid, fed.threat, rc)
            times.append(time.perf_counter() - t0)
    return statistics.median(cold), statistics.median(warm)


def craft_table(base: dict, names: list[str], params_file: str | None, rounds: int) -> str:
    """Markdown table of :func:`round_craft_seconds` for attacks ``names`` (no training)."""
    from fedrec.config import validate_config
    from fedrec.engine.context import RunContext
    from fedrec.engine.converged import load_initial_params

    lines = ["| attack | cold craft, first of a round (s) | warm craft, same round (s) |",
             "|---|---|---|"]
    params = None
    for name in names:
        cfg = validate_config(attack_raw(base, name), f"benchmark[{name}]")
        if params is None:
            model = RunContext.build(cfg).model
            like = {n: p.detach().clone() for n, p in model.named_parameters()}
            params = load_initial_params(params_file, like) if params_file else like
        a, b = round_craft_seconds(cfg, params, rounds)
        lines.append(f"| {name} | {a:.3f} | {b:.3f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def run_row(name: str, raw: dict, out: Path, overwrite: bool, do_diagnose: bool) -> dict:
    """Run (or reuse) one attack and return its table row."""
    from fedrec.config import validate_config
    from fedrec.runner import run_experiment

    cfg = validate_config(raw, f"benchmark[{name}]")
    run_dir = out / name
    summary_file = run_dir / "summary.json"
    if summary_file.is_file() and not overwrite:
        summary = json.loads(summary_file.read_text())
    else:
        summary = run_experiment(cfg, run_dir, overwrite=True, progress=False)
    test = summary["test"]
    epochs = cfg.federation.epochs or 1
    row = {"attack": name, **{k: test.get(k, float("nan")) for k in sorted(test)},
           "seconds_per_epoch": summary["train_seconds"] / epochs,
           "targets": summary.get("targets")}
    final = _load_final_params(run_dir)
    row["craft_seconds"] = craft_seconds(cfg, final) if name != "none" else float("nan")
    if do_diagnose:
        from fedrec.engine.context import RunContext

        init = {n: p.detach().clone() for n, p in RunContext.build(cfg).model.named_parameters()}
        row["diag_initial"] = diagnose(cfg, init)
        row["diag_final"] = diagnose(cfg, final)
    (run_dir / "bench_row.json").write_text(json.dumps(row, indent=1, sort_keys=True))
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    cols = [("sampled/ER@5", "s-ER@5"), ("sampled/ER@10", "s-ER@10"), ("sampled/ER@20", "s-ER@20"),
            ("full/ER@5", "f-ER@5"), ("full/ER@10", "f-ER@10"), ("full/ER@20", "f-ER@20"),
            ("sampled/HR@10", "s-HR@10"), ("sampled/NDCG@10", "s-NDCG@10"),
            ("full/HR@10", "f-HR@10"), ("full/NDCG@10", "f-NDCG@10")]
    head = "| attack | " + " | ".join(c[1] for c in cols) + " | s/epoch | craft s |"
    sep = "|" + "---|" * (len(cols) + 3)
    lines = [head, sep]
    for r in rows:
        vals = " | ".join(f"{r.get(k, float('nan')):.4f}" for k, _ in cols)
        lines.append(f"| {r['attack']} | {vals} | {r['seconds_per_epoch']:.0f} | {r['craft_seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    from fedrec.config import apply_overrides, read_yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--out", default="runs/bench_attacks")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--craft-only", action="store_true",
                    help="no training: time one attacker's craft, cold (first of a round) and "
                         "warm (again in that round), at the initial or --params parameters")
    ap.add_argument("--params", default=None,
                    help="with --craft-only: a run directory (its model.pt) or .pt file")
    ap.add_argument("--rounds", type=int, default=3, help="with --craft-only: rounds timed")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = apply_overrides(read_yaml(args.config), args.overrides)
    base.setdefault("name", Path(args.config).stem)
    if args.craft_only:
        names = [a.strip() for a in args.attacks.split(",") if a.strip() and a.strip() != "none"]
        print(craft_table(base, names, args.params, args.rounds))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [a.strip() for a in args.attacks.split(",") if a.strip()]:
        t0 = time.time()
        row = run_row(name, attack_raw(base, name), out, args.overwrite, args.diagnose)
        rows.append(row)
        print(f"[{name}] done in {time.time() - t0:.0f}s: sampled/ER@10={row.get('sampled/ER@10', float('nan')):.4f} "
              f"full/ER@10={row.get('full/ER@10', float('nan')):.4f}", flush=True)
        if args.diagnose:
            print(f"  initial: {json.dumps(row['diag_initial'])}\n  final:   {json.dumps(row['diag_final'])}", flush=True)
    print(table(rows))
    (out / "table.md").write_text(table(rows) + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
