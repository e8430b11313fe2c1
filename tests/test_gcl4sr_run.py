"""GCL4SR end to end through ``fedrec run``: trainer, user-aware evaluation, resume, combiner.

An interrupted and resumed run must end with exactly the metrics of an uninterrupted one
(neighbour sampling is keyed by seed/epoch/batch, dropout by the checkpointed RNG); the
evaluation must hand each user's own id to the model; the GradCraft combiner option must drive
the update (and equal weighting must reproduce the plain weighted sum's gradient).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import config_with, interrupted_in_step, strip_timing

from fedrec.baselines.gcl4sr.trainer import GCL4SRTrainer, UserAwareScorer
from fedrec.engine.context import RunContext
from fedrec.evaluation import EvalProtocol, evaluate
from fedrec.results import RunDir
from fedrec.runner import build_trainer, run_experiment

torch.set_num_threads(1)


def tiny(**over):
    """A small GCL4SR run on synthetic data (dropout on, so the RNG state matters)."""
    raw = {
        "name": "tiny_gcl4sr", "seed": 5, "threads": 1, "mode": "centralized",
        "data": {"synthetic": {"n_users": 120, "n_items": 60, "mean_len": 8, "max_len": 20}},
        "model": {"name": "gcl4sr", "hidden": 8, "blocks": 1, "heads": 2, "dropout": 0.2,
                  "max_len": 10, "params": {"sample_sizes": [4, 4], "bucket_batches": True}},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.005, "patience": 100,
                  "metric": "full/NDCG@20"},
        "eval": {"ks": [10, 20], "full": True, "sampled": False},
    }
    return config_with(raw, **over)


def test_runner_uses_the_gcl4sr_trainer_which_builds_graph_and_users():
    cfg = tiny()
    ctx = RunContext.build(cfg)
    trainer = build_trainer(cfg, ctx)
    assert isinstance(trainer, GCL4SRTrainer)
    assert ctx.model.graph is not None and ctx.model.user_emb.num_embeddings == ctx.split.n_users
    assert len(trainer.samples) == sum(len(s) - 1 for s in ctx.split.train)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg = tiny()
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    assert set(ref["test"]) >= {"full/HR@10", "full/HR@20", "full/NDCG@10", "full/NDCG@20"}
    assert not any(k.startswith("sampled/") for k in ref["test"])

    # crash after the first optimizer step of epoch 2
    with interrupted_in_step(monkeypatch, GCL4SRTrainer, "loss_terms", step=2):
        run_experiment(cfg, tmp_path / "crash", progress=False)
    run = RunDir(tmp_path / "crash")
    assert [r["step"] for r in run.read_metrics()] == [0, 1]
    resumed = run_experiment(cfg, tmp_path / "crash", resume=True, progress=False)
    assert resumed["test"] == ref["test"]
    assert resumed["best_step"] == ref["best_step"]
    assert strip_timing(run.read_metrics()) == strip_timing(RunDir(tmp_path / "ref").read_metrics())
    log = run.read_metrics()
    assert log[0]["train/loss"] == pytest.approx(
        log[0]["train/main"] + log[0]["train/gcl"] + 0.1 * log[0]["train/mmd"], rel=1e-6)
    assert log[-1]["train/lr"] == pytest.approx(0.005)  # StepLR(5) has not decayed yet


def test_user_aware_scorer_gives_each_user_their_own_id():
    class ByUser(torch.nn.Module):
        """Puts item ``users + 1`` on top: HR@1 = 1 iff every row gets its own user id."""

        max_len = 4

        def scores(self, seqs, users):
            out = torch.zeros(len(seqs), 11)
            out[torch.arange(len(seqs)), users + 1] = 1.0
            out[:, 0] = float("-inf")
            return out

    histories = [np.arange(1, 2 + (u * 7) % 5) + 5 for u in range(9)]  # varied lengths
    held = np.arange(9) + 1
    users = np.arange(9)
    proto = EvalProtocol(ks=(1,), sampled=False, exclude_history=False, batch_users=4)
    out = evaluate(UserAwareScorer(ByUser(), users), histories, held, proto, 4, 10)
    assert out["full/HR@1"] == 1.0


def test_gradcraft_combiner_drives_the_update_and_equal_weighting_matches_the_sum():
    cfg = tiny(**{"model.params.combiner": "equal_weighting", "model.dropout": 0.0,
                  "model.params.gnn_dropout": 0.0})
    ctx = RunContext.build(cfg)
    trainer = build_trainer(cfg, ctx)
    # float64: the combiner sums per-term gradients, backward() the summed loss: another
    # reduction order, so in float32 the gap depends on the CPU's kernels (~1e-15 in float64)
    model = ctx.model.double()
    users, inputs, targets = trainer.samples.batch(np.arange(64))
    batch = model.make_batch(users, inputs, targets, key=3)
    terms = model.loss_terms(batch)
    trainer.backward(terms)
    combined = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sum(model.weighted_terms(model.loss_terms(batch)).values()).backward()
    for a, p in zip(combined, model.parameters()):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, p.grad if p.grad is not None else torch.zeros_like(a),
                                   atol=1e-10, rtol=1e-9)

    cfg = tiny(**{"model.params.combiner": "gradcraft", "train.epochs": 1})
    ctx = RunContext.build(cfg)
    trainer = build_trainer(cfg, ctx)
    before = ctx.model.item_emb.weight.detach().clone()
    metrics = trainer.train_step(0)
    assert np.isfinite(metrics["loss"])
    assert not torch.allclose(ctx.model.item_emb.weight, before)
