"""Server side: optimizer math, validation of updates, detection metrics, schedule, threat model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.threat import build_threat_model, n_malicious, select_targets
from defenses.registry import build_defense
from fedrec.config import AttackConfig, TargetConfig
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import generate
from fedrec.engine.schedule import RoundSchedule
from fedrec.errors import ConfigError
from strategies.optimizer import ServerOptimizer, step_schedule
from strategies.server import RoundReport, ServerAggregator, detection_metrics
from strategies.validation import check_update, finite_rows


def _params():
    return {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}


def test_sgd_step_and_schedule():
    opt = ServerOptimizer("sgd", lr=0.1, decay=0.5, decay_every=5)
    out = opt.step(_params(), {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([[2.0]])}, epoch=5)
    torch.testing.assert_close(out["w"], torch.tensor([0.95, -2.05]))
    torch.testing.assert_close(out["b"], torch.tensor([[0.4]]))
    assert step_schedule(1.0, 0.5, 5, 14) == 0.25


def test_adam_matches_torch_adam():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    ref = torch.optim.Adam([p], lr=0.01)
    opt = ServerOptimizer("adam", lr=0.01)
    cur = {"w": torch.tensor([1.0, -2.0])}
    for g in ([0.3, -1.0], [0.1, 0.2], [-0.5, 0.0]):
        p.grad = torch.tensor(g)
        ref.step()
        cur = opt.step(cur, {"w": torch.tensor(g)}, epoch=0)
    torch.testing.assert_close(cur["w"], p.detach(), atol=1e-6, rtol=1e-6)


def test_fedavg_server_applies_mean_delta():
    agg = ServerAggregator(build_defense("mean", {}), ServerOptimizer("sgd", lr=1.0), "fedavg")
    stacked = {"w": torch.tensor([[1.0, 0.0], [3.0, 2.0]]), "b": torch.zeros(2, 1, 1)}
    new, report = agg.round(_params(), stacked, torch.tensor([1.0, 1.0]), [0, 1], 0, 0)
    torch.testing.assert_close(new["w"], torch.tensor([3.0, -1.0]))  # θ + mean Δ
    assert report.kept.all()


def test_sum_vs_mean_aggregation():
    stacked = {"w": torch.tensor([[1.0, 1.0], [3.0, 1.0]]), "b": torch.zeros(2, 1, 1)}
    w = torch.tensor([1.0, 3.0])
    out = {}
    for rule in ("sum", "mean"):
        agg = ServerAggregator(build_defense(rule, {}), ServerOptimizer("sgd", lr=1.0), "fedsgd")
        out[rule], _ = agg.round({"w": torch.zeros(2), "b": torch.zeros(1, 1)}, stacked, w, [0, 1], 0, 0)
    torch.testing.assert_close(out["sum"]["w"], torch.tensor([-4.0, -2.0]))
    torch.testing.assert_close(out["mean"]["w"], torch.tensor([-2.5, -1.0]))  # weighted by examples


def test_nonfinite_updates_are_dropped_and_round_goes_on(caplog):
    agg = ServerAggregator(build_defense("mean", {}), ServerOptimizer("sgd", lr=1.0), "fedsgd")
    stacked = {"w": torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [3.0, 3.0]]),
               "b": torch.tensor([[[0.0]], [[0.0]], [[float("inf")]]])}
    with caplog.at_level("WARNING", logger="fedrec"):
        new, report = agg.round({"w": torch.zeros(2), "b": torch.zeros(1, 1)}, stacked,
                                torch.ones(3), [10, 11, 12], 4, 0)
    torch.testing.assert_close(new["w"], torch.tensor([-1.0, -1.0]))  # only client 10 kept
    assert report.dropped == [11, 12]
    assert report.kept.tolist() == [True, False, False]
    assert sum("dropped update of client 11" in r.message for r in caplog.records) == 1


def test_check_update_reasons():
    shapes = {"w": (2,), "b": (1, 1)}
    assert check_update({"w": torch.zeros(2), "b": torch.zeros(1, 1)}, shapes) is None
    assert "wrong keys" in check_update({"w": torch.zeros(2)}, shapes)
    assert "shape" in check_update({"w": torch.zeros(3), "b": torch.zeros(1, 1)}, shapes)
    assert "non-finite" in check_update({"w": torch.tensor([0.0, float("inf")]), "b": torch.zeros(1, 1)}, shapes)
    assert "dtype" in check_update({"w": torch.zeros(2, dtype=torch.long), "b": torch.zeros(1, 1)}, shapes)
    assert finite_rows({"w": torch.tensor([[1.0], [float("nan")]])}).tolist() == [True, False]


def test_detection_precision_recall():
    report = RoundReport(np.array([1, 2, 3, 4]), np.array([True, False, False, True]))
    m = detection_metrics(report, malicious={2, 4})
    assert m["detect_precision"] == 0.5 and m["detect_recall"] == 0.5 and m["flagged"] == 2
    clean = detection_metrics(RoundReport(np.array([1]), np.array([True])), malicious=set())
    assert np.isnan(clean["detect_precision"]) and np.isnan(clean["detect_recall"])


def test_schedule_covers_every_client_once_per_epoch():
    parts = np.arange(103)
    sched = RoundSchedule(parts, clients_per_round=25, seed=1, epochs=2)
    assert sched.rounds_per_epoch == 5 and sched.n_rounds == 10
    for epoch in range(2):
        seen = np.concatenate([sched.clients(epoch * 5 + k) for k in range(5)])
        assert sorted(seen.tolist()) == parts.tolist()
        assert all((np.diff(sched.clients(epoch * 5 + k)) > 0).all() for k in range(5))
    assert not np.array_equal(sched.clients(0), sched.clients(5))  # reshuffled per epoch
    assert np.array_equal(sched.clients(3), RoundSchedule(parts, 25, 1, epochs=2).clients(3))


def test_threat_model_add_and_replace():
    split = leave_one_out(generate(n_users=300, n_items=80, seed=0))
    add = build_threat_model(AttackConfig(name="random", fraction=0.01), split, seed=0)
    assert add.n_malicious == 3 and add.malicious_ids.tolist() == [300, 301, 302]
    assert len(add.benign_users()) == 300 and len(add.participants()) == 303
    assert all(len(a) for a in add.accounts.values())
    rep = build_threat_model(AttackConfig(name="random", fraction=0.01, mode="replace"), split, seed=0)
    assert len(rep.benign_users()) == 297 and len(rep.participants()) == 300
    assert set(rep.malicious_ids.tolist()).isdisjoint(rep.benign_users().tolist())
    none = build_threat_model(AttackConfig(name="none"), split, seed=0)
    assert none.n_malicious == 0 and len(none.targets) == 1  # targets still defined for ER
    assert n_malicious(0.001, 3753) == 3 and n_malicious(0.0001, 100) == 1 and n_malicious(0, 10) == 0


def test_target_selection():
    counts = np.array([0, 5, 1, 1, 9, 0, 3])  # items 1..6
    assert select_targets(TargetConfig(select="least_popular", n=2), counts, 6).tolist() == [5, 2]
    assert select_targets(TargetConfig(select="ids", ids=[4]), counts, 6).tolist() == [4]
    with pytest.raises(ConfigError, match="outside"):
        select_targets(TargetConfig(select="ids", ids=[7]), counts, 6)
    top = select_targets(TargetConfig(select="bucket", n=1, bucket=(0.0, 0.15)), counts, 6)
    assert top.tolist() == [4]  # the single most popular item
