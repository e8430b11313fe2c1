"""The Flower engine's pieces without Ray: reply validation, train_step, client seeding.

* ``FedRecStrategy.aggregate_train`` is fed hand-built reply ``Message`` objects (a real
  ``Message`` needs the process-wide ``TaskIdentity``; the ``flower_identity`` fixture sets it
  with ``monkeypatch`` so it is undone after each test). Values a ``MetricRecord`` refuses
  (bool, str) are sent through a plain stand-in for the reply content.
* ``FlowerTrainer.train_step`` runs against :class:`FakeGrid`, which answers each message by
  calling the ClientApp's own work (:func:`fedrec.engine.flower.client_train`) on one shared
  "worker" federation, in an order of its choosing — what a Ray worker does, minus Ray.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.supercore.task_identity import TaskIdentity

from clients.update import client_torch_rng, client_torch_seed, client_update
from defenses.registry import build_defense
from fedrec.config import load_config
from fedrec.engine.context import RunContext
from fedrec.engine.federated import FederatedTrainer
from fedrec.engine.federation import Federation, build_aggregator
from fedrec.engine.flower import FlowerTrainer, client_train
from fedrec.rowsparse import RowSparse, encode_row_stack
from strategies.fedrec_strategy import MAX_NUM_EXAMPLES, FedRecStrategy
from strategies.optimizer import ServerOptimizer
from strategies.server import ServerAggregator

SHAPES = {"w": (2, 3), "b": (3,)}
#: node id of client ``c`` in the strategy tests
NODE = {0: 100, 1: 101, 2: 102, 3: 103}


@pytest.fixture
def flower_identity(monkeypatch):
    """Let ``Message(...)`` be built outside a Flower run (undone after the test)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


def _params() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


def _update(cid: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(cid)
    return {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}


def _aggregator(rule: str = "mean") -> ServerAggregator:
    return ServerAggregator(build_defense(rule, {}), ServerOptimizer("sgd", lr=1.0), "fedsgd")


def _strategy(round_clients: bool = True) -> FedRecStrategy:
    strat = FedRecStrategy(_aggregator(), SHAPES,
                           round_clients=(lambda r: NODE) if round_clients else None,
                           node_selector=None if round_clients else (lambda r: list(NODE.values())))
    strat.current = _params()
    return strat


def _reply(node: int, metrics: dict[str, Any], update: dict[str, torch.Tensor] | None = None,
           plain: bool = False) -> Message:
    """A train reply from ``node``; ``plain``: metrics in a plain dict (any value types)."""
    update = update if update is not None else _update(int(metrics.get("client-id", 0)) % 97)
    sent = Message(RecordDict({"config": ConfigRecord({"fedrec-round": 0})}),
                   dst_node_id=node, message_type=MessageType.TRAIN)
    arrays = ArrayRecord({k: v.contiguous() for k, v in update.items()})
    if not plain:
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=sent)
    reply = Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({})}), reply_to=sent)
    return SimpleNamespace(content=SimpleNamespace(array_records={"arrays": arrays},
                                                   metric_records={"metrics": dict(metrics)}),
                           metadata=reply.metadata, has_error=lambda: False)


def _good(cid: int, n: float = 5) -> Message:
    return _reply(NODE[cid], {"client-id": cid, "num-examples": n, "loss": float(cid)})


def _reference(ids: list[int], counts: list[float]) -> dict[str, torch.Tensor]:
    """What the server pipeline gives for exactly these clients' updates."""
    stacked = {n: torch.stack([_update(c)[n] for c in ids]) for n in SHAPES}
    new, _ = _aggregator().round(_params(), stacked, torch.tensor(counts, dtype=torch.float64),
                                 ids, 0, 0)
    return new


def _assert_params(arrays: ArrayRecord, ref: dict[str, torch.Tensor]) -> None:
    got = arrays.to_torch_state_dict()
    for n in SHAPES:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=0)


def test_valid_replies_are_aggregated_in_client_order(flower_identity):
    strat = _strategy()
    arrays, metrics = strat.aggregate_train(1, [_good(2, 3), _good(0, 7), _good(1, 4)])
    _assert_params(arrays, _reference([0, 1, 2], [7, 4, 3]))
    assert metrics["clients"] == 3 and metrics["dropped"] == 0 and metrics["loss"] == 1.0
    assert strat.last_report.dropped == [] and strat.last_report.kept.all()


