"""A number we print is true or absent: non-finite models, scores and aggregates never become
metrics; a broken run stops, keeps what it computed and is marked failed."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import TINY_FEDERATED, config_with

from defenses.registry import build_defense
from fedrec.errors import NonFiniteError
from fedrec.evaluation import EvalProtocol, evaluate
from fedrec.metrics import full_ranks, sampled_ranks
from fedrec.results import RunDir
from fedrec.runner import run_experiment
from strategies.optimizer import ServerOptimizer
from strategies.server import ServerAggregator

torch.set_num_threads(1)

NAN, INF = float("nan"), float("inf")

FED = {**TINY_FEDERATED, "federation": {**TINY_FEDERATED["federation"], "epochs": 2}}
CENT = {
    "mode": "centralized",
    "data": {"synthetic": {"n_users": 60, "n_items": 40, "max_len": 20, "mean_len": 8}},
    "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "dropout": 0.1, "max_len": 10},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.01},
    "eval": {"n_negatives": 10, "ks": [10]},
}


def _cfg(base, **over):
    return config_with(json.loads(json.dumps(base)), **over)


# ----------------------------------------------------------------------------- ranking


def test_nan_or_neginf_own_score_gets_the_worst_rank():
    scores = torch.tensor([[0.0, NAN, 1.0, 2.0], [0.0, -INF, -INF, -INF]])
    ranks = full_ranks(scores, torch.tensor([1, 1]))
    assert (ranks >= 3).all()  # was 0 (NaN > x is False for every x): HR@1 = 1
    neg = torch.tensor([[2, 3], [2, 3]])
    assert (sampled_ranks(scores, torch.tensor([1, 1]), neg) >= 2).all()


@pytest.mark.parametrize("bad", [NAN, INF])
def test_evaluation_refuses_nonfinite_scores(bad):
    def scorer(seqs):
        out = torch.zeros(seqs.shape[0], 11)
        out[:, 3] = bad
        return out

    hist = [np.array([1, 2]), np.array([4, 5, 6])]
    with pytest.raises(NonFiniteError, match="not finite"):
        evaluate(scorer, hist, np.array([3, 7]), EvalProtocol(ks=(5,), n_negatives=3), 5, 10)


def test_all_neginf_scores_are_refused():
    hist = [np.array([1, 2])]
    with pytest.raises(NonFiniteError):
        evaluate(lambda s: torch.full((s.shape[0], 11), -INF), hist, np.array([3]),
                 EvalProtocol(ks=(5,), sampled=False), 5, 10)


# ----------------------------------------------------------------------------- runs fail


def _poison_after(monkeypatch, trainer_cls, step):
    original = trainer_cls.train_step

    def poisoned(self, s):
        out = original(self, s)
        if s == step:
            for v in self.parameters_to_check().values():
                if v.is_floating_point():
                    v.fill_(NAN)
                    break
        return out

    monkeypatch.setattr(trainer_cls, "train_step", poisoned)


@pytest.mark.parametrize("mode", ["centralized", "federated"])
def test_a_model_that_becomes_nonfinite_fails_the_run_and_keeps_earlier_steps(tmp_path, monkeypatch, mode):
    if mode == "centralized":
        from fedrec.engine.centralized import CentralizedTrainer as cls

        cfg, unit = _cfg(CENT), "epoch"
    else:
        from fedrec.engine.federated import FederatedTrainer as cls

        cfg, unit = _cfg(FED, **{"federation.eval_unit": "round"}), "round"
    _poison_after(monkeypatch, cls, 2)
    with pytest.raises(NonFiniteError, match=f"^{unit} 2: .*non-finite"):
        run_experiment(cfg, tmp_path / "r", progress=False)
    run = RunDir(tmp_path / "r")
    assert [r["step"] for r in run.read_metrics()] == [0, 1]  # what was computed is kept
    assert run.load_checkpoint()["loop"]["next_step"] == 2
    assert not run.is_finished()
    assert "NonFiniteError" in (tmp_path / "r" / "error.txt").read_text()


def test_scores_that_overflow_fail_the_run_at_the_evaluation(tmp_path, monkeypatch):
    from fedrec.engine.centralized import CentralizedTrainer

    original = CentralizedTrainer.train_step

    def huge(self, s):
        out = original(self, s)
        if s == 1:  # finite parameters whose scores overflow float32
            with torch.no_grad():
                for p in self.ctx.model.parameters():
                    p.fill_(1e30)
        return out

    monkeypatch.setattr(CentralizedTrainer, "train_step", huge)
    with pytest.raises(NonFiniteError, match="^epoch 1: the model's scores are not finite"):
        run_experiment(_cfg(CENT), tmp_path / "r", progress=False)
    assert [r["step"] for r in RunDir(tmp_path / "r").read_metrics()] == [0]


def test_cli_exits_1_with_one_line_for_a_nonfinite_run(tmp_path):
    from typer.testing import CliRunner

    from fedrec.cli import app

    cfg = dict(FED, attack={"name": "dvfsr", "fraction": 0.05, "scale": 1e30},
               federation=dict(FED["federation"], epochs=1))
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "not finite" in errors[0] and "round" in errors[0]
    assert "Traceback" not in res.output and "HR@10=1.0000" not in res.output
    assert (tmp_path / "r" / "error.txt").is_file()


# ----------------------------------------------------------------------------- server checks


def _agg(rule="sum", lr=1.0, kind="sgd", **kw):
    return ServerAggregator(build_defense(rule, {}), ServerOptimizer(kind, lr=lr), "fedsgd", **kw)


def test_a_nonfinite_aggregate_is_refused_and_the_model_stays(caplog):
    # each update is finite, their float32 sum is not
    stacked = {"w": torch.tensor([[3e38, 0.0], [3e38, 1.0]])}
    params = {"w": torch.tensor([1.0, 2.0])}
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        new, report = _agg("sum").round(params, stacked, torch.ones(2), [0, 1], 7, 0)
    assert torch.equal(new["w"], params["w"])
    assert report.refused and "aggregate is not finite" in report.refused
    assert any("round 7: refused" in r.message for r in caplog.records)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_nonfinite_new_parameters_are_refused_and_optimizer_state_kept(kind):
    agg = _agg("mean", lr=1e38 if kind == "sgd" else 1e39, kind=kind)
    params = {"w": torch.tensor([1.0, 2.0])}
    before = agg.optimizer.state_dict()
    new, report = agg.round(params, {"w": torch.tensor([[10.0, 10.0]])}, torch.ones(1), [0], 0, 0)
    assert torch.equal(new["w"], params["w"]) and "new global parameters" in report.refused
    assert agg.optimizer.state_dict()["t"] == before["t"] and agg.optimizer.m == before["m"]


def test_max_update_norm_drops_big_updates_with_a_log_line(caplog):
    agg = _agg("mean", max_update_norm=5.0)
    stacked = {"w": torch.tensor([[3.0, 4.0], [30.0, 40.0], [1.0, 0.0]])}
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        new, report = agg.round({"w": torch.zeros(2)}, stacked, torch.ones(3), [4, 5, 6], 0, 0)
    assert report.dropped == [5] and report.kept.tolist() == [True, False, True]
    torch.testing.assert_close(new["w"], torch.tensor([-2.0, -2.0]))
    assert any("client 5" in r.message and "max_update_norm" in r.message for r in caplog.records)


def test_max_update_norm_guards_an_attacked_run(tmp_path):
    cfg = _cfg(FED, **{"attack.name": "dvfsr", "attack.fraction": 0.05, "attack.scale": 1e30,
                       "federation.max_update_norm": 100.0, "federation.epochs": 1})
    summary = run_experiment(cfg, tmp_path / "r", progress=False)
    recs = RunDir(tmp_path / "r").read_metrics()
    assert sum(r["train/dropped"] for r in recs) == 3  # the 3 attackers, once each
    assert all(np.isfinite(v) for v in summary["test"].values())


def test_fast_path_falls_back_when_an_update_is_not_finite(tmp_path, monkeypatch):
    """A NaN from an attacker in a linear FedSGD round: the engine recomputes the round client
    by client so the server drops exactly that update (the round goes on)."""
    from attacks.base import Attack
    from attacks.registry import ATTACKS
    from clients.update import Update

    class NaNAttack(Attack):
        name = "_test_nan_fast"

        def _craft(self, model, global_params, client_id, threat, rc):
            return Update({n: torch.full_like(p, NAN) for n, p in global_params.items()}, 5)

    monkeypatch.setitem(ATTACKS, NaNAttack.name, NaNAttack)
    cfg = _cfg(FED, **{"attack.name": NaNAttack.name, "attack.fraction": 0.05,
                       "defense.name": "sum", "federation.epochs": 1})
    run_experiment(cfg, tmp_path / "r", progress=False)
    recs = RunDir(tmp_path / "r").read_metrics()
    assert sum(r["train/dropped"] for r in recs) == 3
    assert sum(r["train/refused"] for r in recs) == 0


def test_a_nonfinite_grid_cell_is_failed_in_the_table_and_the_report(tmp_path):
    from fedrec.bench.execute import run_grid
    from fedrec.bench.grid import parse_grid
    from fedrec.bench.report import render_report
    from fedrec.bench.table import build_table

    base = dict(FED, attack={"name": "dvfsr", "fraction": 0.05},
                federation=dict(FED["federation"], epochs=1))
    grid = parse_grid({"name": "nan", "base": base, "axes": {"attack.scale": [1.0, 1e30]}}, "g.yaml")
    outcome = run_grid(grid, grid.cells(), tmp_path, address="inline", progress=False)
    assert outcome.finished == 1 and len(outcome.failed) == 1
    assert "not finite" in outcome.failed[0][1]
    df = build_table(tmp_path)
    bad = df[df["cell_id"] == outcome.failed[0][0]]
    assert set(bad["status"]) == {"failed"}
    assert not ((bad["split"] == "test") & bad["metric"].str.startswith("HR")).any()
    report = render_report(tmp_path, df, plots=False).read_text()
    failed_part = report[report.index("ailed"):]
    assert outcome.failed[0][0] in failed_part and "not finite" in failed_part
