"""Centralized training end to end (runner + step loop + CentralizedTrainer) on synthetic data.

SASRec must beat a most-popular recommender by a wide margin; an interrupted and resumed run
must end with exactly the metrics (and metrics log) of an uninterrupted one; the same seed must
give the same run; early stopping and run-directory protection must behave.
"""

from __future__ import annotations

import pytest
import torch
from helpers import config_with, interrupted_in_step, strip_timing

from fedrec.config import load_config
from fedrec.data.loader import load_split
from fedrec.engine.centralized import CentralizedTrainer
from fedrec.engine.context import eval_protocol
from fedrec.errors import ConfigError
from fedrec.evaluation import evaluate, popularity_scorer
from fedrec.results import RunDir
from fedrec.runner import run_experiment

torch.set_num_threads(1)


def tiny(**over):
    """A small, fast centralized SASRec config (dropout on, so RNG state matters)."""
    raw = {
        "name": "tiny", "seed": 3, "threads": 1,
        "data": {"synthetic": {"n_users": 200, "n_items": 100, "mean_len": 10}},
        "model": {"name": "sasrec", "hidden": 16, "blocks": 1, "max_len": 12, "dropout": 0.2},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.005, "patience": 100},
        "eval": {"ks": [5, 10], "n_negatives": 20},
    }
    return config_with(raw, **over)


def test_sasrec_beats_most_popular_by_a_wide_margin(tmp_path):
    # Measured (seeds 0-3, 4 epochs): SASRec's full HR@10 is 3.8-4.8x popularity's, full
    # NDCG@10 4.8-6.3x, sampled NDCG@10 2.4-2.9x.
    cfg = load_config(base={
        "name": "vs_pop", "seed": 0, "threads": 1,
        "model": {"hidden": 32, "blocks": 1, "max_len": 20, "dropout": 0.1},
        "train": {"epochs": 4, "lr": 0.003, "eval_every": 100, "patience": 100},
        "eval": {"ks": [10], "n_negatives": 100},
    })
    split = load_split(cfg.data)  # the default synthetic data: 1,000 users, 500 items
    pop = evaluate(popularity_scorer(split.train_item_counts()), split.test_inputs(), split.test,
                   eval_protocol(cfg), cfg.model.max_len, split.n_items)
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    test = summary["test"]
    assert pop["full/HR@10"] > 0.05  # popularity is a meaningful baseline, not a strawman
    assert test["full/HR@10"] >= 3.0 * pop["full/HR@10"]
    assert test["full/NDCG@10"] >= 3.5 * pop["full/NDCG@10"]
    assert test["sampled/NDCG@10"] >= 1.8 * pop["sampled/NDCG@10"]


def test_resume_after_a_crash_gives_identical_results(tmp_path, monkeypatch):
    cfg = tiny()
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)

    # crash in the middle of epoch 2: after one optimizer step has changed the weights, the
    # Adam state and the dropout RNG, so resuming must restore all of them from the checkpoint
    with interrupted_in_step(monkeypatch, CentralizedTrainer, "loss", step=2):
        run_experiment(cfg, tmp_path / "crash", progress=False)
    run = RunDir(tmp_path / "crash")
    assert not run.is_finished()
    assert [r["step"] for r in run.read_metrics()] == [0, 1]

    resumed = run_experiment(cfg, tmp_path / "crash", resume=True, progress=False)
    assert resumed["test"] == ref["test"]
    assert resumed["best_step"] == ref["best_step"] and resumed["steps_run"] == ref["steps_run"]
    assert resumed["best_valid"] == ref["best_valid"]
    ref_log = strip_timing(RunDir(tmp_path / "ref").read_metrics())
    assert strip_timing(run.read_metrics()) == ref_log
    assert [r["step"] for r in ref_log] == [0, 1, 2, 3]


def test_resume_of_a_finished_run_returns_its_summary(tmp_path, monkeypatch):
    cfg = tiny(**{"train.epochs": 1})
    first = run_experiment(cfg, tmp_path / "r", progress=False)

    def fail(self, step):  # pragma: no cover - must not be called
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(CentralizedTrainer, "train_step", fail)
    assert run_experiment(cfg, tmp_path / "r", resume=True, progress=False) == first


def test_same_seed_same_run_and_seed_matters(tmp_path):
    cfg = tiny(**{"train.epochs": 2})
    a = run_experiment(cfg, tmp_path / "a", progress=False)
    b = run_experiment(cfg, tmp_path / "b", progress=False)
    assert a["test"] == b["test"]
    assert strip_timing(RunDir(tmp_path / "a").read_metrics()) == strip_timing(
        RunDir(tmp_path / "b").read_metrics())
    c = run_experiment(tiny(**{"train.epochs": 2, "seed": 4}), tmp_path / "c", progress=False)
    assert c["test"] != a["test"]


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    # with a vanishing learning rate the model never improves after the first evaluation
    cfg = tiny(**{"train.epochs": 10, "train.lr": 1e-12, "train.patience": 2})
    s = run_experiment(cfg, tmp_path / "r", progress=False)
    assert s["stopped_early"] and s["steps_run"] == 3 and s["best_step"] == 0
    assert s["early_stop_metric"] == "full/NDCG@10"
    assert len(RunDir(tmp_path / "r").read_metrics()) == 3
    assert {"peak_rss_mb", "seconds_per_step", "n_parameters", "test"} <= s.keys()


def test_unknown_early_stopping_metric_is_reported(tmp_path):
    from fedrec.errors import ConfigError

    # a config error when the config is read (before any data or model is built)
    with pytest.raises(ConfigError, match="train.metric"):
        run_experiment(tiny(**{"train.epochs": 1, "train.metric": "full/NDCG@7"}), tmp_path / "r",
                       progress=False)
    assert not (tmp_path / "r").exists()


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path):
    cfg = tiny(**{"train.epochs": 1})
    run_experiment(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError) as exc:
        run_experiment(cfg, tmp_path / "r", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "r") in msg
    assert "--resume" in msg and "--overwrite" in msg
    again = run_experiment(cfg, tmp_path / "r", overwrite=True, progress=False)
    assert again["steps_run"] == 1
