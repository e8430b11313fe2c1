"""What keeps a million clients cheap: the same results as the per-user code it replaces.

The epoch order is shuffled once per epoch (not per round), evaluation can be restricted to a
seeded sample of users (``eval.users``, reported as ``eval_users``), the attacker's public
interactions and FedRecAttack's eligible users are computed in one pass, and rows of a flat
array are split into views without ``np.split``'s per-row overhead.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import TINY_FEDERATED, config_with

from attacks.fedrecattack import eligible_public_users
from attacks.threat import build_threat_model
from fedrec.config import AttackConfig
from fedrec.data.dataset import split_flat
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import generate
from fedrec.engine.context import RunContext
from fedrec.engine.schedule import RoundSchedule
from fedrec.errors import ConfigError


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate(n_users=400, n_items=120, seed=2, generator="vectorized"))


def test_split_flat_equals_np_split():
    flat = np.arange(20)
    offsets = np.array([0, 3, 3, 10, 20])
    got = split_flat(flat, offsets)
    want = np.split(flat, offsets[1:-1])
    assert len(got) == 4 and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert got[1].size == 0 and all(g.base is flat for g in got)


def test_schedule_shuffles_once_per_epoch_with_the_same_rounds():
    parts = np.arange(1, 1000, 3)
    sched = RoundSchedule(parts, clients_per_round=40, seed=5, epochs=3)
    for r in [0, 4, 8, 9, 17, 3, 25, 0]:  # across epochs, and back to an earlier one
        epoch, k = divmod(r, sched.rounds_per_epoch)
        order = np.random.default_rng([5, epoch, 11]).permutation(parts)  # the historical rule
        assert np.array_equal(sched.clients(r), np.sort(order[k * 40:(k + 1) * 40]))


def test_public_interactions_are_the_per_user_draws(split):
    cfg = AttackConfig(name="fedrecattack", fraction=0.01, knowledge={"public_fraction": 0.3})
    threat = build_threat_model(cfg, split, seed=4)
    prng = np.random.default_rng([4, 31])
    expected = [s[prng.random(len(s)) < 0.3] for s in split.train]  # one call per user
    assert len(threat.public) == split.n_users
    assert all(np.array_equal(a, b) for a, b in zip(threat.public, expected, strict=True))
    benign = set(threat.benign_users().tolist())
    loop = [u for u, s in enumerate(threat.public)
            if u in benign and len(s) and not np.isin(s, threat.targets).any()]
    got = eligible_public_users(threat.public, threat.benign_users(), threat.targets)
    assert got.tolist() == loop and 0 < len(loop) < split.n_users


def test_test_inputs_of_some_users(split):
    users = np.array([7, 0, 399])
    full = split.test_inputs()
    assert all(np.array_equal(a, full[u])
               for a, u in zip(split.test_inputs(users), users, strict=True))
    assert all(a is split.train[u] for a, u in zip(split.valid_inputs(users), users, strict=True))


def test_eval_users_samples_the_population_and_reports_its_size(split):
    ctx = RunContext.build(config_with(copy.deepcopy(TINY_FEDERATED), **{"eval.users": 50}), split)
    users = ctx.evaluated_users()
    assert len(users) == 50 and (np.diff(users) > 0).all()
    assert np.array_equal(users, ctx.evaluated_users())  # the same sample every time
    sampled = ctx.evaluate("test")
    assert sampled["eval_users"] == 50.0
    # the sample's metrics are those of evaluating exactly these users
    whole = RunContext.build(config_with(copy.deepcopy(TINY_FEDERATED)), split)
    whole.model.load_state_dict(ctx.model.state_dict())
    whole.eval_users = users
    same = whole.evaluate("test")
    assert "eval_users" not in same
    assert same == {k: v for k, v in sampled.items() if k != "eval_users"}
    # another eval.seed draws another sample; a size above the population evaluates everyone
    other = RunContext.build(config_with(copy.deepcopy(TINY_FEDERATED),
                                         **{"eval.users": 50, "eval.seed": 1}), split)
    assert not np.array_equal(other.evaluated_users(), users)
    big = RunContext.build(config_with(copy.deepcopy(TINY_FEDERATED), **{"eval.users": 10**6}), split)
    assert len(big.evaluated_users()) == split.n_users


def test_eval_users_must_be_positive():
    with pytest.raises(ConfigError, match="eval.users"):
        config_with(copy.deepcopy(TINY_FEDERATED), **{"eval.users": 0})
