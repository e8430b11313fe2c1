"""SITN (fedrec.baselines.sitn): losses against hand-computed values, k-means prototypes, the
variants, and a short run through ``fedrec run`` that resumes to identical metrics."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import config_with, interrupted_in_step, strip_timing

from fedrec.baselines.sitn.losses import bce_sampled, instance_nce, kmeans, proto_nce, softmax_ce
from fedrec.baselines.sitn.trainer import SITNTrainer, ranking_metrics
from fedrec.config import validate_config
from fedrec.engine.context import RunContext
from fedrec.errors import ConfigError
from fedrec.results import RunDir
from fedrec.runner import build_trainer, run_experiment

torch.set_num_threads(1)


def test_instance_nce_hand_values():
    eye = torch.eye(2)
    assert float(instance_nce(eye, eye, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)))
    swapped = eye.flip(0)
    assert float(instance_nce(eye, swapped, 1.0)) == pytest.approx(math.log(1 + math.e))
    # scale-free (cosine) and sharper with a lower temperature
    assert float(instance_nce(3 * eye, eye, 0.5)) == pytest.approx(math.log(1 + math.exp(-2)))


def test_proto_nce_bce_and_softmax_hand_values():
    z = torch.tensor([[2.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    want = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert float(proto_nce(z, protos, torch.tensor([0]), 0.5)) == pytest.approx(want)
    want_wrong = -math.log(1 / (math.exp(2) + 1 + math.exp(-2)))
    assert float(proto_nce(z, protos, torch.tensor([1]), 0.5)) == pytest.approx(want_wrong)
    assert float(bce_sampled(torch.zeros(1), torch.zeros(1, 2))) == pytest.approx(3 * math.log(2))
    scores = torch.tensor([[-9.0, 1.0, 2.0, 3.0]])  # column 0 (padding) is ignored
    want = -math.log(math.exp(3) / (math.e + math.exp(2) + math.exp(3)))
    assert float(softmax_ce(scores, torch.tensor([3]))) == pytest.approx(want)


def test_ranking_metrics_hand_values():
    scores = torch.tensor([[-torch.inf, 0.5, 0.9, 0.1, 0.7]], dtype=torch.float64)
    out = ranking_metrics(scores, torch.tensor([4]), torch.tensor([[1, 3, 2, 3]]), (1, 2))
    assert float(out["full/HR@1"][0]) == 0 and float(out["full/HR@2"][0]) == 1
    assert float(out["full/NDCG@2"][0]) == pytest.approx(1 / math.log2(3))
    assert float(out["sampled/AUC"][0]) == pytest.approx(3 / 4)


def blobs(seed: int, n: int = 60, k: int = 4, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    x = torch.eye(dim)[labels] * 5 + 0.3 * torch.randn(n, dim, generator=gen)
    return x, labels


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a[:, None] == a[None]) == (b[:, None] == b[None])).all())


def test_kmeans_recovers_separated_clusters_stably():
    x, labels = blobs(0)
    c1, a1 = kmeans(x, 4, seed=1)
    assert same_partition(a1, labels)
    c2, a2 = kmeans(x, 4, seed=1)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)  # deterministic in the seed
    for seed in (2, 3, 4):  # other seeds: the same clusters (up to their order)
        assert same_partition(kmeans(x, 4, seed=seed)[1], labels)
    # centres are unit vectors along the true directions; small noise keeps the assignment
    assert torch.allclose(c1.norm(dim=1), torch.ones(4), atol=1e-5)
    assert same_partition(kmeans(x + 0.01 * blobs(9)[0], 4, seed=1)[1], a1)
    with pytest.raises(ValueError, match="at least k points"):
        kmeans(x[:3], 4)


def tiny(**over):
    """A small SITN run on generated domains (dropout on, so the RNG state matters)."""
    raw = {
        "name": "tiny_sitn", "seed": 3, "threads": 1, "mode": "centralized",
        "data": {"synthetic": {"n_users": 20, "n_items": 20, "n_interests": 2}},
        "domains": {"sparse_target_share": 0.5, "n_negatives": 20,
                    "synthetic": {"n_users": 120, "items_per_domain": 40, "n_clusters": 4,
                                  "mean_len": 8}},
        "model": {"name": "sitn", "hidden": 8, "dropout": 0.2, "max_len": 10,
                  "params": {"n_views": 2, "n_neg": 2, "n_prototypes": 4, "refresh_every": 2}},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "patience": 100},
        "eval": {"ks": [10], "full": True, "sampled": False},
    }
    return config_with(raw, **over)


def test_runner_builds_the_sitn_trainer_on_the_target_domain():
    cfg = tiny()
    ctx = RunContext.build(cfg)
    trainer = build_trainer(cfg, ctx)
    assert isinstance(trainer, SITNTrainer)
    d = trainer.data
    assert ctx.split.n_items == d.n_items(d.target) == ctx.model.tgt_items.num_embeddings - 1
    assert ctx.split.name == "synthetic:d1" and d.cold.sum() > 0


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg = tiny()
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    assert set(ref["test"]) == {"full/HR@10", "full/NDCG@10", "sampled/AUC", "cold/full/HR@10",
                                "cold/full/NDCG@10", "cold/sampled/AUC"}
    with interrupted_in_step(monkeypatch, SITNTrainer, "loss_terms", step=2):
        run_experiment(cfg, tmp_path / "crash", progress=False)
    run = RunDir(tmp_path / "crash")
    assert [r["step"] for r in run.read_metrics()] == [0, 1]
    resumed = run_experiment(cfg, tmp_path / "crash", resume=True, progress=False)
    assert resumed["test"] == ref["test"]
    assert strip_timing(run.read_metrics()) == strip_timing(RunDir(tmp_path / "ref").read_metrics())
    log = run.read_metrics()
    assert log[0]["train/proto"] > 0 and log[0]["train/i2i"] > 0
    assert log[0]["train/loss"] == pytest.approx(
        log[0]["train/pred"] + 0.1 * log[0]["train/i2i"] + 0.1 * log[0]["train/proto"], rel=1e-5)


def test_variants_and_ablation_switches():
    for params, i2i, proto in (({"variant": "target_only"}, 0, 0), ({"variant": "shared"}, 0, 0),
                               ({"i2i_weight": 0.0}, 0, 1), ({"proto_weight": 0.0}, 1, 0)):
        cfg = tiny(**{"model.params": {"n_views": 2, "n_prototypes": 4, **params}})
        ctx = RunContext.build(cfg)
        trainer = build_trainer(cfg, ctx)
        m = trainer.train_step(0)
        assert (m["i2i"] > 0) == bool(i2i) and (m["proto"] > 0) == bool(proto), params
    # target_only: scores do not depend on the source sequence
    cfg = tiny(**{"model.params": {"variant": "target_only"}})
    ctx = RunContext.build(cfg)
    trainer = build_trainer(cfg, ctx)
    ctx.model.eval()
    batch = trainer.make_batch(trainer.users[:4], [trainer.data.train["d1"][u]
                                                   for u in trainer.users[:4]])
    u1 = ctx.model.interests(batch)["u"]
    batch["src"] = torch.zeros_like(batch["src"])
    assert torch.equal(u1, ctx.model.interests(batch)["u"])


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model\.params\.i2i_temperature"):
        RunContext.build(tiny(**{"model.params": {"i2i_temperature": 0.0}}))
    with pytest.raises(ConfigError, match=r"model\.params\.variant"):
        RunContext.build(tiny(**{"model.params": {"variant": "magic"}}))
    with pytest.raises(ConfigError, match=r"model\.bogus"):
        RunContext.build(tiny(**{"model.params": {"bogus": 1}}))
    with pytest.raises(ConfigError, match=r"domains\.sparse_target_share"):
        validate_config({"domains": {"sparse_target_share": -0.1}})
    cfg = tiny(**{"model.params": {"n_prototypes": 1000}})
    with pytest.raises(ConfigError, match=r"model\.params\.n_prototypes"):
        build_trainer(cfg, RunContext.build(cfg))


def test_source_items_later_than_the_predicted_target_item_are_cut_off(monkeypatch):
    """User 10: target (genre b) items at t = 10, 20 (train), 30 (valid), 40 (test); source
    (genre a) items 1..7 at t = 5, 25, 35, 40, 45 (source train) and 60, 70 (source held out).
    Predicting the valid item may read source items 1, 2 (t < 30); the test item 1, 2, 3
    (t < 40: item 4 ties with the test item, item 5 is later); training uses the valid cut."""
    import pandas as pd

    import fedrec.baselines.sitn.trainer as sitn_trainer
    from fedrec.data.domains import DomainConfig, build_domains

    rows = [(10, 100 + k, 5, t) for k, t in enumerate((10, 20, 30, 40), 1)]
    rows += [(10, k, 5, t) for k, t in enumerate((5, 25, 35, 40, 45, 60, 70), 1)]
    rows += [(20, 104 + k, 5, k) for k in range(1, 6)] + [(20, 8, 5, 0), (20, 9, 5, 9)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    genres = {i: [0] for i in range(1, 10)} | {i: [1] for i in range(101, 110)}
    split = build_domains(frame, genres, ("a", "b"), {"A": ["a"], "B": ["b"]},
                          DomainConfig(n_negatives=2), "toy")
    assert split.item_ids["A"][1:8].tolist() == list(range(1, 8))  # local id = original id
    monkeypatch.setattr(sitn_trainer, "load_domains", lambda *a, **k: split)
    cfg = tiny(**{"model.params": {"n_views": 2, "n_prototypes": 2}})
    ctx = RunContext.build(cfg)
    trainer = build_trainer(cfg, ctx)
    seen: list[tuple[list[int], list[int]]] = []  # (users, source row of user 10) per batch
    real = ctx.model.interests

    def spy(batch):
        users = batch["users"].tolist()
        if 0 in users:
            row = batch["src"][users.index(0)]
            seen.append((users, row[row > 0].tolist()))
        return real(batch)

    monkeypatch.setattr(ctx.model, "interests", spy)
    trainer.evaluate("valid")
    assert seen[-1][1] == [1, 2]
    trainer.evaluate("test")
    assert seen[-1][1] == [1, 2, 3]  # 4 (tie at t = 40) and 5 (t = 45) are excluded
    seen.clear()
    trainer.train_step(0)  # prototype refresh and training batches: the validation cut
    assert seen and all(src == [1, 2] for _, src in seen)
    assert split.cutoff("B", "test").tolist() == [40, 5]
