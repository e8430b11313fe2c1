"""General model-poisoning attacks: each paper's equation on toy stacks, and the coalition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import param_copy, small_model

from attacks.alie import alie_update, alie_z, expected_per_round, project_box
from attacks.coalition import CoalitionPool, flatten_update, unflatten_like
from attacks.fang import (
    _krum_picks_on_line,
    fang_krum_update,
    fang_trmean_update,
    krum_picks_crafted,
)
from attacks.flipping import mirror_map, popularity_map
from attacks.ipm import ipm_update
from attacks.minmax import (
    min_max_line,
    min_max_ok,
    min_sum_line,
    min_sum_ok,
    perturbation,
    search_gamma,
    search_gamma_line,
)
from attacks.registry import build_attack
from attacks.threat import build_threat_model
from clients.update import RoundConfig, client_torch_rng, client_update
from defenses.base import AggregationContext
from defenses.registry import build_defense
from fedrec.config import AttackConfig
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import generate
from fedrec.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    split = leave_one_out(generate(n_users=40, n_items=30, max_len=16, mean_len=8, seed=4))
    model = small_model("sasrec", split.n_items, hidden=8, max_len=8, dropout=0.1)
    threat = build_threat_model(AttackConfig(name="alie", fraction=0.1,
                                             knowledge={"popularity": True}), split, 0)
    return split, model, param_copy(model), threat


def _coalition(model, params, threat, rc):
    rows = []
    for c in sorted(threat.accounts):
        with client_torch_rng(rc, c):
            upd = client_update(model, params, threat.accounts[c], c, rc)
            rows.append(flatten_update(upd.params))
    return torch.stack(rows)


def _flat(upd):
    return flatten_update(upd.params)


# ----------------------------------------------------------------------------- coalition


def test_coalition_is_the_accounts_benign_updates_whoever_crafts(setup):
    _, model, params, threat = setup
    rc = RoundConfig(round=2, epoch=0, seed=3)
    expected = _coalition(model, params, threat, rc)
    pool = CoalitionPool()
    torch.manual_seed(0)
    a = pool.stack(model, params, threat, rc).clone()
    torch.manual_seed(99)  # the caller's torch state (dropout) does not matter
    b = CoalitionPool().stack(model, params, threat, rc)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(b, expected)
    # two attackers of the same round upload the same ALIE vector
    atk = build_attack("alie", {})
    ids = threat.malicious_ids
    u0, u1 = (_flat(atk.craft(model, params, int(c), threat, rc)) for c in ids[:2])
    torch.testing.assert_close(u0, u1)
    vec = torch.arange(a.shape[1], dtype=torch.float64)
    back = unflatten_like(vec, params)
    assert torch.equal(flatten_update(back), vec.to(torch.float32).double())


def test_coalition_derived_values_are_computed_once_per_round(setup):
    _, model, params, threat = setup
    pool = CoalitionPool()
    with pytest.raises(RuntimeError, match="stack"):
        pool.derived("x", lambda b: b.sum())
    calls = []

    def mean(b):
        calls.append(1)
        return b.mean(0)

    rc0, rc1 = RoundConfig(round=0, epoch=0, seed=1), RoundConfig(round=1, epoch=0, seed=1)
    for _ in range(3):  # three attackers of round 0
        b0 = pool.stack(model, params, threat, rc0)
        m0 = pool.derived("mean", mean)
    assert len(calls) == 1
    torch.testing.assert_close(m0, _coalition(model, params, threat, rc0).mean(0))
    b1 = pool.stack(model, params, threat, rc1)  # a new round: the pool and its values anew
    m1 = pool.derived("mean", mean)
    assert len(calls) == 2 and not torch.equal(b0, b1)
    torch.testing.assert_close(m1, b1.mean(0))


# ----------------------------------------------------------------------------- ALIE


def test_alie_z_is_the_papers_formula():
    # n = 50, f = 12: s = floor(26) - 12 = 14, z = Phi^-1(36 / 50) = Phi^-1(0.72)
    assert alie_z(50, 12) == pytest.approx(0.582841507, abs=1e-8)
    # n = 256, f = 3: s = 129 - 3 = 126, z = Phi^-1(130 / 256)
    assert alie_z(256, 3) == pytest.approx(0.019582, abs=1e-5)
    assert alie_z(100, 20) > alie_z(100, 10) > alie_z(100, 1)  # more attackers, more room
    with pytest.raises(ValueError, match="f"):
        alie_z(10, 0)
    with pytest.raises(ValueError, match="not in"):
        alie_z(10, 6)  # s = 0: (n - s)/n = 1


def test_alie_update_is_mean_minus_z_std_of_the_coalition(setup):
    _, model, params, threat = setup
    rc = RoundConfig(round=0, epoch=0, seed=1)
    benign = _coalition(model, params, threat, rc)
    mu, sigma = benign.mean(0), benign.std(0, unbiased=False)
    atk = build_attack("alie", {"n_clients": 20, "n_byzantine": 4})
    cid = int(threat.malicious_ids[0])
    got = _flat(atk.craft(model, params, cid, threat, rc))
    z = alie_z(20, 4)
    torch.testing.assert_close(got, (mu - z * sigma).float().double(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alie_update(mu, sigma, z), mu - z * sigma)
    # default f: the malicious clients expected in a round of n_clients
    assert expected_per_round(20, threat) == round(20 * threat.n_malicious / threat.n_clients)
    default = build_attack("alie", {"n_clients": 20}).z_for(threat)
    assert default == alie_z(20, expected_per_round(20, threat))


def test_alie_targeted_stays_in_the_box(setup):
    _, model, params, threat = setup
    rc = RoundConfig(round=0, epoch=0, seed=1)
    benign = _coalition(model, params, threat, rc)
    mu, sigma = benign.mean(0), benign.std(0, unbiased=False)
    atk = build_attack("alie", {"z": 1.5, "targeted": True})
    got = _flat(atk.craft(model, params, int(threat.malicious_ids[0]), threat, rc))
    assert bool((got >= mu - 1.5 * sigma - 1e-6).all() and (got <= mu + 1.5 * sigma + 1e-6).all())
    x = torch.tensor([5.0, -5.0, 0.1])
    out = project_box(x, torch.zeros(3), torch.ones(3), 2.0)
    assert out.tolist() == pytest.approx([2.0, -2.0, 0.1])


# ----------------------------------------------------------------------------- IPM


def test_ipm_is_minus_epsilon_times_the_benign_mean(setup):
    _, model, params, threat = setup
    rc = RoundConfig(round=1, epoch=0, seed=2)
    benign = _coalition(model, params, threat, rc)
    cid = int(threat.malicious_ids[1])
    got = _flat(build_attack("ipm", {"epsilon": 0.3}).craft(model, params, cid, threat, rc))
    torch.testing.assert_close(got, (-0.3 * benign.mean(0)).float().double())
    assert torch.dot(got, benign.mean(0)) < 0  # the inner product with the benign mean flips
    torch.testing.assert_close(ipm_update(benign, 2.0), -2.0 * benign.mean(0))


# ----------------------------------------------------------------------------- Min-Max / Min-Sum


def _toy_stack(seed=0, m=8, d=60):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=torch.float64) + 0.7


@pytest.mark.parametrize("direction", ["unit", "std", "sign"])
def test_min_max_reaches_the_benign_max_pairwise_distance(direction):
    benign = _toy_stack()
    mu = benign.mean(0)
    p = perturbation(benign, direction)
    gamma = search_gamma(min_max_ok(benign), mu, p, gamma_init=10.0, tau=1e-7)
    m = mu - gamma * p
    bound = float(torch.cdist(benign, benign).max())
    worst = float(torch.linalg.vector_norm(benign - m, dim=1).max())
    assert gamma > 0
    assert worst <= bound + 1e-9
    assert worst == pytest.approx(bound, rel=1e-4)  # the constraint binds at the largest gamma


def test_min_sum_reaches_the_sum_of_squares_bound():
    benign = _toy_stack(1)
    mu = benign.mean(0)
    p = perturbation(benign, "std")
    gamma = search_gamma(min_sum_ok(benign), mu, p, gamma_init=10.0, tau=1e-7)
    m = mu - gamma * p
    total = float(((benign - m) ** 2).sum())
    bound = float((torch.cdist(benign, benign) ** 2).sum(1).max())
    assert gamma > 0 and total <= bound * (1 + 1e-9)
    assert total == pytest.approx(bound, rel=1e-4)


@pytest.mark.parametrize("direction", ["unit", "std", "sign"])
def test_line_conditions_equal_the_general_ones(direction):
    """The O(m)-per-step line search finds the gamma of the search on full vectors."""
    benign = _toy_stack(2, m=12, d=90)
    mu, p = benign.mean(0), perturbation(benign, direction)
    for line, general in ((min_max_line, min_max_ok), (min_sum_line, min_sum_ok)):
        fast = search_gamma_line(line(benign, mu, p), gamma_init=10.0, tau=1e-7)
        slow = search_gamma(general(benign), mu, p, gamma_init=10.0, tau=1e-7)
        assert fast > 0
        assert fast == pytest.approx(slow, rel=1e-6, abs=1e-6)
        ok = line(benign, mu, p)
        for gamma in (0.0, fast / 2, fast * 0.999, fast * 1.01, 2 * fast):
            assert ok(gamma) == general(benign)(mu - gamma * p)


def test_min_max_attack_uses_the_coalition(setup):
    _, model, params, threat = setup
    rc = RoundConfig(round=0, epoch=0, seed=5)
    benign = _coalition(model, params, threat, rc)
    upd = build_attack("min_max", {"direction": "unit", "tau": 1e-6}).craft(
        model, params, int(threat.malicious_ids[0]), threat, rc)
    got = _flat(upd)
    worst = float(torch.linalg.vector_norm(benign - got, dim=1).max())
    assert upd.metrics["gamma"] > 0
    assert worst == pytest.approx(float(torch.cdist(benign, benign).max()), rel=1e-3)


# ----------------------------------------------------------------------------- Fang


def test_fang_krum_upload_is_selected_by_krum_on_a_constructed_round():
    g = torch.Generator().manual_seed(3)
    benign = torch.randn(10, 200, generator=g, dtype=torch.float64) + 0.5
    crafted, lam, picked = fang_krum_update(benign, copies=3, f=3)
    assert picked and lam > 0
    assert torch.equal(crafted, -lam * torch.sign(benign.mean(0)))  # against the benign direction
    assert torch.dot(crafted, benign.mean(0)) < 0
    round_ = torch.cat([benign, crafted.expand(3, -1)]).float()
    rule = build_defense("krum", {"f": 3})
    _, info = rule({"w": round_}, torch.ones(13, dtype=torch.float64), AggregationContext())
    assert info.kept.nonzero().flatten().tolist()[0] >= 10  # Krum keeps a crafted upload
    # a large lambda is not selected: the search had to shrink it
    assert not krum_picks_crafted(benign, -100 * lam * torch.sign(benign.mean(0)), 3, 3)


def test_fang_krum_line_scores_equal_krum_on_the_stacked_round():
    g = torch.Generator().manual_seed(5)
    benign = torch.randn(9, 120, generator=g, dtype=torch.float64) + 0.3
    s = torch.sign(benign.mean(0))
    b_sq = (benign * benign).sum(1)
    bb = torch.cdist(benign, benign) ** 2
    seen = set()
    for lam in (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0, 10.0):
        for copies, f in ((1, 2), (3, 3)):
            want = krum_picks_crafted(benign, -lam * s, copies, f)
            got = _krum_picks_on_line(bb, b_sq, benign @ s, float(s @ s), lam, copies, f)
            assert got == want, (lam, copies, f)
            seen.add(want)
    assert seen == {True, False}  # both outcomes occur along the line


def test_fang_trmean_values_lie_three_to_four_deviations_against_the_mean():
    g = torch.Generator().manual_seed(4)
    benign = torch.randn(6, 500, generator=g, dtype=torch.float64)
    mu, sigma = benign.mean(0), benign.std(0, unbiased=False)
    u = torch.rand(500, generator=g, dtype=torch.float64)
    v = fang_trmean_update(benign, u)
    pos, neg = mu > 0, mu < 0
    k = (mu - v) / sigma  # deviations against the mean, in units of sigma
    assert bool(((k[pos] >= 3 - 1e-9) & (k[pos] <= 4 + 1e-9)).all())
    assert bool(((k[neg] <= -3 + 1e-9) & (k[neg] >= -4 - 1e-9)).all())


def test_fang_trmean_attackers_draw_their_own_values(setup):
    _, model, params, threat = setup
    rc = RoundConfig(round=0, epoch=0, seed=5)
    atk = build_attack("fang_trmean", {})
    a, b = (_flat(atk.craft(model, params, int(c), threat, rc)) for c in threat.malicious_ids[:2])
    benign = _coalition(model, params, threat, rc)
    moving = benign.std(0, unbiased=False) > 0
    assert not torch.equal(a[moving], b[moving])
    assert torch.equal(a[~moving], b[~moving])  # untouched coordinates stay at the mean


# ----------------------------------------------------------------------------- label flipping


def test_label_flip_maps_histories():
    m = mirror_map(5)
    assert m.tolist() == [0, 5, 4, 3, 2, 1] and np.array_equal(m[m], np.arange(6))
    counts = np.array([0, 9, 1, 5, 0, 7])  # popularity order 1, 5, 3, 2, 4
    p = popularity_map(counts, 5)
    assert p[1] == 4 and p[5] == 2 and p[3] == 3 and np.array_equal(p[p], np.arange(6))


def test_label_flip_fabricates_the_mapped_account_history(setup):
    split, model, _, threat = setup
    cid = int(threat.malicious_ids[0])
    rc = RoundConfig(round=0, epoch=0)
    seq = build_attack("label_flip", {}).fabricate(cid, threat, rc, split.n_items)
    assert np.array_equal(seq, split.n_items + 1 - threat.accounts[cid])
    flip = build_attack("label_flip", {"mapping": "popularity"})
    seq = flip.fabricate(cid, threat, rc, split.n_items)
    table = popularity_map(threat.popularity, split.n_items)
    assert np.array_equal(seq, table[threat.accounts[cid]])
    blind = build_threat_model(AttackConfig(name="label_flip", fraction=0.1), split, 0)
    with pytest.raises(ConfigError, match="attack.knowledge.popularity"):
        flip.fabricate(cid, blind, rc, split.n_items)


def test_parameter_validation():
    for name, params in (("alie", {"n_clients": 1}), ("alie", {"n_clients": 10, "n_byzantine": 6}),
                         ("ipm", {"epsilon": 0.0}), ("min_max", {"direction": "up"}),
                         ("min_sum", {"tau": 0.0}), ("fang_krum", {"copies": 0}),
                         ("label_flip", {"mapping": "shuffle"})):
        with pytest.raises(ConfigError, match="attack.params"):
            build_attack(name, params)
