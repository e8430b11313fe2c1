"""SASS (fedrec.baselines.sass): losses against hand-computed values, the ML-SAT gates, scenario
representations of items, the variants, and runs through ``fedrec run`` (resume, config errors).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import config_with, strip_timing

from fedrec.baselines.sass import SASS, bce_with_negatives, info_nce, sampled_softmax
from fedrec.baselines.sass.data import load_scenarios
from fedrec.baselines.sass.trainer import SASSTrainer, rank_metrics
from fedrec.errors import ConfigError
from fedrec.results import RunDir
from fedrec.runner import run_experiment

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- losses
def _nll(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_info_nce_matches_hand_computed_value():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # logits = a b^T / 0.5 = [[1.2, 2.0], [1.6, 0.0]]
    rows = (_nll([1.2, 2.0], 0) + _nll([1.6, 0.0], 1)) / 2
    cols = (_nll([1.2, 1.6], 0) + _nll([2.0, 0.0], 1)) / 2
    assert float(info_nce(a, b, 0.5, symmetric=False)) == pytest.approx(rows, rel=1e-6)
    assert float(info_nce(a, b, 0.5, symmetric=True)) == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_retrieval_losses_match_hand_computed_values():
    user = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[0.6, 0.8]])
    neg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits at temperature 0.5: positive 1.2, negatives [2.0, 0.0]
    assert float(sampled_softmax(user, pos, neg, 0.5)) == pytest.approx(
        _nll([1.2, 2.0, 0.0], 0), rel=1e-6)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 - softplus
    assert float(bce_with_negatives(user, pos, neg, 0.5)) == pytest.approx(
        sp(-1.2) + (sp(2.0) + sp(0.0)) / 2, rel=1e-6)
    # a negative that is the row's own positive is left out
    ids, neg_ids = torch.tensor([5]), torch.tensor([5, 7])
    assert float(sampled_softmax(user, pos, neg, 0.5, ids, neg_ids)) == pytest.approx(
        _nll([1.2, 0.0], 0), rel=1e-6)
    assert float(bce_with_negatives(user, pos, neg, 0.5, ids, neg_ids)) == pytest.approx(
        sp(-1.2) + sp(0.0) / 2, rel=1e-6)


def test_rank_metrics_known_values():
    m = rank_metrics(np.array([0, 1, 25]), [20])
    assert m["Recall@20"] == pytest.approx(2 / 3)
    assert m["NDCG@20"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


# ------------------------------------------------------------------------------------ model
def small(variant: str = "sass", behaviour: bool = False, seed: int = 0) -> SASS:
    torch.manual_seed(seed)
    model = SASS(variant=variant, hidden=8, layers=2, scen_dim=4)
    model.attach(n_users=6, n_items=9, n_scen=3)
    return model


def test_gates_lie_strictly_between_zero_and_one():
    model = small()
    model.users(torch.arange(6), 1)
    gates = model.user_tower.gates
    assert len(gates) == 2
    for a, u in gates:
        for g in (a, u):
            assert bool(((g > 0) & (g < 1)).all())


def test_zero_adaptive_gate_cuts_the_global_to_scenario_gradient():
    def global_grads(fixed):
        model = small()
        model.user_tower.fixed_adaptive_gate = fixed
        model.users(torch.arange(6), 2).pow(2).sum().backward()  # any function of the output
        return [p.grad for p in model.user_tower.glob]

    for g in global_grads(0.0):
        assert g is None or bool((g == 0).all())
    opened = global_grads(None)
    assert any(g is not None and bool((g != 0).any()) for g in opened)


def test_sass_item_representations_differ_across_scenarios():
    model = small()
    ids = torch.arange(1, 9)
    r0, r1, r2 = (model.items(ids, s) for s in range(3))
    assert not torch.allclose(r0, r1) and not torch.allclose(r1, r2)
    mixed = small("mixed")  # the scenario-blind baseline gives one representation per item
    torch.testing.assert_close(mixed.items(ids, 0), mixed.items(ids, 2))


def test_single_variant_shares_nothing_across_scenarios():
    model = small("single")
    model.users(torch.arange(6), 0).sum().backward()
    emb = model.user_tower.emb.grad
    assert bool((emb[0] != 0).any()) and bool((emb[1:] == 0).all())


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"model\.params\.temperature=-1"):
        SASS(temperature=-1)
    with pytest.raises(ValueError, match=r"model\.variant='sas'"):
        SASS(variant="sas")


# ---------------------------------------------------------------------------------- runs
def tiny(**over):
    raw = {
        "name": "tiny_sass", "seed": 3, "threads": 1, "mode": "centralized",
        "data": {"synthetic": {"n_users": 20, "n_items": 20, "mean_len": 6, "max_len": 10}},
        "model": {"name": "sass", "hidden": 8, "layers": 2, "n_neg": 10,
                  "params": {"pretrain_epochs": 2, "domains": {
                      "dataset": "synthetic",
                      "synthetic": {"n_users": 60, "n_domains": 3, "items_per_domain": 20,
                                    "mean_len": 6}}}},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "patience": 100,
                  "metric": "full/NDCG@20"},
        "eval": {"ks": [10, 20], "sampled": False},
    }
    return config_with(raw, **over)


def test_run_resumes_to_identical_metrics(tmp_path, monkeypatch):
    cfg = tiny()
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    assert {"full/d0/Recall@20", "full/d2/NDCG@20", "full/NDCG@20"} <= set(ref["test"])
    assert ref["steps_run"] == 5 and ref["dataset"] == "synthetic:d0+d1+d2"
    log = RunDir(tmp_path / "ref").read_metrics()
    assert [r["stage"] for r in log] == ["pretrain"] * 2 + ["finetune"] * 3
    assert "train/user_cl" in log[0] and "valid/full/NDCG@20" in log[2]

    original = SASSTrainer.train_step
    calls = {"n": 0}

    def crashing(self, step):
        if step == 3:  # the second fine-tuning epoch, after its first optimizer step
            real = self.ctx.model.retrieval_loss

            def loss(*args):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt
                return real(*args)

            self.ctx.model.retrieval_loss = loss
        return original(self, step)

    monkeypatch.setattr(SASSTrainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "crash", progress=False)
    monkeypatch.setattr(SASSTrainer, "train_step", original)
    assert [r["step"] for r in RunDir(tmp_path / "crash").read_metrics()] == [0, 1, 2]
    resumed = run_experiment(cfg, tmp_path / "crash", resume=True, progress=False)
    assert resumed["test"] == ref["test"]
    assert strip_timing(RunDir(tmp_path / "crash").read_metrics()) == strip_timing(log)


@pytest.mark.parametrize("variant", ["sass_base", "single", "mixed", "shared_bottom"])
def test_baseline_variants_run_without_pretraining(tmp_path, variant):
    out = run_experiment(tiny(**{"model.params.variant": variant, "train.epochs": 1}),
                         tmp_path / variant, progress=False)
    assert out["steps_run"] == 1  # pre-training belongs to SASS only
    assert all(np.isfinite(v) for v in out["test"].values())


def test_pretraining_aligns_an_entity_across_scenarios():
    cfg = tiny(**{"model.params.pretrain_lr": 0.01})
    from fedrec.engine.context import RunContext

    ctx = RunContext.build(cfg)
    trainer = SASSTrainer(ctx)
    users = torch.as_tensor(trainer.data.pools[(0, 1)][0])

    def contrast():  # InfoNCE of the users' scenario-0 vs scenario-1 representations
        with torch.no_grad():
            return float(info_nce(ctx.model.users(users, 0), ctx.model.users(users, 1), 0.2))

    before = contrast()
    trainer.train_step(0)
    trainer.train_step(1)
    assert contrast() < 0.9 * before


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.params\.temperature=0") as exc:
        run_experiment(tiny(**{"model.params.temperature": 0}), tmp_path / "a", progress=False)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"model\.params\.domains\.min_rating"):
        run_experiment(tiny(**{"model.params.domains.min_rating": 9}), tmp_path / "b",
                       progress=False)
    with pytest.raises(ConfigError, match=r"model\.pretrain_epoch"):
        run_experiment(tiny(**{"model.params.pretrain_epoch": 1}), tmp_path / "c", progress=False)


def test_ml100k_scenarios_overlap(real_data_dir):
    data = load_scenarios({"dataset": "ml-100k", "groups": {
        "action": ["Action", "Adventure"], "comedy": ["Comedy"], "drama": ["Drama"]}},
        real_data_dir)
    stats = data.stats()
    assert data.n_scenarios == 3 and stats["shared_items"] > 0 and stats["shared_users"] > 0
    assert all(len(u) > 0 for u, _ in data.unlabeled)
    for s in range(3):  # held-out items are never train history or unlabelled samples
        users = np.flatnonzero(data.test[s] >= 0)[:50]
        for u in users:
            assert data.test[s][u] not in data.history[s][u]


def test_training_inputs_are_cut_at_the_other_scenarios_validation_items():
    """User 10, item 50 in both scenarios (genres a and b). A: 1 (t1), 2 (t2), 50 (t5, valid),
    4 (t12, test). B: 11 (t3), 50 (t5), 12 (t6), 13 (t8) train, 14 (t20) valid, 15 (t21) test;
    low-rated (unlabelled) B items 16 (t4) and 17 (t7). B's train pairs and unlabelled samples
    must be earlier than A's validation item (t5): 50 (the same rating as A's valid item, a
    tie), 12, 13 and 17 are cut, 11 and 16 kept; A's train pairs (before B's t20) all stay.
    User 20 only makes 16 and 17 items of B."""
    import pandas as pd

    from fedrec.baselines.sass.data import from_domains
    from fedrec.data.domains import DomainConfig, build_domains

    rows = [(10, i, 5, t) for i, t in ((1, 1), (2, 2), (50, 5), (4, 12), (11, 3), (12, 6),
                                       (13, 8), (14, 20), (15, 21))]
    rows += [(10, 16, 2, 4), (10, 17, 2, 7), (20, 16, 5, 1), (20, 17, 5, 2)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    genres = {1: [0], 2: [0], 4: [0], 50: [0, 1]} | {i: [1] for i in range(11, 18)}
    groups = {"A": ["a"], "B": ["b"]}
    cfg = DomainConfig(overlapping=True, min_rating=4, n_negatives=1)
    split = build_domains(frame, genres, ("a", "b"), groups, cfg, "toy")
    exposures = build_domains(frame, genres, ("a", "b"), groups,
                              cfg.model_copy(update={"min_rating": None}), "toy")
    data = from_domains(split, exposures)
    ids = np.unique(np.concatenate([split.item_ids[d][1:] for d in ("A", "B")]))
    glob = {int(o): k for k, o in enumerate(ids)}
    assert data.valid[0][0] == glob[50] and data.test[0][0] == glob[4]
    b_users, b_items = data.train[1]
    assert b_items[b_users == 0].tolist() == [glob[11]]  # 50 (tie with A's valid), 12, 13 cut
    u_users, u_items = data.unlabeled[1]
    assert u_items[u_users == 0].tolist() == [glob[16]]  # 17 (t7) cut
    assert data.train[0][1][data.train[0][0] == 0].tolist() == [glob[1], glob[2]]
    # ranking still excludes every B train positive (all are before B's held-out items)
    assert data.history[1][0].tolist() == [glob[i] for i in (11, 50, 12, 13)]
