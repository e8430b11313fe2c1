"""The local engine with ``federation.item_updates: sparse`` reaches the dense engine's model.

Same config, same seed, rounds with attackers (dense crafted tables converted at the boundary)
and a vector-wise, a coordinate-wise and an item-wise rule: the global parameters after the
rounds agree with the dense engine's in float64 (the sparse path differentiates and sums the
same terms; in float64 the order of the sums changes ~1e-15 of them).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_FEDERATED, config_with

from fedrec.engine.context import RunContext
from fedrec.engine.federated import build_federated_trainer
from fedrec.errors import ConfigError

torch.set_num_threads(1)


def _trainer(**over):
    cfg = config_with(json.loads(json.dumps(TINY_FEDERATED)), **over)
    return build_federated_trainer(RunContext.build(cfg))


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("defense,params", [("krum", {"f": 2}), ("median", {}),
                                            ("itemwise_median", {}), ("mean", {})])
def test_sparse_engine_equals_dense(defense, params, float64):
    over = {"defense.name": defense, "defense.params": params, "attack.name": "random",
            "attack.fraction": 0.1, "federation.epochs": 1, "data.synthetic.n_items": 300}
    dense = _trainer(**over)  # each build seeds torch's global stream (dropout masks)
    rec_d = [dense.train_step(step) for step in range(3)]
    sparse = _trainer(**{**over, "federation.item_updates": "sparse"})
    rec_s = [sparse.train_step(step) for step in range(3)]
    assert sparse.sparse_items and not dense.sparse_items
    for m_d, m_s in zip(rec_d, rec_s, strict=True):
        assert m_d.keys() == m_s.keys()
        for k in m_d:
            assert m_s[k] == pytest.approx(m_d[k], rel=1e-9, abs=1e-12, nan_ok=True), k
    for n, v in dense.params.items():
        assert v.dtype == torch.float64
        torch.testing.assert_close(sparse.params[n], v, atol=1e-12, rtol=1e-9)


def test_sparse_needs_a_sampled_loss():
    with pytest.raises(ConfigError, match="federation.item_updates=sparse"):
        _trainer(**{"model.name": "bert4rec", "federation.item_updates": "sparse"})


def test_sparse_run_resumes_to_identical_result(tmp_path, monkeypatch):
    """A run with sparse item rows and a stateful row-wise rule (HiCS: its bank is in the
    checkpoint) resumes after a crash to the uninterrupted run's metrics and parameters."""
    from fedrec.engine import federated
    from fedrec.results import RunDir
    from fedrec.runner import run_experiment

    cfg = config_with(json.loads(json.dumps(TINY_FEDERATED)), **{
        "federation.item_updates": "sparse", "defense.name": "hics",
        "defense.params": {"tau_item": 1.0, "fraction": 0.5}, "federation.epochs": 2})
    full = run_experiment(cfg, tmp_path / "full", progress=False)
    original = federated.FederatedTrainer.train_step
    calls = {"n": 0}

    def crashing(self, step):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return original(self, step)

    monkeypatch.setattr(federated.FederatedTrainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(federated.FederatedTrainer, "train_step", original)
    resumed = run_experiment(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed["test"] == full["test"]
    strip = [{k: v for k, v in r.items() if k != "seconds"}
             for r in RunDir(tmp_path / "full").read_metrics()]
    assert [{k: v for k, v in r.items() if k != "seconds"}
            for r in RunDir(tmp_path / "cut").read_metrics()] == strip
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["trainer"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["trainer"]
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