@pytest.mark.parametrize("round_clients", [True, False])
def test_duplicate_client_id_rejects_every_reply_of_that_id(flower_identity, caplog, round_clients):
    strat = _strategy(round_clients)
    # with the node map known, a second reply must come from the same node to pass identity
    dup_node = NODE[1] if round_clients else NODE[3]
    forged = _reply(dup_node, {"client-id": 1, "num-examples": 9}, update=_update(3))
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        arrays, metrics = strat.aggregate_train(1, [_good(0), _good(1), forged, _good(2)])
    _assert_params(arrays, _reference([0, 2], [5, 5]))
    assert strat.last_report.dropped == [1]
    assert metrics["clients"] == 2 and metrics["dropped"] == 1
    assert "client 1 (2 replies claim this client id; all rejected)" in caplog.text


@pytest.mark.parametrize("value", [0, -3, float("nan"), float("inf"), MAX_NUM_EXAMPLES + 1, 1e12,
                                   [5], True, "5", None])
def test_bad_num_examples_is_rejected(flower_identity, caplog, value):
    strat = _strategy()
    metrics = {"client-id": 1, "loss": 0.0}
    if value is not None:
        metrics["num-examples"] = value
    plain = isinstance(value, (bool, str))  # a MetricRecord cannot even hold these
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        bad = _reply(NODE[1], metrics, plain=plain)
        arrays, _ = strat.aggregate_train(1, [_good(0), bad, _good(2)])
    _assert_params(arrays, _reference([0, 2], [5, 5]))
    assert strat.last_report.dropped == [1]
    assert "dropped update of client 1 (num-examples" in caplog.text


@pytest.mark.parametrize("value", [1, 2.5, MAX_NUM_EXAMPLES])
def test_num_examples_in_range_is_accepted(flower_identity, value):
    strat = _strategy()
    arrays, _ = strat.aggregate_train(1, [_good(0), _good(1, value)])
    _assert_params(arrays, _reference([0, 1], [5, value]))
    assert strat.last_report.dropped == []


@pytest.mark.parametrize("value,why", [(-1, "negative"), (1.0, "not an integer"),
                                       (True, "not an integer"), ("1", "not an integer"),
                                       ([1], "not an integer"),
                                       (7, "was not sent this round's message")])
def test_bad_client_id_is_rejected(flower_identity, caplog, value, why):
    strat = _strategy()
    plain = isinstance(value, (bool, str))
    bad = _reply(NODE[3], {"client-id": value, "num-examples": 5}, update=_update(3), plain=plain)
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        arrays, _ = strat.aggregate_train(1, [_good(0), bad, _good(2)])
    _assert_params(arrays, _reference([0, 2], [5, 5]))
    assert strat.last_report.dropped == []  # no client to charge it to
    assert f"dropped a reply from node {NODE[3]}" in caplog.text and why in caplog.text


def test_client_id_claimed_from_another_clients_node_is_rejected(flower_identity, caplog):
    strat = _strategy()
    impostor = _reply(NODE[3], {"client-id": 1, "num-examples": 5}, update=_update(3))
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        arrays, _ = strat.aggregate_train(1, [_good(0), impostor, _good(2)])
    _assert_params(arrays, _reference([0, 2], [5, 5]))
    assert f"client-id 1's message went to node {NODE[1]}" in caplog.text


def test_missing_client_id_is_a_malformed_reply(flower_identity, caplog):
    strat = _strategy()
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        arrays, _ = strat.aggregate_train(1, [_good(0), _reply(NODE[1], {"num-examples": 5})])
    _assert_params(arrays, _reference([0], [5]))
    assert f"malformed reply from node {NODE[1]}" in caplog.text


def test_only_the_configured_round_clients_are_accepted(flower_identity):
    """What configure_train sent is what aggregate_train accepts (not a later schedule call)."""
    schedule = {1: {0: NODE[0], 1: NODE[1]}}
    strat = FedRecStrategy(_aggregator(), SHAPES, round_clients=lambda r: dict(schedule[r]))
    msgs = list(strat.configure_train(1, ArrayRecord(_params()), ConfigRecord({}), grid=None))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [NODE[0], NODE[1]]
    schedule[1][2] = NODE[2]  # not sent: must still be refused
    arrays, _ = strat.aggregate_train(1, [_good(0), _good(1), _good(2)])
    _assert_params(arrays, _reference([0, 1], [5, 5]))


