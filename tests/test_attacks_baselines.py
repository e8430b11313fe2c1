"""Baseline attacks: fabricated profiles, EB, PipAttack, FedRecAttack, A-ra/A-hum, PSMU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import param_copy, small_model
from torch.nn import functional as F

from attacks.approx_users import mine_hard_users
from attacks.common import as_input, input_embeddings, next_logits, random_histories
from attacks.eb import boosted_profile
from attacks.fabricated import bandwagon_profile, popularity_order
from attacks.fedrecattack import competitors, soft_hinge, upload_rows
from attacks.pipattack import popularity_levels, project_to_ball
from attacks.psmu import alternative_products
from attacks.registry import build_attack
from attacks.threat import ThreatModel
from clients.update import RoundConfig, client_update
from fedrec.errors import ConfigError

torch.set_num_threads(1)
N_ITEMS = 40
TARGET = 7


def _model(name: str = "sasrec", seed: int = 0):
    return small_model(name, N_ITEMS, seed=seed)


def _threat(popularity=True, public=True, n_mal=2) -> ThreatModel:
    rng = np.random.default_rng(0)
    lengths = np.array([4, 5, 5, 6, 9, 9, 9, 11])
    counts = np.zeros(N_ITEMS + 1, dtype=np.int64)
    counts[1:] = np.arange(N_ITEMS, 0, -1)  # item 1 most popular
    counts[TARGET] = 0
    mal = np.arange(30, 30 + n_mal)
    accounts = {int(c): rng.choice(np.arange(10, N_ITEMS + 1), size=6, replace=False) for c in mal}
    pub = [rng.choice(np.setdiff1d(np.arange(1, N_ITEMS + 1), [TARGET]), size=int(rng.integers(1, 5)),
                      replace=False) for _ in range(30)]
    pub[3] = np.array([TARGET, 4])  # holds the target: never an approximated user
    return ThreatModel(n_users=30, malicious_ids=mal, accounts=accounts, targets=np.array([TARGET]),
                       popularity=counts if popularity else None, public=pub if public else None,
                       lengths=lengths)


# ----------------------------------------------------------------------------- fabricated profiles


@pytest.mark.parametrize("name", ["random", "popular", "bandwagon"])
def test_fake_profiles_contain_target_and_follow_benign_lengths(name):
    threat = _threat()
    attack = build_attack(name, {})
    rc = RoundConfig(round=0, epoch=0, seed=3)
    lengths = []
    for cid in range(30, 32):
        for seed in range(10):
            prof = attack.fabricate(cid, threat, RoundConfig(round=0, epoch=0, seed=seed), N_ITEMS, max_len=12)
            assert prof[-1] == TARGET and (prof == TARGET).sum() == 1
            assert len(np.unique(prof)) == len(prof) and prof.min() >= 1 and prof.max() <= N_ITEMS
            lengths.append(len(prof))
    assert set(lengths) <= set(threat.lengths.tolist())
    assert len(set(lengths)) > 1  # drawn, not constant
    # fixed across rounds for a fake user
    a = attack.fabricate(30, threat, rc, N_ITEMS, max_len=12)
    b = attack.fabricate(30, threat, RoundConfig(round=9, epoch=3, seed=3), N_ITEMS, max_len=12)
    assert np.array_equal(a, b)


def test_items_limit_and_random_target_position():
    threat = _threat()
    prof = build_attack("random", {"items_limit": 10, "target_position": "random"}).fabricate(
        30, threat, RoundConfig(round=0, epoch=0), N_ITEMS, max_len=20)
    assert len(prof) == 10 and TARGET in prof
    # lengths are capped at max_len + 1
    prof = build_attack("random", {"items_limit": 30}).fabricate(30, threat, RoundConfig(round=0, epoch=0),
                                                                 N_ITEMS, max_len=12)
    assert len(prof) == 13


def test_popular_profile_uses_most_popular_items():
    threat = _threat()
    prof = build_attack("popular", {"items_limit": 9}).fabricate(30, threat, RoundConfig(round=0, epoch=0),
                                                                 N_ITEMS, max_len=12)
    assert sorted(prof[:-1].tolist()) == [1, 2, 3, 4, 5, 6, 8, 9]  # target 7 excluded


def test_bandwagon_share_from_popular_pool():
    counts = np.zeros(N_ITEMS + 1)
    counts[1:] = np.arange(N_ITEMS, 0, -1)
    rng = np.random.default_rng(0)
    prof = bandwagon_profile(rng, counts, N_ITEMS, np.array([TARGET]), 20, popular_share=0.25, popular_pool=0.25)
    pool = set(popularity_order(counts, N_ITEMS, np.array([TARGET]))[:10].tolist())
    assert len(prof) == 20 and TARGET not in prof
    assert sum(int(i) in pool for i in prof) >= 5


def test_knowledge_is_required():
    threat = _threat(popularity=False, public=False)
    rc = RoundConfig(round=0, epoch=0)
    model = _model()
    for name, key in (("popular", "popularity"), ("bandwagon", "popularity"), ("pipattack", "popularity"),
                      ("fedrecattack", "public_fraction")):
        with pytest.raises(ConfigError, match=f"attack.knowledge.{key}"):
            build_attack(name, {}).craft(model, param_copy(model), 30, threat, rc)


# ----------------------------------------------------------------------------- EB


def test_eb_profiles():
    hist = np.arange(1, 20)
    p = boosted_profile(hist, np.array([TARGET]), "append", 0, max_len=12)
    assert len(p) == 13 and p[-1] == TARGET and np.array_equal(p[:-1], hist[-12:])
    r = boosted_profile(hist, np.array([TARGET, 9]), "repeat", 7, max_len=12)
    assert r.tolist() == [TARGET, 9, TARGET, 9, TARGET, 9, TARGET]
    threat = _threat()
    model = _model()
    upd = build_attack("eb", {}).craft(model, param_copy(model), 30, threat, RoundConfig(round=0, epoch=0))
    ref = client_update(model, param_copy(model), np.concatenate([threat.accounts[30], [TARGET]]), 30,
                        RoundConfig(round=0, epoch=0))
    for n in upd.params:
        torch.testing.assert_close(upd.params[n], ref.params[n])


# ----------------------------------------------------------------------------- PipAttack


def test_popularity_levels_equal_size_ties_by_id():
    counts = np.array([0, 5, 5, 1, 9, 0, 3])
    lv = popularity_levels(counts, 6, 3)
    # ascending: 5(0), 3(1), 6(3), 1(5), 2(5), 4(9) -> levels 0,0,1,1,2,2
    assert lv[[5, 3, 6, 1, 2, 4]].tolist() == [0, 0, 1, 1, 2, 2]


def test_pipattack_popularity_term_moves_target_toward_popular_items():
    model = _model()
    params = param_copy(model)
    threat = _threat()
    rc = RoundConfig(round=0, epoch=0)
    full = build_attack("pipattack", {"estimator_steps": 200}).craft(model, params, 30, threat, rc)
    expl = build_attack("pipattack", {"popularity_weight": 0.0}).craft(model, params, 30, threat, rc)
    pop_grad = full.params["item_emb.weight"][TARGET] - expl.params["item_emb.weight"][TARGET]
    assert float(pop_grad.norm()) > 0
    emb = params["item_emb.weight"]
    popular = emb[1:14].mean(0)
    unpopular = emb[28:41].mean(0)
    step = -pop_grad  # the server applies -lr * gradient
    assert float(step @ (popular - unpopular)) > 0
    # only the target's row differs between the two
    diff = (full.params["item_emb.weight"] - expl.params["item_emb.weight"]).abs().sum(1)
    assert torch.nonzero(diff).flatten().tolist() == [TARGET]


def test_distance_constraint_projects_into_ball():
    c = {"a": torch.tensor([3.0, 4.0])}
    u = {"a": torch.tensor([13.0, 4.0])}
    out = project_to_ball(u, c, 0.4)  # radius 2 around c
    assert float((out["a"] - c["a"]).norm()) == pytest.approx(2.0)
    assert project_to_ball({"a": torch.tensor([4.0, 4.0])}, c, 0.4)["a"].tolist() == [4.0, 4.0]
    model = _model()
    threat = _threat()
    rc = RoundConfig(round=0, epoch=0)
    upd = build_attack("pipattack", {"distance": 0.5}).craft(model, param_copy(model), 30, threat, rc)
    ben = client_update(model, param_copy(model), threat.accounts[30], 30, rc).params
    dist = torch.sqrt(sum(((upd.params[n] - ben[n]) ** 2).sum() for n in ben))
    norm_b = torch.sqrt(sum((v ** 2).sum() for v in ben.values()))
    assert float(dist) <= 0.5 * float(norm_b) * (1 + 1e-4)


# ----------------------------------------------------------------------------- FedRecAttack


def test_soft_hinge_values():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert soft_hinge(x).tolist() == pytest.approx([np.exp(-2.0) - 1, 0.0, 3.0])


def test_competitor_is_kth_best_excluding_history_and_target():
    logits = torch.tensor([[-np.inf, 9.0, 8.0, 7.0, 6.0, 5.0]])
    comp = competitors(logits, [np.array([1])], torch.tensor([2]), k=2)
    assert comp.tolist() == [4]  # ranking without 1 (history) and 2 (target): 3, 4, 5


def test_fedrecattack_upload_rows_split_and_clipped():
    model = _model()
    params = param_copy(model)
    threat = _threat(n_mal=2)
    rc = RoundConfig(round=0, epoch=0)
    a = build_attack("fedrecattack", {"items_limit": 6, "grad_limit": 0.5})
    u0 = a.craft(model, params, 30, threat, rc)
    u1 = a.craft(model, params, 31, threat, rc)
    rows0 = set(torch.nonzero(u0.params["item_emb.weight"].abs().sum(1)).flatten().tolist())
    rows1 = set(torch.nonzero(u1.params["item_emb.weight"].abs().sum(1)).flatten().tolist())
    assert TARGET in rows0 and TARGET in rows1
    assert len(rows0) <= 6 and len(rows1) <= 6
    assert rows0 & rows1 == {TARGET}  # the attackers split the non-target rows
    assert float(u0.params["item_emb.weight"].norm(dim=1).max()) <= 0.5 + 1e-5
    dense = torch.sqrt(sum((v ** 2).sum() for k, v in u0.params.items() if k != "item_emb.weight"))
    assert float(dense) <= 0.5 + 1e-5
    # the target row pushes the target's embedding toward the approximated users' states
    assert float(u0.params["item_emb.weight"][TARGET].norm()) > 0


def test_upload_rows_helper():
    g = {"item_emb.weight": torch.tensor([[9.0], [1.0], [5.0], [4.0], [3.0], [2.0]])}
    rows = upload_rows(g, ("item_emb.weight",), np.array([1]), items_limit=3, share=1, n_shares=2)
    assert rows.tolist() == [1, 3, 5]  # target, then ranks 1,3 of (2,3,4,5) by norm


def test_fedrecattack_lowers_the_loss_it_descends():
    model = _model()
    params = param_copy(model)
    threat = _threat()
    rc = RoundConfig(round=0, epoch=0)
    attack = build_attack("fedrecattack", {"items_limit": 40, "grad_limit": 100.0})
    users = attack.approximated_users(threat, np.array([TARGET]), np.random.default_rng(0))
    assert all(TARGET not in u for u in users) and len(users) == 29
    seqs = as_input(model, users)

    def margin(p):
        with torch.no_grad():
            for n, q in model.named_parameters():
                q.copy_(p[n])
            model.eval()
            lg = next_logits(model, seqs)
            return float((lg[:, TARGET] - lg[:, 1:].mean(1)).mean())

    upd = attack.craft(model, params, 30, threat, rc)
    assert margin({n: params[n] - 0.01 * upd.params[n] for n in params}) > margin(params)


# ----------------------------------------------------------------------------- A-ra / A-hum, PSMU


def test_random_histories_exclude_target():
    threat = _threat()
    hist = random_histories(np.random.default_rng(0), threat, 20, N_ITEMS, np.array([TARGET]), 12, None)
    assert all(TARGET not in h and len(set(h)) == len(h) for h in hist)
    assert {len(h) for h in hist} <= set(threat.lengths.tolist())


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_hard_user_mining_lowers_target_score(name):
    model = _model(name)
    hist = random_histories(np.random.default_rng(0), _threat(), 8, N_ITEMS, np.array([TARGET]), 11, None)
    seqs = as_input(model, hist)
    model.eval()
    with torch.no_grad():
        emb = input_embeddings(model, seqs)
        before = next_logits(model, seqs, emb)[:, TARGET]
    mined = mine_hard_users(model, seqs, emb, torch.tensor([TARGET]), steps=10, lr=0.1)
    with torch.no_grad():
        after = next_logits(model, seqs, mined)[:, TARGET]
    assert float(after.mean()) < float(before.mean())
    assert torch.equal(mined[seqs == 0], torch.zeros_like(mined[seqs == 0]))


def test_a_ra_is_a_hum_without_mining_and_promotes_target():
    model = _model()
    params = param_copy(model)
    threat = _threat()
    rc = RoundConfig(round=1, epoch=0)
    ra = build_attack("a_ra", {}).craft(model, params, 30, threat, rc)
    ref = build_attack("a_hum", {"mining_steps": 0}).craft(model, params, 30, threat, rc)
    hum = build_attack("a_hum", {"mining_steps": 5}).craft(model, params, 30, threat, rc)
    for n in params:
        torch.testing.assert_close(ra.params[n], ref.params[n])
    assert any(not torch.equal(ra.params[n], hum.params[n]) for n in params)
    # descending the upload raises the target's logit (the target row moves along -gradient)
    g_t = ra.params["item_emb.weight"][TARGET]
    assert float(g_t.norm()) > 0


def test_psmu_alternatives_are_nearest_neighbours():
    table = torch.zeros(6, 2)
    table[1:] = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    alts = alternative_products(table, torch.tensor([1]), 2)
    assert alts.tolist() == [[2, 5]]


def test_psmu_update_ranks_target_above_alternatives():
    model = _model()
    params = param_copy(model)
    threat = _threat()
    upd = build_attack("psmu", {"n_alternatives": 3}).craft(model, params, 30, threat, RoundConfig(round=0, epoch=0))
    alts = alternative_products(params["item_emb.weight"][: N_ITEMS + 1], torch.tensor([TARGET]), 3)[0]
    hist = random_histories(np.random.default_rng(5), threat, 16, N_ITEMS, np.array([TARGET]), 12, None)
    seqs = as_input(model, hist)

    def gap(p):
        with torch.no_grad():
            for n, q in model.named_parameters():
                q.copy_(p[n])
            model.eval()
            lg = next_logits(model, seqs)
            return float((lg[:, TARGET:TARGET + 1] - lg[:, alts]).mean())

    assert gap({n: params[n] - 0.1 * upd.params[n] for n in params}) > gap(params)


def test_alternatives_follow_cosine():
    model = _model()
    emb = model.item_emb.weight.detach()
    alts = alternative_products(emb, torch.tensor([TARGET]), 4)[0]
    sims = F.cosine_similarity(emb[TARGET:TARGET + 1], emb[1:], dim=-1)
    sims[TARGET - 1] = -2
    assert set(alts.tolist()) == set((torch.topk(sims, 4).indices + 1).tolist())
