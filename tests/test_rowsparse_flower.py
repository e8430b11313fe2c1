"""Row-sparse item tables in Flower messages: the wire format, its validation, and rounds.

With ``federation.item_updates: sparse`` a client's reply carries each item table as
``<name>::row_ids`` / ``<name>::rows`` (its touched rows). The server validates the pair,
stacks the replies as a RowSparse and aggregates: rounds through ``FlowerTrainer`` give the
same parameters as dense replies (row-wise and coordinate-wise rules read the same values in
the same order, so exactly the same).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from helpers import TINY_FEDERATED, config_with

from fedrec.engine.context import RunContext
from fedrec.engine.federation import Federation, build_aggregator
from fedrec.engine.flower import FlowerTrainer, client_train, reply_arrays
from fedrec.rowsparse import ROW_IDS, ROW_VALUES, RowSparse, decode_rows, encode_rows
from strategies.fedrec_strategy import stack_replies
from strategies.validation import check_update

torch.set_num_threads(1)


def test_encode_decode_round_trip():
    table = torch.zeros(10, 3)
    table[[2, 7]] = torch.randn(2, 3)
    arrays = encode_rows("t", table)
    assert arrays["t" + ROW_IDS].tolist() == [2, 7]
    rs = decode_rows(arrays, "t", (10, 3))
    assert isinstance(rs, RowSparse) and torch.equal(rs.to_dense()[0], table)
    # through a Flower ArrayRecord and back
    back = dict(ArrayRecord(arrays).to_torch_state_dict())
    assert back["t" + ROW_IDS].dtype == torch.int64
    assert torch.equal(decode_rows(back, "t", (10, 3)).to_dense()[0], table)


@pytest.mark.parametrize("ids,rows,why", [
    (torch.tensor([1, 1]), torch.ones(2, 3), "strictly increasing"),
    (torch.tensor([3, 10]), torch.ones(2, 3), "must lie in"),
    (torch.tensor([1.0, 2.0]), torch.ones(2, 3), "int64"),
    (torch.tensor([1, 2]), torch.ones(2, 4), "shape"),
    (torch.tensor([1, 2]), torch.tensor([[1.0, float("nan"), 0.0], [1.0, 1.0, 1.0]]),
     "non-finite"),
])
def test_malformed_rows_are_refused(ids, rows, why):
    update = {"t" + ROW_IDS: ids, "t" + ROW_VALUES: rows, "b": torch.zeros(2)}
    shapes = {"t": (10, 3), "b": (2,)}
    assert why in check_update(update, shapes)


def test_check_update_accepts_rows_and_refuses_mixed_or_partial():
    shapes = {"t": (10, 3), "b": (2,)}
    good = {**encode_rows("t", torch.eye(10, 3)), "b": torch.zeros(2)}
    assert check_update(good, shapes) is None
    assert "both dense and as rows" in check_update({**good, "t": torch.zeros(10, 3)}, shapes)
    partial = {"t" + ROW_IDS: torch.tensor([0]), "b": torch.zeros(2)}
    assert "needs both" in check_update(partial, shapes)


def test_mixed_replies_stack_as_one_row_sparse_table():
    gen = torch.Generator().manual_seed(0)
    tables = [torch.randn(6, 2, generator=gen) * (torch.rand(6, 1, generator=gen) > 0.5)
              for _ in range(3)]
    replies = [{**encode_rows("t", tables[0]), "b": torch.ones(1)},
               {"t": tables[1], "b": torch.ones(1)},
               {**encode_rows("t", tables[2]), "b": torch.ones(1)}]
    stacked = stack_replies(replies, {"t": (6, 2), "b": (1,)})
    assert isinstance(stacked["t"], RowSparse)
    assert torch.equal(stacked["t"].to_dense(), torch.stack(tables))
    assert torch.equal(stacked["b"], torch.ones(3, 1))


class _Grid:
    """Answers each train message with the ClientApp's work and its reply arrays."""

    def __init__(self, fed: Federation, client_of: dict[int, int]) -> None:
        self.fed, self.client_of = fed, client_of

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            cid = self.client_of[msg.metadata.dst_node_id]
            upd = client_train(self.fed, cid, int(msg.content["config"]["fedrec-round"]),
                               msg.content["arrays"].to_torch_state_dict())
            metrics = MetricRecord({"num-examples": int(upd.num_examples), "client-id": cid,
                                    "loss": float(upd.metrics["loss"])})
            out.append(Message(RecordDict({"arrays": reply_arrays(self.fed, upd),
                                           "metrics": metrics}), reply_to=msg))
        return out


def _trainer(item_updates: str, defense: str) -> FlowerTrainer:
    over = {"model.dropout": 0.0, "federation.item_updates": item_updates,
            "defense.name": defense, "federation.epochs": 1, "attack.name": "random",
            "attack.fraction": 0.1, "data.synthetic.n_items": 200}
    cfg = config_with(json.loads(json.dumps(TINY_FEDERATED)), **over)
    fed = Federation.build(RunContext.build(cfg))
    trainer = FlowerTrainer(fed, build_aggregator(cfg, tuple(fed.ctx.model.item_param_names), fed))
    trainer.node_of = {int(c): 1000 + int(c) for c in fed.threat.participants()}
    worker = Federation.build(RunContext.build(cfg))
    trainer.grid = _Grid(worker, {n: c for c, n in trainer.node_of.items()})
    return trainer


@pytest.mark.parametrize("defense", ["itemwise_median", "median"])
def test_flower_rounds_with_sparse_replies_equal_dense(monkeypatch, defense):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    dense, sparse = _trainer("dense", defense), _trainer("sparse", defense)
    for step in range(2):
        m_d, m_s = dense.train_step(step), sparse.train_step(step)
        assert m_d == pytest.approx(m_s, nan_ok=True)
    for n, v in dense.params.items():
        assert torch.equal(sparse.params[n], v), n
    assert any(not torch.equal(v, p) for v, p in
               zip(dense.params.values(), dense.fed.ctx.model.parameters(), strict=True))
    assert np.isfinite(m_s["loss"])