def test_all_replies_rejected_returns_none(flower_identity):
    strat = _strategy()
    bad = _reply(NODE[1], {"client-id": 1, "num-examples": 0})
    arrays, metrics = strat.aggregate_train(1, [bad])
    assert arrays is None and metrics is None
    assert strat.last_report.dropped == [1]


# ----------------------------------------------------------------------------- engine pieces

TINY = {
    "mode": "federated",
    "data": {"synthetic": {"n_users": 24, "n_items": 40, "max_len": 20, "mean_len": 8}},
    "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "dropout": 0.3, "max_len": 10},
    "federation": {"rounds": 2, "clients_per_round": 8, "server_lr": 0.2, "engine": "flower"},
    "eval": {"n_negatives": 10, "ks": [10]},
    "attack": {"name": "none"},
}


def _fed(**model: Any) -> Federation:
    raw = json.loads(json.dumps(TINY))
    raw["model"].update(model)
    return Federation.build(RunContext.build(load_config(base=raw)))


class FakeGrid:
    """Answers train messages like a single Ray worker would, in a chosen order.

    Parameters
    ----------
    fed : Federation
        The worker's own federation (its model and torch stream are shared by all calls).
    order_seed : int or None
        Shuffle the messages with this seed before computing them (None: as sent).
    """

    def __init__(self, fed: Federation, order_seed: int | None = None) -> None:
        self.fed = fed
        self.order = np.random.default_rng(order_seed) if order_seed is not None else None
        self.client_of: dict[int, int] = {}

    def send_and_receive(self, messages, timeout: float | None = None) -> list[Message]:
        msgs = list(messages)
        if self.order is not None:
            msgs = [msgs[i] for i in self.order.permutation(len(msgs))]
        out = []
        for msg in msgs:
            cid = self.client_of[msg.metadata.dst_node_id]
            upd = client_train(self.fed, cid, int(msg.content["config"]["fedrec-round"]),
                               msg.content["arrays"].to_torch_state_dict())
            metrics = MetricRecord({"num-examples": int(upd.num_examples), "client-id": cid,
                                    "loss": float(upd.metrics["loss"])})
            arrays = ArrayRecord({k: v.detach().contiguous() for k, v in upd.params.items()})
            out.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg))
        return out


def _flower_trainer(fed: Federation, grid: FakeGrid) -> FlowerTrainer:
    cfg = fed.ctx.cfg
    trainer = FlowerTrainer(fed, build_aggregator(cfg, tuple(fed.ctx.model.item_param_names), fed))
    trainer.grid = grid
    trainer.node_of = {int(c): 1000 + int(c) for c in fed.threat.participants()}
    grid.client_of = {n: c for c, n in trainer.node_of.items()}
    return trainer


def test_client_train_depends_only_on_seed_round_and_client():
    fed = _fed()
    params = {n: p.detach().clone() for n, p in fed.ctx.model.named_parameters()}
    cid = int(fed.threat.benign_users()[0])
    first = client_train(fed, cid, 0, params)
    torch.manual_seed(1234)
    torch.rand(977)  # the worker computed something else meanwhile
    state = torch.get_rng_state()
    again = client_train(fed, cid, 0, params)
    assert torch.equal(torch.get_rng_state(), state)  # the worker's own stream is untouched
    for n in params:
        assert torch.equal(first.params[n], again.params[n])
    assert first.metrics["loss"] == again.metrics["loss"]
    # one seed per (seed, round, client), and dropout does act in this config
    seeds = {client_torch_seed(fed.round_config(r), c) for r in range(3) for c in range(5)}
    assert len(seeds) == 15
    seq, rc = fed.client_sequence(cid), fed.round_config(0)
    plain = [client_update(fed.ctx.model, params, seq, cid, rc) for _ in range(2)]
    assert plain[0].metrics["loss"] != plain[1].metrics["loss"]
    with client_torch_rng(rc, cid):
        seeded = client_update(fed.ctx.model, params, seq, cid, rc)
    assert seeded.metrics["loss"] == first.metrics["loss"]


