"""Adaptive DV-FSR and PipAttack pass the check of the assumed rule; the plain attacks do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import param_copy, small_model

from attacks.adaptive import (
    DEFENSE_CHECKS,
    angle_limit,
    checks_for,
    constrain_angle,
    constrain_distance,
    cosine,
    distance_radius,
    norm_limit,
)
from attacks.coalition import CoalitionPool, flatten_update
from attacks.registry import build_attack
from attacks.threat import build_threat_model
from clients.update import RoundConfig, client_update
from defenses.distance import krum_scores
from defenses.linalg import pairwise_sq_dists
from defenses.registry import DEFENSES
from fedrec.config import AttackConfig, load_config
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import generate
from fedrec.errors import ConfigError

torch.set_num_threads(1)
RC = RoundConfig(round=0, epoch=0, seed=0)


@pytest.fixture(scope="module")
def world():
    split = leave_one_out(generate(n_users=60, n_items=30, max_len=16, mean_len=8, seed=4))
    model = small_model("sasrec", split.n_items, hidden=8, max_len=8, dropout=0.0)
    return split, model, param_copy(model)


def _threat(split, name, defense, budget=1.0):
    know = {"popularity": True, "defense": defense, "budget": budget}
    return build_threat_model(AttackConfig(name=name, fraction=0.1, knowledge=know), split, 0)


def _pair(world, base, defense, budget=1.0, fast=None):
    """(adaptive upload, plain upload, coalition benign stack, threat) of the first attacker."""
    split, model, params = world
    threat = _threat(split, f"{base}_adaptive", defense, budget)
    cid = int(threat.malicious_ids[0])
    fast = fast or {}
    ad = build_attack(f"{base}_adaptive", fast).craft(model, params, cid, threat, RC)
    plain = build_attack(base, fast).craft(model, params, cid, threat, RC)
    benign = CoalitionPool().stack(model, params, threat, RC)
    return ad, plain, benign, threat


FAST = {"dvfsr": {"repeats": 1}, "pipattack": {"estimator_steps": 5}}


@pytest.mark.parametrize("base", ["dvfsr", "pipattack"])
def test_norm_inside_the_benign_quantile_plain_is_not(world, base):
    ad, plain, benign, _ = _pair(world, base, "norm_bound", fast=FAST[base])
    limit = norm_limit(benign, 0.5, 1.0)
    assert float(flatten_update(ad.params).norm()) <= limit * (1 + 1e-6)
    assert float(flatten_update(plain.params).norm()) > limit
    assert ad.metrics["norm_after_adapt"] < ad.metrics["norm_before_adapt"]


def test_krum_selects_the_adaptive_upload_and_not_the_plain_one(world):
    split, model, params = world
    ad, plain, benign, threat = _pair(world, "dvfsr", "krum", budget=0.25, fast=FAST["dvfsr"])
    # a constructed round: 20 benign users' real updates, the adaptive and the plain upload
    honest = [flatten_update(client_update(model, params, split.train[u], u, RC).params)
              for u in range(20)]
    flat = torch.stack(honest + [flatten_update(ad.params), flatten_update(plain.params)])
    scores = krum_scores(pairwise_sq_dists(flat), 1)
    assert int(torch.argmin(scores)) == 20  # Krum (f = 1) selects the adaptive upload
    assert int(torch.argmax(scores)) == 21  # and scores the plain DV-FSR upload worst
    assert float((flatten_update(ad.params) - benign.mean(0)).norm()) <= \
        distance_radius(benign, 0.5, 0.25) * (1 + 1e-6)


def test_flame_angle_and_norm_both_hold(world):
    ad, plain, benign, _ = _pair(world, "pipattack", "flame", fast=FAST["pipattack"])
    u, p, mu = flatten_update(ad.params), flatten_update(plain.params), benign.mean(0)
    limit = angle_limit(benign, 0.5, 1.0)
    assert float(1 - cosine(u, mu)) <= limit + 1e-6
    assert float(1 - cosine(p, mu)) > limit
    assert float(u.norm()) <= norm_limit(benign, 0.5, 1.0) * (1 + 1e-6)


def test_itemwise_rules_get_a_benign_sparsity_pattern(world):
    split, model, params = world
    ad, plain, benign, threat = _pair(world, "dvfsr", "itemwise_median", fast=FAST["dvfsr"])
    cid = int(threat.malicious_ids[0])
    own = client_update(model, params, threat.accounts[cid], cid, RC).params["item_emb.weight"]
    def rows(table):
        return set(torch.nonzero(table.abs().sum(1) > 0).flatten().tolist())

    allowed = rows(own) | set(threat.targets.tolist())
    touched = rows(ad.params["item_emb.weight"])
    plain_rows = rows(plain.params["item_emb.weight"])
    assert touched <= allowed
    assert not plain_rows <= allowed  # DV-FSR's negatives and substitutions touch other rows


def test_coordinate_rules_clip_into_the_benign_box(world):
    ad, plain, benign, _ = _pair(world, "dvfsr", "median", fast=FAST["dvfsr"])
    u, p = flatten_update(ad.params), flatten_update(plain.params)
    mu, sd = benign.mean(0), benign.std(0, unbiased=False)
    assert bool(((u - mu).abs() <= sd + 1e-6).all())
    assert not bool(((p - mu).abs() <= sd + 1e-6).all())


def test_projections_on_a_toy_stack():
    g = torch.Generator().manual_seed(0)
    benign = torch.randn(6, 40, generator=g, dtype=torch.float64) + 1.0
    far = torch.randn(40, generator=g, dtype=torch.float64) * 10 - 5
    near = constrain_distance(far, benign, 0.5, 1.0)
    assert float((near - benign.mean(0)).norm()) == pytest.approx(distance_radius(benign, 0.5, 1.0))
    inside = benign.mean(0) + 1e-3
    assert torch.equal(constrain_distance(inside, benign, 0.5, 1.0), inside)  # already passes
    turned = constrain_angle(far, benign, 0.5, 1.0)
    assert float(1 - cosine(turned, benign.mean(0))) <= angle_limit(benign, 0.5, 1.0) + 1e-9


def test_no_check_for_the_mean_leaves_the_attack_unchanged(world):
    ad, plain, _, _ = _pair(world, "dvfsr", "unweighted_mean", fast=FAST["dvfsr"])
    for n in ad.params:
        assert torch.equal(ad.params[n], plain.params[n])


def test_every_registered_rule_has_checks_and_the_knowledge_is_required(world):
    split, _, _ = world
    assert set(DEFENSE_CHECKS) == set(DEFENSES)
    assert checks_for("flame") == ("angle", "norm")
    with pytest.raises(ConfigError, match="attack.knowledge.defense"):
        build_threat_model(AttackConfig(name="dvfsr_adaptive", fraction=0.1), split, 0)
    with pytest.raises(ConfigError, match="attack.knowledge.defense"):
        load_config(base={"mode": "federated", "data": {"synthetic": {"n_users": 10}},
                          "attack": {"name": "dvfsr_adaptive", "knowledge": {"defense": "krumm"}}})
    assert np.isclose(_threat(split, "dvfsr_adaptive", "krum", 0.25).budget, 0.25)
