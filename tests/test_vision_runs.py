"""LaVIT and VICTOR end to end through ``fedrec run``: an interrupted and resumed run ends with
exactly the metrics of an uninterrupted one; bad schedule keys are one-line config errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import config_with, strip_timing

from fedrec.baselines.lavit.trainer import LaViTTrainer
from fedrec.baselines.victor.trainer import VictorTrainer
from fedrec.errors import ConfigError
from fedrec.results import RunDir
from fedrec.runner import run_experiment

torch.set_num_threads(1)

pytestmark = pytest.mark.slow


def lavit_cfg(**over: Any) -> Any:
    raw = {"name": "tiny_lavit", "seed": 3, "threads": 1, "mode": "centralized",
           "data": {"synthetic": {"n_users": 20, "n_items": 20, "n_interests": 2}},
           "model": {"name": "lavit", "params": {
               "teacher_dim": 16, "teacher_depth": 1, "heads": 2, "merger_depth": 1,
               "decoder_depth": 1, "code_dim": 4, "codebook_size": 16, "lm_dim": 16,
               "lm_depth": 1, "teacher_epochs": 1, "phase_a_epochs": 1, "phase_b_epochs": 1,
               "lm_epochs": 1, "n_digits": 120, "crops_per_texture": 5, "t2i_samples": 2,
               "probe_max_iter": 30}},
           "train": {"epochs": 4, "batch_size": 64, "metric": "recon_cosine"}}
    return config_with(raw, **over)


def victor_cfg(**over: Any) -> Any:
    raw = {"name": "tiny_victor", "seed": 3, "threads": 1, "mode": "centralized",
           "data": {"synthetic": {"n_users": 20, "n_items": 20, "n_interests": 2}},
           "model": {"name": "victor", "params": {
               "dim": 16, "heads": 2, "cross_layers": 1, "text_layers": 1, "queue_size": 16,
               "n_videos": 60, "n_users": 20, "per_user": 4, "probe_max_iter": 30}},
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.001,
                     "metric": "retrieval/t2v_R@10"}}
    return config_with(raw, **over)


def crash_in(monkeypatch: pytest.MonkeyPatch, trainer_cls: type, step: int, target: Any,
             attr: str) -> None:
    """Make step ``step`` raise KeyboardInterrupt at the second call of ``target(model).attr``
    (after one optimizer step of that epoch)."""
    original = trainer_cls.train_step

    def crashing(self: Any, s: int) -> dict[str, float]:
        if s == step:
            obj = target(self.ctx.model)
            real = getattr(obj, attr)
            calls = {"n": 0}

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt
                return real(*args, **kwargs)

            setattr(obj, attr, wrapped)
        return original(self, s)

    monkeypatch.setattr(trainer_cls, "train_step", crashing)


@pytest.mark.parametrize("which", ["lavit", "victor"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, which):
    if which == "lavit":
        cfg, cls, step = lavit_cfg(), LaViTTrainer, 2  # step 2 = phase B (quantiser on)
        target, attr = (lambda m: m.tokenizer), "forward"
    else:
        cfg, cls, step = victor_cfg(), VictorTrainer, 1
        target, attr = (lambda m: m), "loss_terms"
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    original = cls.train_step
    crash_in(monkeypatch, cls, step, target, attr)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "crash", progress=False)
    monkeypatch.setattr(cls, "train_step", original)
    run = RunDir(tmp_path / "crash")
    assert [r["step"] for r in run.read_metrics()] == list(range(step))
    resumed = run_experiment(cfg, tmp_path / "crash", resume=True, progress=False)
    assert resumed["test"] == ref["test"]
    assert strip_timing(run.read_metrics()) == strip_timing(RunDir(tmp_path / "ref").read_metrics())
    if which == "lavit":
        assert {"recon_cosine", "caption_accuracy", "text_to_image_accuracy",
                "codebook_perplexity"} <= set(ref["test"])
    else:
        log = run.read_metrics()
        assert set(log[0]) >= {"train/mlm", "train/dual_vsa", "train/msg"}
        assert len(ref["test"]) == 10


def test_schedule_must_match_train_epochs():
    from fedrec.engine.context import RunContext
    from fedrec.runner import build_trainer

    cfg = lavit_cfg(**{"train.epochs": 5})
    with pytest.raises(ConfigError, match="train.epochs: 5; expected 4"):
        build_trainer(cfg, RunContext.build(cfg))


def test_unknown_metric_and_parameter_are_config_errors():
    with pytest.raises(ConfigError, match="train.metric"):
        victor_cfg(**{"train.metric": "full/NDCG@10"})
    cfg = victor_cfg(**{"model.params.mlm_weigth": 1.0})
    from fedrec.engine.context import RunContext

    with pytest.raises(ConfigError, match="mlm_weigth"):
        RunContext.build(cfg)