def test_flower_trainer_with_dropout_repeats_whatever_the_worker_order(flower_identity):
    runs = []
    for order_seed in (None, 1, 2):
        fed = _fed()
        worker = _fed()  # a separate "Ray worker" with its own model and torch stream
        trainer = _flower_trainer(fed, FakeGrid(worker, order_seed))
        losses = [trainer.train_step(s)["loss"] for s in range(trainer.n_steps)]
        runs.append((losses, trainer.params))
    for losses, params in runs[1:]:
        assert losses == runs[0][0]
        for n in params:
            assert torch.equal(params[n], runs[0][1][n]), n


def test_train_step_takes_the_parameters_the_strategy_returns(flower_identity):
    fed = _fed(dropout=0.0)
    trainer = _flower_trainer(fed, FakeGrid(_fed(dropout=0.0)))
    before = {n: v.clone() for n, v in trainer.params.items()}
    marker = {n: torch.full_like(v, 0.5) for n, v in before.items()}
    real = trainer.strategy.aggregate_train

    def returns_marker(server_round, replies):
        real(server_round, replies)  # also moves strategy.current: it must not be what is used
        arrays = ArrayRecord({n: v.contiguous() for n, v in marker.items()})
        return arrays, MetricRecord({"loss": 1.0})

    trainer.strategy.aggregate_train = returns_marker
    out = trainer.train_step(0)
    assert out["loss"] == 1.0
    for n in marker:
        assert torch.equal(trainer.params[n], marker[n])
    trainer.strategy.aggregate_train = lambda server_round, replies: (None, None)
    trainer.train_step(1)
    for n in marker:
        assert torch.equal(trainer.params[n], marker[n])  # None: parameters stay


def test_flower_trainer_without_dropout_equals_local_engine(flower_identity):
    """Same rounds through the Flower code path (FakeGrid) and the local batched engine.

    Tolerance (max-norm over all parameters): the two differ only in float32 summation order.
    Per round the server moves the parameters by ``server_lr`` times a sum over the round's
    clients of gradients, each a sum over at most ``max_len * hidden`` products per entry, so
    the gap grows by at most ``server_lr * n_terms * eps * max|sum_i |g_i||`` plus
    ``eps * max|theta|`` for rounding the step itself (a norm-wise bound: entries whose
    gradient cancels to ~0, like attention key biases, still carry rounding of that size).
    """
    fed_l = _fed(dropout=0.0)
    item_names = tuple(fed_l.ctx.model.item_param_names)
    local = FederatedTrainer(fed_l, build_aggregator(fed_l.ctx.cfg, item_names))
    fed_f = _fed(dropout=0.0)
    flower = _flower_trainer(fed_f, FakeGrid(_fed(dropout=0.0), order_seed=3))
    cfg = fed_l.ctx.cfg
    eps = torch.finfo(torch.float32).eps
    n_terms = cfg.federation.clients_per_round * cfg.model.max_len * cfg.model.hidden
    lr = cfg.federation.server_lr
    tol = 0.0
    for step in range(local.n_steps):
        ids = fed_l.schedule.clients(step)
        ups = [client_update(fed_l.ctx.model, local.params, fed_l.client_sequence(int(c)), int(c),
                             fed_l.round_config(step)).params for c in ids]
        g_scale = max(float(torch.stack([u[n].abs() for u in ups]).sum(0).max())
                      for n in local.params)
        theta_scale = max(float(v.abs().max()) for v in local.params.values())
        tol += lr * n_terms * eps * g_scale + eps * theta_scale
        loss_l = local.train_step(step)["loss"]
        loss_f = flower.train_step(step)["loss"]
        assert loss_f == pytest.approx(loss_l, rel=n_terms * eps)
    gap = max(float((flower.params[n] - v).abs().max()) for n, v in local.params.items())
    assert gap <= tol, (gap, tol)
    # the bound is far below what a wrong client or mask would cause (one client's step)
    assert tol < 1e-2 * lr * g_scale / cfg.federation.clients_per_round


# ----------------------------------------------------------------------------- partition nodes

#: node id of client ``c`` with partition nodes: clients 0-2 on node 200, client 3 on node 201
PART_NODE = {0: 200, 1: 200, 2: 200, 3: 201}


def _partition_strategy() -> FedRecStrategy:
    strat = FedRecStrategy(_aggregator(), SHAPES, round_clients=lambda r: PART_NODE,
                           partition_nodes=True)
    strat.current = _params()
    return strat


