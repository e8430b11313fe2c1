"""Attack contract: layout, determinism, scale, registry, threat model, runs in both engines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import param_copy, small_model

from attacks.base import NoAttack
from attacks.common import loss_update, next_logits
from attacks.registry import ATTACKS, attack_names, build_attack
from attacks.threat import build_threat_model, select_targets
from clients.update import RoundConfig, client_update
from fedrec.config import AttackConfig, TargetConfig, load_config
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import generate
from fedrec.errors import ConfigError

torch.set_num_threads(1)

# every registered attack and alias: a new attack is covered by the contract tests below
ALL = [n for n in attack_names() if n != "none"]
KNOW = {"popularity": True, "public_fraction": 0.3, "defense": "flame"}
FAST = {"dvfsr": {"repeats": 2}, "s_fsr": {"repeats": 2}, "pipattack": {"estimator_steps": 5},
        "a_hum": {"mining_steps": 3}, "dvfsr_adaptive": {"repeats": 2},
        "pipattack_adaptive": {"estimator_steps": 5}}


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate(n_users=40, n_items=30, max_len=16, mean_len=8, seed=4))


def _model(name, n_items, dropout=0.1):
    return small_model(name, n_items, hidden=8, max_len=8, dropout=dropout)


def _threat(split, name="dvfsr"):
    return build_threat_model(AttackConfig(name=name, fraction=0.05, knowledge=KNOW), split, 0)


def test_registry_names():
    assert attack_names() == sorted(["none", "dvfsr_ref", "dvfsr", "s_fsr", "c_fsr", "random",
                                     "popular", "bandwagon", "eb", "pipattack", "fedrecattack",
                                     "a_ra", "a_hum", "psmu", "alie", "ipm", "min_max",
                                     "min_sum", "fang_krum", "fang_trmean", "label_flip",
                                     "dvfsr_adaptive", "pipattack_adaptive",
                                     "dvfsr_ref_adaptive"])
    assert isinstance(build_attack("none", {}), NoAttack)
    assert build_attack("s_fsr", {}).implicit_weight == 0.0 and build_attack("s_fsr", {}).name == "s_fsr"
    assert build_attack("c_fsr", {}).explicit_weight == 0.0
    assert build_attack("a_ra", {}).mining_steps == 0
    assert build_attack("dvfsr_ref", {}).leak_substitution_grad is True
    with pytest.raises(ConfigError, match="attack.name='nope'"):
        build_attack("nope", {})
    with pytest.raises(ConfigError, match="attack.params.bogus"):
        build_attack("dvfsr", {"bogus": 1})
    with pytest.raises(ConfigError, match="attack.params.implicit_weight: fixed"):
        build_attack("s_fsr", {"implicit_weight": 1.0})
    with pytest.raises(ConfigError, match="attack.params"):
        build_attack("dvfsr", {"temperature": -1.0})
    assert set(ATTACKS) >= {"dvfsr", "random", "a_hum"}


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec", "gru4rec"])
def test_layout_equals_benign_layout_for_every_attack(split, protocol, model_name):
    model = _model(model_name, split.n_items)
    params = param_copy(model)
    threat = _threat(split)
    rc = RoundConfig(round=1, epoch=0, protocol=protocol, seed=2, local_epochs=2, local_lr=0.1)
    cid = int(threat.malicious_ids[0])
    benign = client_update(model, params, split.train[0], 0, rc)
    for name in ALL:
        upd = build_attack(name, FAST.get(name, {})).craft(model, params, cid, threat, rc)
        assert list(upd.params) == list(benign.params), name
        for n, v in upd.params.items():
            assert v.shape == benign.params[n].shape and v.dtype == benign.params[n].dtype, (name, n)
            assert torch.isfinite(v).all(), (name, n)
        assert sum(float(v.abs().sum()) for v in upd.params.values()) > 0, name
        assert isinstance(upd.num_examples, int) and upd.num_examples >= 1, name
        assert "loss" in upd.metrics, name


def test_model_poisoning_reports_account_count(split):
    model = _model("sasrec", split.n_items)
    threat = _threat(split)
    cid = int(threat.malicious_ids[0])
    upd = build_attack("psmu", {}).craft(model, param_copy(model), cid, threat, RoundConfig(round=0, epoch=0))
    assert upd.num_examples == len(threat.accounts[cid]) - 1


def test_deterministic_and_engine_rng_untouched(split):
    model = _model("sasrec", split.n_items, dropout=0.3)
    params = param_copy(model)
    threat = _threat(split)
    cid = int(threat.malicious_ids[1])
    rc = RoundConfig(round=3, epoch=1, seed=9)
    for name in ALL:
        attack = build_attack(name, FAST.get(name, {}))
        torch.manual_seed(123)
        a = attack.craft(model, params, cid, threat, rc)
        after_a = torch.rand(1)
        torch.manual_seed(456)  # a different engine-side torch state must not matter
        b = attack.craft(model, params, cid, threat, rc)
        for n in params:
            assert torch.equal(a.params[n], b.params[n]), (name, n)
        torch.manual_seed(123)
        assert torch.equal(torch.rand(1), after_a), name  # craft does not consume the global stream
    # a different round gives a different update for the randomised attacks
    a = build_attack("psmu", {}).craft(model, params, cid, threat, rc)
    b = build_attack("psmu", {}).craft(model, params, cid, threat, RoundConfig(round=4, epoch=1, seed=9))
    assert any(not torch.equal(a.params[n], b.params[n]) for n in params)


@pytest.mark.parametrize("name", ALL)
def test_scale_multiplies(split, name):
    model = _model("sasrec", split.n_items)
    params = param_copy(model)
    threat = _threat(split)
    cid = int(threat.malicious_ids[0])
    rc = RoundConfig(round=0, epoch=0, seed=1)
    one = build_attack(name, FAST.get(name, {})).craft(model, params, cid, threat, rc)
    three = build_attack(name, FAST.get(name, {}), scale=3.0).craft(model, params, cid, threat, rc)
    for n in params:
        torch.testing.assert_close(three.params[n], 3.0 * one.params[n])


def test_loss_update_fedavg_equals_manual_sgd(split):
    model = _model("sasrec", split.n_items, dropout=0.0)
    params = param_copy(model)
    seq = torch.tensor([[0, 3, 4, 5]])

    def loss_fn(m, step):
        m.eval()
        return -next_logits(m, seq)[0, 7] + 0.1 * step

    rc = RoundConfig(round=0, epoch=0, protocol="fedavg", local_epochs=3, local_lr=0.05)
    delta, _ = loss_update(model, params, loss_fn, rc)
    ref = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    for _ in range(3):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(ref[n])
        model.zero_grad()
        loss_fn(model, 0).backward()
        ref = {n: (ref[n] - 0.05 * p.grad).detach() for n, p in model.named_parameters()}
    for n in params:
        torch.testing.assert_close(delta[n], ref[n] - params[n], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="protocol"):
        loss_update(model, params, loss_fn, RoundConfig(round=0, epoch=0, protocol="sgd"))


# ----------------------------------------------------------------------------- threat model


def test_target_selection():
    counts = np.array([0, 5, 0, 3, 0, 9, 1])
    least = select_targets(TargetConfig(select="least_popular", n=2), counts, 6)
    assert least.tolist() == [2, 4]  # zero counts, ties by id
    assert select_targets(TargetConfig(select="ids", ids=[6, 1]), counts, 6).tolist() == [6, 1]
    # bucket (0, 0.5): the 3 most popular items 5, 1, 3
    b = select_targets(TargetConfig(select="bucket", n=2, bucket=(0.0, 0.5), seed=1), counts, 6)
    assert set(b.tolist()) <= {5, 1, 3} and len(set(b.tolist())) == 2
    b = select_targets(TargetConfig(select="bucket", n=3, bucket=(0.5, 1.0)), counts, 6)
    assert sorted(b.tolist()) == [2, 4, 6]
    assert len(select_targets(TargetConfig(select="none"), counts, 6)) == 0
    with pytest.raises(ConfigError, match="attack.targets.ids"):
        select_targets(TargetConfig(select="ids", ids=[7]), counts, 6)
    with pytest.raises(ConfigError, match="attack.targets.ids"):
        select_targets(TargetConfig(select="ids", ids=[]), counts, 6)
    with pytest.raises(ConfigError, match="attack.targets.bucket"):
        select_targets(TargetConfig(select="bucket", n=4, bucket=(0.0, 0.5)), counts, 6)
    with pytest.raises(ConfigError, match="attack.targets.n"):
        select_targets(TargetConfig(select="least_popular", n=7), counts, 6)


def test_threat_model_knowledge_and_lengths(split):
    with pytest.raises(ConfigError, match="attack.knowledge.popularity"):
        build_threat_model(AttackConfig(name="popular"), split, 0)
    with pytest.raises(ConfigError, match="attack.knowledge.popularity"):
        build_threat_model(AttackConfig(name="pipattack"), split, 0)
    with pytest.raises(ConfigError, match="attack.knowledge.public_fraction"):
        build_threat_model(AttackConfig(name="fedrecattack"), split, 0)
    t = _threat(split)
    assert t.lengths.tolist() == [len(s) for s in split.train]
    assert t.n_malicious == 2 and t.malicious_ids.tolist() == [40, 41]
    for c in t.malicious_ids:
        assert any(np.array_equal(t.accounts[int(c)], s) for s in split.train)


# ----------------------------------------------------------------------------- end to end


def _tiny_raw(attack: str, engine: str = "local", protocol: str = "fedsgd") -> dict:
    know = dict(KNOW)
    return {
        "mode": "federated",
        "data": {"synthetic": {"n_users": 30, "n_items": 40, "max_len": 20, "mean_len": 8}},
        "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "dropout": 0.0, "max_len": 10},
        "federation": {"epochs": None, "rounds": 2, "clients_per_round": 16, "server_lr": 0.2, "protocol": protocol,
                       "local_epochs": 2, "local_lr": 0.3, "engine": engine},
        "eval": {"n_negatives": 10, "ks": [10]},
        "defense": {"name": "sum"},
        "attack": {"name": attack, "fraction": 0.1, "knowledge": know, "params": FAST.get(attack, {})},
    }


def test_every_attack_runs_in_the_local_engine(tmp_path):
    from fedrec.runner import run_experiment

    for name in ALL:
        raw = _tiny_raw(name, protocol="fedavg" if name in ("random", "psmu") else "fedsgd")
        summary = run_experiment(load_config(base=raw), tmp_path / name, progress=False)
        assert "sampled/ER@10" in summary["test"], name
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 2
        assert sum(m.get("train/defense/malicious_in_round", 0) for m in metrics) >= 1, name


@pytest.mark.slow
def test_dvfsr_local_and_flower_engines_agree(tmp_path):
    from fedrec.runner import run_experiment

    out = {}
    for engine in ("local", "flower"):
        raw = _tiny_raw("dvfsr", engine)
        raw["attack"]["params"] = {"repeats": 2}
        run_experiment(load_config(base=raw), tmp_path / engine, progress=False)
        out[engine] = torch.load(tmp_path / engine / "checkpoint.pt", weights_only=True)["trainer"]["params"]
    diff = max((out["local"][k] - out["flower"][k]).abs().max().item() for k in out["local"])
    # Both engines run float32 (the Ray workers build the model from the config, so there is
    # no float64 run) and differ only in summation order. Each round adds to a parameter a sum
    # over n = clients_per_round * max_len * hidden products; rounding in random order grows
    # like sqrt(n) * eps32 of the magnitudes involved (|theta|), so over R rounds allow
    # 2 * R * sqrt(n) * eps32 * max|theta| (~2e-5 here; the usual gap is one ulp, ~1e-7).
    fed, net = raw["federation"], raw["model"]
    n = fed["clients_per_round"] * net["max_len"] * net["hidden"]
    theta = max(v.abs().max().item() for v in out["local"].values())
    tol = 2 * fed["rounds"] * math.sqrt(n) * torch.finfo(torch.float32).eps * theta
    assert diff <= tol, (diff, tol)
