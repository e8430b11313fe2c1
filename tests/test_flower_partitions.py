"""Flower partition nodes (``federation.flower_nodes``): each supernode holds a contiguous slice
of the participants, gets one message per round listing its round clients and answers with
their updates stacked.

* The row-sparse stack wire format (:func:`fedrec.rowsparse.encode_row_stack` /
  :func:`~fedrec.rowsparse.decode_row_stack`): round trip and refusal of bad input.
* :func:`fedrec.engine.flower.node_bounds`: the slices, and the clamp to one node per
  participant.
* Without Ray: :class:`FlowerTrainer` over :class:`AppGrid`, which answers every message with
  the real ``ClientApp`` (its query, train and evaluate handlers), against the local engine.
* On a real Ray head: whole runs (``run_experiment``, ``engine: flower``,
  ``flower_nodes: 2``) give the local engine's global parameters within 1e-5, for FedSGD with
  Krum, an attack and row-sparse item updates, and for FedAvg with the example-weighted mean.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.supercore.task_identity import TaskIdentity
from test_federation_flower import ray_head  # noqa: F401  (module-scoped Ray head fixture)

import fedrec.engine.flower as flower_engine
from fedrec.config import load_config
from fedrec.engine.context import RunContext
from fedrec.engine.federated import FederatedTrainer
from fedrec.engine.federation import Federation, build_aggregator
from fedrec.engine.flower import (
    FlowerTrainer,
    make_client_app,
    node_bounds,
    portable_config,
)
from fedrec.errors import ConfigError
from fedrec.rowsparse import (
    ROW_CLIENTS,
    ROW_IDS,
    ROW_VALUES,
    RowSparse,
    decode_row_stack,
    encode_row_stack,
)
from fedrec.runner import run_experiment

torch.set_num_threads(1)

#: A tiny experiment: 30 users (+3 attackers with the attack), rounds of 12 clients.
TINY: dict[str, Any] = {
    "mode": "federated",
    "data": {"synthetic": {"n_users": 30, "n_items": 40, "max_len": 20, "mean_len": 8}},
    "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "dropout": 0.0, "attn_dropout": 0.0,
              "max_len": 10},
    "federation": {"rounds": 2, "clients_per_round": 12, "server_lr": 0.2, "local_epochs": 2,
                   "local_lr": 0.3, "flower_nodes": 2},
    "eval": {"n_negatives": 10, "ks": [10]},
    "attack": {"name": "none"},
}

#: FedSGD + a robust rule + an attack + row-sparse item updates; FedAvg + the mean.
SETTINGS = {
    "fedsgd-krum-attack-sparse": {
        "federation": {"protocol": "fedsgd", "item_updates": "sparse", "client_eval": True,
                       "client_eval_fraction": 0.5},
        "defense": {"name": "krum", "params": {"f": 2}},
        "attack": {"name": "random", "fraction": 0.1},
    },
    # the example-weighted mean: a count sent with another client's row would show
    "fedavg-mean": {"federation": {"protocol": "fedavg"}, "defense": {"name": "mean"}},
}


def _raw(setting: str, **federation: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(TINY))
    for section, values in SETTINGS[setting].items():
        raw.setdefault(section, {}).update(values)
    raw["federation"].update(federation)
    return raw


@pytest.fixture
def flower_identity(monkeypatch):
    """Let ``Message(...)`` be built outside a Flower run (undone after the test)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)


# ----------------------------------------------------------------------------- wire format


def _stack() -> RowSparse:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(3, 6, 2, generator=gen) * (torch.rand(3, 6, 1, generator=gen) > 0.5)
    dense[1] = 0.0  # a client that touched no row
    return RowSparse.from_dense(dense)


def test_row_stack_round_trip_through_an_array_record():
    stack = _stack()
    arrays = encode_row_stack("t", stack)
    assert set(arrays) == {"t" + ROW_CLIENTS, "t" + ROW_IDS, "t" + ROW_VALUES}
    back = dict(ArrayRecord(arrays).to_torch_state_dict())
    got = decode_row_stack(back, "t", (6, 2), 3)
    assert got.n == 3 and torch.equal(got.to_dense(), stack.to_dense())
    # non-finite values are left to the per-client validation (one bad client, not the reply)
    bad = {**arrays, "t" + ROW_VALUES: arrays["t" + ROW_VALUES].clone()}
    bad["t" + ROW_VALUES][0, 0] = float("nan")
    assert not bool(decode_row_stack(bad, "t", (6, 2), 3).finite().all())


def _edit(key: str, value: torch.Tensor | None) -> dict[str, torch.Tensor]:
    arrays = encode_row_stack("t", _stack())
    if value is None:
        del arrays["t" + key]
    else:
        arrays["t" + key] = value
    return arrays