def _multi(node: int, ids: list[Any], counts: list[Any] | None = None,
           arrays: dict[str, torch.Tensor] | None = None, plain: bool = False,
           **metrics: Any) -> Message:
    """A partition node's train reply for ``ids`` (each client's ``_update``, stacked)."""
    if arrays is None:
        ups = [_update(int(c) % 97) for c in ids]
        arrays = {n: torch.stack([u[n] for u in ups]) for n in SHAPES}
    values = {"client-ids": list(ids), "num-examples": counts or [5] * len(ids),
              "losses": [float(i) for i in range(len(ids))], **metrics}
    return _reply(node, values, update=arrays, plain=plain)


def test_partition_nodes_get_one_message_listing_their_round_clients(flower_identity):
    strat = _partition_strategy()
    msgs = list(strat.configure_train(3, ArrayRecord(_params()),
                                      ConfigRecord({"fedrec-round": 2}), grid=None))
    got = {m.metadata.dst_node_id: m.content["config"] for m in msgs}
    assert set(got) == {200, 201} and len(msgs) == 2
    assert got[200]["client-ids"] == [0, 1, 2] and got[201]["client-ids"] == [3]
    assert all(c["fedrec-round"] == 2 and c["server-round"] == 3 for c in got.values())
    with pytest.raises(ValueError, match="needs round_clients"):
        FedRecStrategy(_aggregator(), SHAPES, partition_nodes=True)


def test_partition_replies_are_aggregated_like_single_replies(flower_identity):
    strat = _partition_strategy()
    arrays, metrics = strat.aggregate_train(1, [_multi(201, [3], [6]),
                                                _multi(200, [0, 1, 2], [7, 4, 3])])
    _assert_params(arrays, _reference([0, 1, 2, 3], [7, 4, 3, 6]))
    assert metrics["clients"] == 4 and strat.last_report.dropped == []
    assert strat.last_report.client_ids.tolist() == [0, 1, 2, 3]


def test_partition_reply_with_row_sparse_stack(flower_identity):
    ups = [_update(c) for c in (0, 1, 2)]
    ups[1]["w"][0] = 0.0  # client 1 touched only row 1 of w
    stack = RowSparse.from_dense(torch.stack([u["w"] for u in ups]))
    arrays = {**encode_row_stack("w", stack), "b": torch.stack([u["b"] for u in ups])}
    strat = _partition_strategy()
    out, _ = strat.aggregate_train(1, [_multi(200, [0, 1, 2], arrays=arrays)])
    stacked = {n: torch.stack([u[n] for u in ups]) for n in SHAPES}
    ref, _ = _aggregator().round(_params(), stacked, torch.full((3,), 5.0, dtype=torch.float64),
                                 [0, 1, 2], 0, 0)
    for n in SHAPES:
        torch.testing.assert_close(out.to_torch_state_dict()[n], ref[n])


def test_partition_entry_claiming_another_nodes_client_is_dropped_alone(flower_identity, caplog):
    strat = _partition_strategy()
    # node 200 lists client 3 (sent to node 201) and 7 (in no message) besides its own 0 and 1
    forged = _multi(200, [0, 1, 3, 7])
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        arrays, metrics = strat.aggregate_train(1, [forged, _multi(201, [3])])
    # 0, 1 kept from node 200; the genuine 3 from node 201 is not charged with the forgery
    ups = {0: _update(0), 1: _update(1), 3: _update(3)}
    stacked = {n: torch.stack([ups[c][n] for c in (0, 1, 3)]) for n in SHAPES}
    ref, _ = _aggregator().round(_params(), stacked, torch.full((3,), 5.0, dtype=torch.float64),
                                 [0, 1, 3], 0, 0)
    _assert_params(arrays, ref)
    assert strat.last_report.dropped == [] and metrics["clients"] == 3
    assert "client-id 3's message went to node 201" in caplog.text
    assert "client-id 7 was not sent this round's message" in caplog.text


