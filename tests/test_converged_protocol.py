"""The converged protocol: early-stopped benign pre-training, then runs that start from it."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import TINY_FEDERATED, config_with

from fedrec.engine.context import RunContext
from fedrec.engine.converged import MODEL_FILE, load_initial_params, save_model
from fedrec.engine.federated import build_federated_trainer
from fedrec.errors import ConfigError
from fedrec.runner import run_experiment

torch.set_num_threads(1)


def _raw(**over):
    raw = copy.deepcopy(TINY_FEDERATED)
    raw["federation"] = {**raw["federation"], "epochs": 6}
    return config_with(raw, **over)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "pre"
    cfg = _raw(**{"federation.early_stop_metric": "full/NDCG@10", "federation.patience": 1})
    summary = run_experiment(cfg, out, progress=False)
    return out, summary


def test_pretraining_selects_on_validation_and_writes_the_best_model(pretrained):
    out, summary = pretrained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "valid/full/NDCG@10" in r]
    assert evals and not any(k.startswith("test/") for r in records for k in r)
    best = max(evals, key=lambda r: r["valid/full/NDCG@10"])
    assert summary["best_step"] == best["step"]
    assert summary["best_valid"] == pytest.approx(best["valid/full/NDCG@10"])
    assert "full/HR@10" in summary["test"]
    if summary["stopped_early"]:  # patience 1: stopped right after the first non-improvement
        assert evals[-1]["valid/full/NDCG@10"] <= summary["best_valid"]
    model = torch.load(out / MODEL_FILE, weights_only=True)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)["loop"]["best_model"]
    for n in model:
        assert torch.equal(model[n], ckpt[n])  # the selected model, not the last one


def test_attack_run_starts_from_the_pretrained_parameters(pretrained, tmp_path):
    out, _ = pretrained
    cfg = _raw(**{"federation.init_from": str(out), "federation.epochs": 1,
                  "attack.name": "dvfsr_ref", "attack.fraction": 0.05,
                  "attack.params": {"repeats": 1}})
    trainer = build_federated_trainer(RunContext.build(cfg))
    model = torch.load(out / MODEL_FILE, weights_only=True)
    for n, v in trainer.params.items():
        assert torch.equal(v, model[n])
    # evaluated on test every epoch, like any attack run, and different from a fresh start
    summary = run_experiment(cfg, tmp_path / "attack", progress=False)
    fresh = run_experiment(_raw(**{"federation.epochs": 1, "attack.name": "dvfsr_ref",
                                   "attack.fraction": 0.05, "attack.params": {"repeats": 1}}),
                           tmp_path / "fresh", progress=False)
    assert "full/ER@10" in summary["test"]
    assert summary["test"]["full/HR@10"] != fresh["test"]["full/HR@10"]


def test_bad_sources_and_metrics_are_config_errors(tmp_path, pretrained):
    out, _ = pretrained
    like = torch.load(out / MODEL_FILE, weights_only=True)
    with pytest.raises(ConfigError, match="federation.init_from.*no model.pt"):
        load_initial_params(tmp_path / "nothing", like)
    wrong = {n: torch.zeros(3) for n in like}
    save_model(tmp_path, wrong)
    with pytest.raises(ConfigError, match="federation.init_from.*shape"):
        load_initial_params(tmp_path, like)
    save_model(tmp_path, {"other": torch.zeros(1)})
    with pytest.raises(ConfigError, match="federation.init_from.*differ"):
        load_initial_params(tmp_path / MODEL_FILE, like)
    with pytest.raises(ConfigError, match="federation.early_stop_metric"):
        _raw(**{"federation.early_stop_metric": "full/NDCG@7"})