@pytest.mark.parametrize("arrays,n,why", [
    (_edit(ROW_CLIENTS, None), 3, "missing"),
    (_edit(ROW_CLIENTS, _stack().clients.float()), 3, "int64"),
    (_edit(ROW_IDS, _stack().ids[None]), 3, "1-D int64"),
    (_edit(ROW_VALUES, _stack().rows.long()), 3, "floating"),
    (_edit(ROW_CLIENTS, _stack().clients[:-1]), 3, "entries"),
    (_edit(ROW_VALUES, _stack().rows[:, :1]), 3, "shape"),
    (_edit(ROW_CLIENTS, _stack().clients.flip(0)), 3, "non-decreasing"),
    (_edit(ROW_CLIENTS, _stack().clients + 1), 3, "client indices must lie in"),
    (encode_row_stack("t", _stack()), 2, "client indices must lie in"),  # more clients than sent
    (_edit(ROW_IDS, _stack().ids + 6), 3, "row ids must lie in"),
    (_edit(ROW_IDS, torch.zeros_like(_stack().ids)), 3, "strictly increasing"),
])
def test_row_stack_decode_refuses_bad_input(arrays, n, why):
    with pytest.raises(ValueError, match=why):
        decode_row_stack(arrays, "t", (6, 2), n)


# ----------------------------------------------------------------------------- node layout


def test_node_bounds_slices_the_participants_and_clamps():
    assert node_bounds(4, None) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for n, k in [(33, 2), (33, 5), (7, 7), (1000, 3)]:
        bounds = node_bounds(n, k)
        assert len(bounds) == k and bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a < b for a, b in bounds)
        assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:], strict=False))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    assert node_bounds(5, 100) == node_bounds(5, None)  # at most one node per participant


@pytest.mark.parametrize("value", [0, -1, 1.5, "two"])
def test_flower_nodes_must_be_a_positive_integer(value):
    raw = _raw("fedavg-mean", flower_nodes=value)
    with pytest.raises(ConfigError, match="flower_nodes") as err:
        load_config(base=raw)
    assert "\n" not in str(err.value)
    assert load_config(base=_raw("fedavg-mean", flower_nodes=None)).federation.flower_nodes is None


# ----------------------------------------------------------------------------- without Ray


class AppGrid:
    """A grid whose nodes (ids ``1000 + partition``) answer with the real ``ClientApp``."""

    def __init__(self, cfg_json: str, n_nodes: int) -> None:
        self.app = make_client_app(cfg_json)
        self.n_nodes = n_nodes
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [1000 + k for k in range(self.n_nodes)]

    def send_and_receive(self, messages, timeout: float | None = None) -> list[Message]:
        msgs = list(messages)
        self.sent.extend(msgs)
        out = []
        for msg in msgs:
            pid = msg.metadata.dst_node_id - 1000
            context = Context(run_id=1, node_id=msg.metadata.dst_node_id,
                              node_config={"partition-id": pid, "num-partitions": self.n_nodes},
                              state=RecordDict(), run_config={})
            out.append(self.app(msg, context))
        return out


