"""The local federated engine: rounds, resume, rejection of bad updates, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_FEDERATED, config_with, strip_timing

from attacks.base import Attack
from attacks.registry import ATTACKS
from clients.update import Update
from fedrec.engine.loop import Trainer
from fedrec.results import RunDir
from fedrec.runner import run_experiment

torch.set_num_threads(1)

TINY = TINY_FEDERATED


def _cfg(**over):
    return config_with(json.loads(json.dumps(TINY)), **over)


def _records(path):
    return strip_timing(RunDir(path).read_metrics())


def test_same_seed_same_results(tmp_path):
    a = run_experiment(_cfg(), tmp_path / "a", progress=False)
    b = run_experiment(_cfg(), tmp_path / "b", progress=False)
    assert a["test"] == b["test"]
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    c = run_experiment(_cfg(seed=1), tmp_path / "c", progress=False)
    assert c["test"] != a["test"]


@pytest.mark.parametrize("protocol,defense", [("fedsgd", "mean"), ("fedavg", "median")])
def test_interrupted_run_resumes_to_identical_result(tmp_path, monkeypatch, protocol, defense):
    cfg = _cfg(**{"federation.protocol": protocol, "defense.name": defense,
                  "federation.local_epochs": 2})
    full = run_experiment(cfg, tmp_path / "full", progress=False)

    from fedrec.engine import federated

    original = federated.FederatedTrainer.train_step
    calls = {"n": 0}

    def crashing(self, step):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return original(self, step)

    monkeypatch.setattr(federated.FederatedTrainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "cut", progress=False)
    assert not RunDir(tmp_path / "cut").is_finished()
    monkeypatch.setattr(federated.FederatedTrainer, "train_step", original)
    resumed = run_experiment(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed["test"] == full["test"]
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["trainer"]["params"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["trainer"]["params"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class _NaNAttack(Attack):
    name = "_test_nan"

    def _craft(self, model, global_params, client_id, threat, rc):
        return Update({n: torch.full_like(p, float("nan")) for n, p in global_params.items()}, 5)


@pytest.mark.parametrize("defense", ["sum", "median"])
def test_nonfinite_malicious_update_is_dropped(tmp_path, monkeypatch, defense):
    monkeypatch.setitem(ATTACKS, _NaNAttack.name, _NaNAttack)
    cfg = _cfg(**{"attack.name": "_test_nan", "attack.fraction": 0.05, "defense.name": defense,
                  "federation.epochs": 1})
    summary = run_experiment(cfg, tmp_path / "r", progress=False)
    recs = RunDir(tmp_path / "r").read_metrics()
    assert sum(r["train/dropped"] for r in recs) == 3  # 3 attackers, each once per epoch
    assert all(np.isfinite(v) for v in summary["test"].values())
    # dropped clients count as flagged: recall is 1 in rounds where an attacker took part
    assert all(r["train/defense/detect_recall"] == 1.0 for r in recs
               if r["train/defense/malicious_in_round"] > 0)


def test_federated_trainer_is_a_trainer():
    from fedrec.engine.federated import FederatedTrainer

    assert issubclass(FederatedTrainer, Trainer)


def test_unknown_defense_and_attack_are_one_line_errors(tmp_path):
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="defense"):
        run_experiment(_cfg(**{"defense.name": "nope"}), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="attack.name"):
        run_experiment(_cfg(**{"attack.name": "nope"}), tmp_path / "y", progress=False)


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_fltrust_gets_the_servers_root_update(tmp_path, protocol):
    from fedrec.engine.context import RunContext
    from fedrec.engine.federation import Federation, build_aggregator

    cfg = _cfg(**{"defense.name": "fltrust", "defense.root_users": 5, "federation.protocol": protocol,
                  "federation.epochs": 1})
    ctx = RunContext.build(cfg)
    fed = Federation.build(ctx)
    agg = build_aggregator(cfg, ctx.model.item_param_names, fed)
    params = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    root = agg.root_update_fn(params, 0)
    assert set(root) == set(params) and all(torch.isfinite(v).all() for v in root.values())
    assert any(v.abs().sum() > 0 for v in root.values())
    summary = run_experiment(cfg, tmp_path / "r", progress=False)
    recs = RunDir(tmp_path / "r").read_metrics()
    assert all("train/defense/trusted" in r for r in recs)
    assert np.isfinite(summary["test"]["full/HR@10"])


def test_a_rule_too_big_for_the_last_round_is_refused_before_training(tmp_path):
    """60 clients in rounds of 25: the last round of each epoch holds 10. Krum with f=4
    needs 2f+2 < n, i.e. 11 clients: refused at start with one line, before any round."""
    from fedrec.errors import ConfigError

    bad = _cfg(**{"defense.name": "krum", "defense.params": {"f": 4}, "federation.epochs": 1})
    with pytest.raises(ConfigError, match=r"at least 11 clients in a round.*has 10 \(60 clients "
                                          r"in rounds of 25\)"):
        run_experiment(bad, tmp_path / "bad", progress=False)
    bad_dir = tmp_path / "bad"
    assert not (bad_dir / "metrics.jsonl").exists() or not RunDir(bad_dir).read_metrics()
    ok = _cfg(**{"defense.name": "krum", "defense.params": {"f": 3}, "federation.epochs": 1})
    run_experiment(ok, tmp_path / "ok", progress=False)  # 2f+2 = 8 < 10: runs
    assert len(RunDir(tmp_path / "ok").read_metrics()) >= 3


def test_min_clients_of_the_f_rules():
    from defenses.registry import build_defense

    assert build_defense("krum", {"f": 4}).min_clients() == 11
    assert build_defense("multi_krum", {"f": 4}).min_clients() == 11
    assert build_defense("bulyan", {"f": 2}).min_clients() == 11
    assert build_defense("itemwise_krum", {"f": 1}).min_clients() == 5
    assert build_defense("mean", {}).min_clients() == 1