def test_one_nonfinite_client_of_a_partition_reply_is_dropped_alone(flower_identity, caplog):
    strat = _partition_strategy()
    arrays = {n: torch.stack([_update(c)[n] for c in (0, 1, 2)]) for n in SHAPES}
    arrays["w"][1, 0, 2] = float("nan")
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        out, metrics = strat.aggregate_train(1, [_multi(200, [0, 1, 2], [5, 5, 5], arrays=arrays),
                                                 _multi(201, [3])])
    _assert_params(out, _reference([0, 2, 3], [5, 5, 5]))
    assert strat.last_report.dropped == [1] and metrics["dropped"] == 1
    assert not strat.last_report.kept[strat.last_report.client_ids.tolist().index(1)]
    assert "dropped update of client 1 (w: non-finite values)" in caplog.text


def test_bad_num_examples_in_a_partition_reply_drops_that_client(flower_identity):
    strat = _partition_strategy()
    out, _ = strat.aggregate_train(1, [_multi(200, [0, 1, 2], [5, 0, 5]), _multi(201, [3])])
    _assert_params(out, _reference([0, 2, 3], [5, 5, 5]))
    assert strat.last_report.dropped == [1]


def test_duplicate_claims_in_partition_replies_drop_every_claimant(flower_identity, caplog):
    # twice in one node's list, and (without a node map) in two nodes' replies
    strat = _partition_strategy()
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        out, _ = strat.aggregate_train(1, [_multi(200, [0, 1, 1]), _multi(201, [3])])
    _assert_params(out, _reference([0, 3], [5, 5]))
    assert strat.last_report.dropped == [1]
    assert "client 1 (2 replies claim this client id; all rejected)" in caplog.text
    open_strat = _strategy(round_clients=False)
    out, _ = open_strat.aggregate_train(1, [_multi(NODE[0], [0, 1]), _multi(NODE[1], [1, 2])])
    _assert_params(out, _reference([0, 2], [5, 5]))
    assert open_strat.last_report.dropped == [1]


def _bad_stack() -> dict[str, torch.Tensor]:
    stack = RowSparse.from_dense(torch.stack([_update(c)["w"] for c in (0, 1, 2)]))
    arrays = {**encode_row_stack("w", stack), "b": torch.zeros(3, 3)}
    arrays["w::clients"] = arrays["w::clients"] + 1  # client indices up to 3 for 3 clients
    return arrays


@pytest.mark.parametrize("kwargs,why", [
    ({"counts": [5, 5]}, "3 client-ids, 2 num-examples"),
    ({"losses": [0.0]}, "1 losses"),
    ({"arrays": {"w": torch.zeros(2, 2, 3), "b": torch.zeros(3, 3)}}, "w: shape (2, 2, 3)"),
    ({"arrays": {"w": torch.zeros(3, 2, 3), "b": torch.zeros(())}}, "b: shape ()"),
    ({"arrays": _bad_stack()}, "w::clients: client indices must lie in [0, 3)"),
    ({"arrays": {"w::row_ids": torch.zeros(1, dtype=torch.int64),
                 "w::rows": torch.zeros(1, 3), "b": torch.zeros(3, 3)}}, "missing"),
    ({"arrays": {"w": torch.zeros(3, 2, 3), "b": torch.zeros(3, 3),
                 **encode_row_stack("x", RowSparse.from_dense(torch.ones(3, 2, 1)))}},
     "x: unexpected row-sparse table"),
    ({"client-id": 0}, "both client-id and client-ids"),
])
def test_malformed_partition_reply_is_dropped_whole(flower_identity, caplog, kwargs, why):
    strat = _partition_strategy()
    bad = _multi(200, [0, 1, 2], **kwargs)
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        out, _ = strat.aggregate_train(1, [bad, _multi(201, [3])])
    _assert_params(out, _reference([3], [5]))
    assert strat.last_report.dropped == []  # nobody is charged for a reply that does not parse
    assert "dropped a malformed reply from node 200" in caplog.text and why in caplog.text


@pytest.mark.parametrize("ids", [5, [], "0,1"])
def test_partition_reply_whose_client_list_is_not_a_list_is_malformed(flower_identity, caplog,
                                                                      ids):
    strat = _partition_strategy()
    bad = _reply(200, {"client-ids": ids, "num-examples": [5], "losses": [0.0]},
                 update={n: torch.stack([_update(0)[n]]) for n in SHAPES},
                 plain=isinstance(ids, str))
    with caplog.at_level(logging.WARNING, logger="fedrec"):
        out, _ = strat.aggregate_train(1, [bad, _multi(201, [3])])
    _assert_params(out, _reference([3], [5]))
    assert "dropped a malformed reply from node 200" in caplog.text