def _trainers(raw: dict[str, Any]) -> tuple[FederatedTrainer, FlowerTrainer, AppGrid]:
    cfg = load_config(base=raw)
    fed_l = Federation.build(RunContext.build(cfg))
    local = FederatedTrainer(fed_l, build_aggregator(cfg, tuple(fed_l.ctx.model.item_param_names),
                                                     fed_l))
    fed_f = Federation.build(RunContext.build(cfg, device="cpu"))
    flower = FlowerTrainer(fed_f, build_aggregator(cfg, tuple(fed_f.ctx.model.item_param_names),
                                                   fed_f))
    n_nodes = len(node_bounds(len(fed_f.threat.participants()), cfg.federation.flower_nodes))
    grid = AppGrid(portable_config(cfg), n_nodes)
    flower.connect(grid)
    return local, flower, grid


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_partition_rounds_equal_the_local_engine(flower_identity, setting):
    local, flower, grid = _trainers(_raw(setting))
    parts = flower.fed.threat.participants()
    assert sorted(set(flower.node_of.values())) == [1000, 1001]
    assert [c for c in parts if flower.node_of[int(c)] == 1000] == list(parts[:len(parts) // 2])
    for step in range(local.n_steps):
        m_l, m_f = local.train_step(step), flower.train_step(step)
        assert m_f["clients"] == m_l["clients"] == 12 and m_f["dropped"] == 0
        # the defense's verdicts per client id (Krum keeps one row: a row sent under another
        # client's id would move the detection metrics)
        verdicts = {k: v for k, v in m_l.items() if k.startswith("defense/")}
        assert {k: m_f[k] for k in verdicts} == pytest.approx(verdicts, nan_ok=True)
        train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
        assert len(train) <= 2  # one message per node holding round clients
        ids = sorted(c for m in train for c in m.content["config"]["client-ids"])
        assert ids == flower.fed.schedule.clients(step).tolist()
        grid.sent.clear()
    assert _gap(local.params, flower.params) <= 1e-5
    assert _gap(local.params, {n: p.detach() for n, p in
                               local.fed.ctx.model.named_parameters()}) > 1e-3  # it trained
    if flower.ctx.cfg.federation.client_eval:
        mine, ref = flower.client_side_eval(), local.client_side_eval()
        assert mine.keys() == ref.keys()
        for k, v in ref.items():
            assert mine[k] == pytest.approx(v, abs=1e-6)
        evals = [m for m in grid.sent if m.metadata.message_type == MessageType.EVALUATE]
        assert len(evals) == 2


def test_partition_rounds_with_attackers_on_their_node_equal_the_local_engine(flower_identity):
    """Node 1 holds the three attackers (added after the users): its reply mixes benign and
    crafted updates, merged in client order."""
    local, flower, _ = _trainers(_raw("fedsgd-krum-attack-sparse", flower_nodes=3))
    mal = flower.fed.threat.malicious_ids
    assert len(mal) == 3 and {flower.node_of[int(c)] for c in mal} == {1002}
    for step in range(local.n_steps):
        m_l, m_f = local.train_step(step), flower.train_step(step)
        verdicts = {k: v for k, v in m_l.items() if k.startswith("defense/")}
        assert {k: m_f[k] for k in verdicts} == pytest.approx(verdicts, nan_ok=True)
    assert m_l["defense/malicious_in_round"] > 0
    assert _gap(local.params, flower.params) <= 1e-5


def test_node_refuses_clients_it_does_not_hold(flower_identity):
    _, flower, grid = _trainers(_raw("fedavg-mean"))
    theirs = [c for c, n in flower.node_of.items() if n == 1001][:2]
    mine = [c for c, n in flower.node_of.items() if n == 1000][:1]
    arrays = ArrayRecord({k: v.contiguous() for k, v in flower.params.items()})
    for ids, why in [(mine + theirs, f"does not hold clients {theirs}"),
                     ([], "lists no client-ids"), (mine + mine, "repeats an id")]:
        config = ConfigRecord({"fedrec-round": 0, "client-ids": ids})
        msg = Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1000,
                      message_type=MessageType.TRAIN)
        reply = grid.send_and_receive([msg])[0]
        assert reply.has_error() and why in reply.error.reason
    # a round whose message to node 1000 lists a client of node 1001: node 1000 refuses it
    # (an error reply, dropped by the strategy) and the round goes on with node 1001's clients
    round_ids = flower.fed.schedule.clients(0)
    moved = next(int(c) for c in round_ids if flower.node_of[int(c)] == 1001)
    flower.node_of[moved] = 1000
    metrics = flower.train_step(0)
    kept = [int(c) for c in round_ids if flower.node_of[int(c)] == 1001]
    assert flower.strategy.last_report.client_ids.tolist() == kept
    assert metrics["dropped"] == 0 and np.isfinite(metrics["loss"])


def test_reply_lists_the_clients_in_the_order_sent(flower_identity):
    _, flower, grid = _trainers(_raw("fedsgd-krum-attack-sparse"))
    ids = [c for c, n in flower.node_of.items() if n == 1001][-4:]  # two users, two attackers
    arrays = ArrayRecord({k: v.contiguous() for k, v in flower.params.items()})
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord(
        {"fedrec-round": 0, "client-ids": ids})}), dst_node_id=1001,
        message_type=MessageType.TRAIN)
    reply = grid.send_and_receive([msg])[0]
    metrics = reply.content["metrics"]
    assert metrics["client-ids"] == ids and len(metrics["num-examples"]) == 4
    assert len(metrics["losses"]) == 4
    item = flower.ctx.model.item_param_names[0]
    assert item + ROW_CLIENTS in reply.content["arrays"]
    assert isinstance(reply.content["metrics"], MetricRecord)


# ----------------------------------------------------------------------------- on Ray


def _final_params(tmp_path, name: str, raw: dict[str, Any]) -> tuple[dict, dict]:
    out = tmp_path / name
    summary = run_experiment(load_config(base=raw), out, progress=False)
    params = torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["params"]
    return summary, params


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_flower_partition_nodes_on_ray_match_local_engine(
        tmp_path, monkeypatch, ray_head, setting):  # noqa: F811
    raw_l = _raw(setting, engine="local")
    raw_f = _raw(setting, engine="flower", ray_address=ray_head)
    local, p_local = _final_params(tmp_path, "local", raw_l)
    found: list[dict[int, int]] = []
    real = flower_engine.discover_nodes

    def discover(grid, expected=0, timeout=600.0):
        found.append(real(grid, expected, timeout))
        return found[-1]

    monkeypatch.setattr(flower_engine, "discover_nodes", discover)
    flower, p_flower = _final_params(tmp_path, "flower", raw_f)
    assert len(found) == 1 and sorted(found[0]) == [0, 1]  # the simulation ran two supernodes
    assert _gap(p_local, p_flower) <= 1e-5
    for k, v in local["test"].items():  # client-side metrics too, where asked
        assert flower["test"][k] == pytest.approx(v, abs=1e-6)
    assert any(k.startswith("client/") for k in flower["test"]) == (
        raw_f["federation"].get("client_eval", False))
