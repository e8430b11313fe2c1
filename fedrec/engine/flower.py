"""Federated training on the Flower simulation engine (Ray), on the same code path.

* :func:`make_client_app` builds a Flower ``ClientApp`` (Message API) whose ``train`` handler
  (:func:`client_train`) calls the single-client update function
  (:func:`clients.update.client_update`) or, for a malicious partition, the attack — the same
  functions the local engine batches. Every client computation is seeded from
  ``(seed, round, client id)`` (benign: :func:`clients.update.client_torch_rng`; attacks:
  :meth:`attacks.base.Attack.craft`), never from the Ray worker's own torch stream, so a run
  repeats exactly whichever worker computes which client. Without dropout it equals the local
  engine; with dropout its masks differ from the local engine's batched draws. The app
  travels to Ray actors as its experiment (:class:`FedRecClientApp`), and each process
  builds it, and the experiment's data and model, once.
* :func:`make_server_app` builds a ``ServerApp`` whose ``main`` drives fedrec's step loop
  (checkpoints, resume, evaluation) with :class:`FlowerTrainer`: each step sends the round's
  messages through :class:`strategies.fedrec_strategy.FedRecStrategy` and the ``Grid`` and
  takes the new global parameters from the ``ArrayRecord`` the strategy returns.
* :func:`run_flower` runs both with ``flwr.simulation.run_simulation`` on a fresh local Ray
  instance (``federation.ray_address: local``) or an existing cluster (``auto`` or
  ``host:port``), with a message pump that asks only the nodes holding a message
  (:func:`queue_pending_messages`; Flower's asks every node every 0.1 s). Under
  ``flwr run`` the module-level ``server_app``/``client_app`` read the experiment from the
  run config (``config`` = YAML path, ``overrides`` = ``"a.b=1 c=2"``, ``out-dir``).

Which node holds which clients (:func:`node_bounds`): by default (``federation.flower_nodes``
unset) partition ``p`` is one client, ``participants[p]`` (benign users, then added
attackers), and a round sends one message per client. With ``federation.flower_nodes: N``
the simulation runs N supernodes (at most one per participant) and node ``k`` holds the
``k``-th of N contiguous slices of the participants
(:func:`fedrec.engine.distributed.shard_bounds`). A round then sends **one** message to each
node holding some of its clients, listing them (config ``client-ids``); the node refuses ids
outside its slice with an error reply, computes its clients as the local engine does
(:func:`partition_train`: the benign ones batched by :func:`clients.update.batched_updates`
under a torch seed from ``(seed, round, node)``, the attackers one by one) and replies with
their updates stacked (:func:`stacked_reply_arrays`) and the lists ``client-ids``,
``num-examples``, ``losses``; the strategy checks every client of the reply on its own. Such a
run repeats exactly, and without dropout equals the local engine up to float32 summation
order. Client-side evaluation sends one ``evaluate`` message per node listing its users.
The server learns which node holds which partition with one ``query`` message per node at
start-up.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from clients.update import Update, batched_updates, client_torch_rng, client_update, num_examples
from fedrec.config import ExperimentConfig, dump_config, load_config, validate_config
from fedrec.data.registry import data_root
from fedrec.device import device_scope, resolve_device
from fedrec.engine.context import RunContext
from fedrec.engine.distributed import shard_bounds, shard_torch_seed
from fedrec.engine.federated import Stacked, malicious_updates, place_clients
from fedrec.engine.federation import FederatedTrainerBase, Federation, build_aggregator
from fedrec.logs import quiet_third_party
from fedrec.rowsparse import RowSparse, encode_row_stack, encode_rows
from strategies.fedrec_strategy import CLIENT_IDS, FedRecStrategy
from strategies.server import ServerAggregator
from strategies.wire import array_record, record_tensors

log = logging.getLogger("fedrec")

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Tag of a partition node's torch stream (dropout), mixed with (seed, round, node index).
NODE_STREAM_TAG = 0xF10E
#: Clients per vmapped chunk of a partition node (as the local engine).
NODE_CHUNK_SIZE = 64


def node_bounds(n_participants: int, flower_nodes: int | None) -> list[tuple[int, int]]:
    """``[start, stop)`` of the participants each supernode holds: node ``k`` holds
    ``participants[start:stop]``.

    Parameters
    ----------
    n_participants : int
        Clients taking part (``fed.threat.participants()``).
    flower_nodes : int or None
        ``federation.flower_nodes``: None gives one node per participant; N gives
        ``min(N, n_participants)`` contiguous slices (sizes differing by at most one; more
        nodes than participants would leave some empty, so the count is clamped).

    Returns
    -------
    list of (int, int)
        One ``(start, stop)`` per node, in node order.
    """
    if flower_nodes is None:
        return [(p, p + 1) for p in range(n_participants)]
    return shard_bounds(n_participants, min(int(flower_nodes), n_participants))


def node_clients(fed: Federation, node: int) -> np.ndarray:
    """The participants supernode ``node`` (its ``partition-id``) holds.

    Raises
    ------
    ValueError
        When the experiment has no node ``node``.
    """
    parts = fed.threat.participants()
    bounds = node_bounds(len(parts), fed.ctx.cfg.federation.flower_nodes)
    if not 0 <= node < len(bounds):
        raise ValueError(f"node {node}: the experiment has {len(bounds)} nodes")
    start, stop = bounds[node]
    return parts[start:stop]


def portable_config(cfg: ExperimentConfig) -> str:
    """The config as JSON with data locations made absolute (Ray workers may run elsewhere)."""
    raw = cfg.model_dump(mode="json")
    data = raw["data"]
    if data.get("path"):
        data["path"] = str(Path(data["path"]).expanduser().resolve())
    root = data_root(data.get("root"))
    if root is not None:
        data["root"] = str(root.resolve())
    return json.dumps(raw, sort_keys=True)


_FEDERATIONS: dict[str, Federation] = {}


def federation_for(cfg_json: str) -> Federation:
    """Per-process cache of the data/model/threat model a ClientApp needs."""
    fed = _FEDERATIONS.get(cfg_json)
    if fed is None:
        quiet_third_party()
        cfg = validate_config(json.loads(cfg_json))
        torch.set_num_threads(max(1, int(cfg.federation.cpus_per_client)))
        fed = Federation.build(RunContext.build(cfg))
        _FEDERATIONS[cfg_json] = fed
    return fed


def config_from_run_config(run_config: dict[str, Any]) -> str:
    """Experiment JSON from a ``flwr run`` run config (``config`` path + ``overrides``)."""
    path = Path(str(run_config.get("config", "")))
    if not path.is_absolute():
        path = REPO_ROOT / path
    overrides = shlex.split(str(run_config.get("overrides", "")))
    cfg = load_config(path, overrides)
    if cfg.federation.engine != "flower":
        cfg.federation.engine = "flower"
    return portable_config(cfg)


# ----------------------------------------------------------------------------- client side


def client_train(fed: Federation, client_id: int, round_idx: int,
                 params: dict[str, torch.Tensor]) -> Update:
    """The update of client ``client_id`` in round ``round_idx`` (the ``train`` handler's work).

    A benign client runs :func:`clients.update.client_update` inside
    :func:`clients.update.client_torch_rng`; a malicious one runs the attack, whose
    :meth:`~attacks.base.Attack.craft` seeds torch itself. Either way the result depends only on
    the experiment, the round, the client and ``params``, not on the worker's history.

    Parameters
    ----------
    fed : Federation
        The experiment's data, model, threat model and attack.
    client_id : int
        The client (a participant id).
    round_idx : int
        Global round index (0-based).
    params : dict
        Global parameters sent by the server.

    Returns
    -------
    Update
        The client's gradient (FedSGD) or delta (FedAvg).
    """
    rc = fed.round_config(round_idx)
    model = fed.ctx.model
    if fed.threat.is_malicious(client_id):
        return fed.attack.craft(model, params, client_id, fed.threat, rc)
    with client_torch_rng(rc, client_id):
        return client_update(model, params, fed.client_sequence(client_id), client_id, rc)


def reply_arrays(fed: Federation, upd: Update) -> ArrayRecord:
    """The update as it travels back: its tensors, and with ``federation.item_updates: sparse``
    each item table as its touched rows (:func:`fedrec.rowsparse.encode_rows`)."""
    items = (set(fed.ctx.model.item_param_names)
             if fed.ctx.cfg.federation.item_updates == "sparse" else set())
    out: dict[str, torch.Tensor] = {}
    for k, v in upd.params.items():
        v = v.detach().cpu()
        out.update(encode_rows(k, v) if k in items else {k: v.contiguous()})
    return array_record(out)


def requested_clients(fed: Federation, node: int, config: Mapping[str, Any]) -> np.ndarray:
    """The client ids a message to partition node ``node`` lists (config ``client-ids``).

    Raises
    ------
    ValueError
        One line, when the list is missing, empty, not integers, repeats an id or names a
        client this node does not hold (the node then answers with an error reply).
    """
    raw = config.get(CLIENT_IDS)
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"node {node}: the message lists no {CLIENT_IDS}")
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in raw):
        raise ValueError(f"node {node}: {CLIENT_IDS} must be integers")
    ids = np.asarray(raw, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"node {node}: {CLIENT_IDS} repeats an id")
    foreign = ids[~np.isin(ids, node_clients(fed, node))]
    if len(foreign):
        raise ValueError(f"node {node} does not hold clients {foreign[:5].tolist()}")
    return ids


def partition_train(fed: Federation, node: int, client_ids: np.ndarray, round_idx: int,
                    params: dict[str, torch.Tensor]
                    ) -> tuple[Stacked, list[int], list[float]]:
    """The updates of a partition node's clients in round ``round_idx``, stacked.

    As the local engine's round (:meth:`fedrec.engine.federated.FederatedTrainer.train_step`,
    per-client path): the benign clients batched by :func:`clients.update.batched_updates`
    (chunks of :data:`NODE_CHUNK_SIZE`), with torch (dropout) seeded from
    ``(seed, round, node)`` (:func:`fedrec.engine.distributed.shard_torch_seed`, tag
    :data:`NODE_STREAM_TAG`; the process's own stream is left as it was), the attackers one by
    one (:func:`fedrec.engine.federated.malicious_updates`), merged in ``client_ids`` order.

    Parameters
    ----------
    fed : Federation
        The experiment.
    node : int
        The node's index (its ``partition-id``).
    client_ids : numpy.ndarray
        The clients to compute (checked by :func:`requested_clients`).
    round_idx : int
        Global round index (0-based).
    params : dict
        Global parameters sent by the server.

    Returns
    -------
    stacked : dict
        ``name -> Tensor[n, ...]`` in ``client_ids`` order (item tables a
        :class:`~fedrec.rowsparse.RowSparse` with ``federation.item_updates: sparse``).
    counts : list of int
        Each client's example count.
    losses : list of float
        Each client's loss (attackers: what the attack reports, else 0.0).
    """
    rc = fed.round_config(round_idx)
    ids = np.asarray(client_ids, dtype=np.int64)
    sparse = fed.ctx.cfg.federation.item_updates == "sparse"
    is_mal = np.isin(ids, fed.threat.malicious_ids)
    counts = np.zeros(len(ids), dtype=np.int64)
    losses = np.zeros(len(ids), dtype=np.float64)
    parts: list[tuple[Stacked, np.ndarray]] = []
    benign = ids[~is_mal]
    if len(benign):
        seqs = [fed.client_sequence(int(c)) for c in benign]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(shard_torch_seed(rc, node, NODE_STREAM_TAG))
            stacked, loss = batched_updates(fed.ctx.model, params, seqs, benign, rc,
                                            chunk_size=NODE_CHUNK_SIZE, sparse_items=sparse)
        pos = np.flatnonzero(~is_mal)
        parts.append((stacked, pos))
        counts[pos] = [num_examples(q) for q in seqs]
        losses[pos] = loss.detach().cpu().double().numpy()
    mal_stacked, mal_counts, mal_losses = malicious_updates(fed, params, ids[is_mal], rc, sparse)
    if mal_stacked is not None:
        pos = np.flatnonzero(is_mal)
        parts.append((mal_stacked, pos))
        counts[pos], losses[pos] = mal_counts, mal_losses
    merged = parts[0][0] if len(parts) == 1 else place_clients(parts, len(ids))
    return merged, [int(c) for c in counts], [float(x) for x in losses]


def stacked_reply_arrays(stacked: Mapping[str, torch.Tensor | RowSparse]) -> ArrayRecord:
    """Several clients' stacked updates as they travel back: dense tensors as ``<name>``
    ``[n, *shape]``, row-sparse tables as ``<name>::clients`` / ``::row_ids`` / ``::rows``
    (:func:`fedrec.rowsparse.encode_row_stack`)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in stacked.items():
        if isinstance(v, RowSparse):
            out.update(encode_row_stack(k, v))
        else:
            out[k] = v.detach().cpu().contiguous()
    return array_record(out)


def partition_train_reply(fed: Federation, node: int, content: RecordDict) -> RecordDict:
    """A partition node's answer to a train message: its listed clients' stacked updates
    (:func:`partition_train`) and the metrics ``client-ids``, ``num-examples``, ``losses``.

    Raises
    ------
    ValueError
        When the message lists clients the node refuses (:func:`requested_clients`).
    """
    ids = requested_clients(fed, node, content["config"])
    params = record_tensors(content["arrays"])
    with device_scope(fed.ctx.device) as dev:  # messages travel on the CPU
        params = {k: v.to(dev) for k, v in params.items()}
        stacked, counts, losses = partition_train(
            fed, node, ids, int(content["config"]["fedrec-round"]), params)
        arrays = stacked_reply_arrays(stacked)
    metrics = MetricRecord({CLIENT_IDS: [int(c) for c in ids], "num-examples": counts,
                            "losses": losses})
    return RecordDict({"arrays": arrays, "metrics": metrics})


def partition_evaluate_reply(fed: Federation, node: int, content: RecordDict) -> RecordDict:
    """A partition node's answer to an evaluate message: the mean client-side metrics of its
    listed users (:func:`clients.evaluate.client_evaluate`, all at once), ``num-examples``
    (how many) and ``client-ids``.

    Raises
    ------
    ValueError
        When the message lists clients the node refuses (:func:`requested_clients`).
    """
    from clients.evaluate import client_evaluate

    ids = requested_clients(fed, node, content["config"])
    data = [fed.client_eval_data(int(c)) for c in ids]
    params = record_tensors(content["arrays"])
    with device_scope(fed.ctx.device) as dev:
        params = {k: v.to(dev) for k, v in params.items()}
        res = client_evaluate(fed.ctx.model, params, [d[0] for d in data],
                              np.array([d[1] for d in data]), fed.ctx.cfg.eval.ks)
    metrics = MetricRecord({**{k: float(v) for k, v in res.items()}, "num-examples": len(ids),
                            CLIENT_IDS: [int(c) for c in ids]})
    return RecordDict({"metrics": metrics})


def refusal(msg: Message, why: str) -> Message:
    """An error reply to ``msg`` saying why the node refuses it."""
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=why), reply_to=msg)


class FedRecClientApp(ClientApp):
    """A ``ClientApp`` that pickles as its experiment and is rebuilt once per process.

    Flower's simulation sends the ClientApp to a Ray actor with every message; pickled as it
    is, its handlers (closures) go by value, and cloudpickle walks ``sys.modules`` for each of
    them (~0.5 ms of the server's CPU per message with the modules of a run loaded). Pickled
    as ``client_app_for(cfg_json)``, it travels as the experiment's JSON and the actor reuses
    the app it built first.
    """

    def __init__(self, cfg_json: str | None) -> None:
        super().__init__()
        self.cfg_json = cfg_json

    def __reduce__(self) -> tuple[Any, tuple[str | None]]:
        return client_app_for, (self.cfg_json,)


_CLIENT_APPS: dict[str | None, FedRecClientApp] = {}


def client_app_for(cfg_json: str | None) -> FedRecClientApp:
    """This process's ``ClientApp`` for experiment ``cfg_json`` (built on first use)."""
    app = _CLIENT_APPS.get(cfg_json)
    if app is None:
        app = _CLIENT_APPS[cfg_json] = make_client_app(cfg_json)
    return app


def make_client_app(cfg_json: str | None = None) -> FedRecClientApp:
    """A ``ClientApp`` for experiment ``cfg_json`` (None: read it from the run config)."""
    app = FedRecClientApp(cfg_json)

    def experiment(context: Context) -> str:
        if cfg_json is not None:
            return cfg_json
        return config_from_run_config(dict(context.run_config))

    @app.query()
    def whoami(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fed = federation_for(experiment(context))
        pid = int(context.node_config["partition-id"])
        if fed.ctx.cfg.federation.flower_nodes is not None:
            try:
                return Message(partition_train_reply(fed, pid, msg.content), reply_to=msg)
            except ValueError as exc:
                return refusal(msg, str(exc))
        cid = int(fed.threat.participants()[pid])
        params = record_tensors(msg.content["arrays"])
        with device_scope(fed.ctx.device) as dev:  # messages travel on the CPU
            params = {k: v.to(dev) for k, v in params.items()}
            upd = client_train(fed, cid, int(msg.content["config"]["fedrec-round"]), params)
        metrics = MetricRecord({"num-examples": int(upd.num_examples), "client-id": cid,
                                "loss": float(upd.metrics.get("loss", 0.0))})
        return Message(RecordDict({"arrays": reply_arrays(fed, upd), "metrics": metrics}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from clients.evaluate import client_evaluate

        fed = federation_for(experiment(context))
        pid = int(context.node_config["partition-id"])
        if fed.ctx.cfg.federation.flower_nodes is not None:
            try:
                return Message(partition_evaluate_reply(fed, pid, msg.content), reply_to=msg)
            except ValueError as exc:
                return refusal(msg, str(exc))
        cid = int(fed.threat.participants()[pid])
        history, item = fed.client_eval_data(cid)
        params = record_tensors(msg.content["arrays"])
        with device_scope(fed.ctx.device) as dev:
            params = {k: v.to(dev) for k, v in params.items()}
            res = client_evaluate(fed.ctx.model, params, [history], np.array([item]),
                                  fed.ctx.cfg.eval.ks)
        metrics = MetricRecord({**res, "num-examples": 1, "client-id": cid})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


# ----------------------------------------------------------------------------- server side


def discover_nodes(grid: Grid, expected: int = 0, timeout: float = 600.0) -> dict[int, int]:
    """``partition-id -> node id`` for every node, asked with one query message each.

    The simulation engine registers its nodes while the ServerApp starts, so with thousands of
    nodes the grid may list only some of them at first: wait (up to ``timeout`` seconds) until
    it lists ``expected`` nodes before asking.
    """
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict({"config": ConfigRecord({"op": "whoami"})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in nodes]
    out: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed the start-up query: "
                               f"{reply.error.reason}")
        pid = int(next(iter(reply.content.metric_records.values()))["partition-id"])
        out[pid] = reply.metadata.src_node_id
    return out


class FlowerTrainer(FederatedTrainerBase):
    """Round loop over a Flower ``Grid``; server math shared with the local engine."""

    def __init__(self, fed: Federation, aggregator: ServerAggregator, grid: Grid | None = None,
                 timeout: float = 3600.0) -> None:
        super().__init__(fed, aggregator)
        self.grid = grid
        self.timeout = timeout
        #: client id -> node id (several clients per node with ``federation.flower_nodes``)
        self.node_of: dict[int, int] = {}
        #: whether nodes hold partitions of several clients (``federation.flower_nodes``)
        self.partitioned = fed.ctx.cfg.federation.flower_nodes is not None
        shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        sched = fed.schedule
        self.strategy = FedRecStrategy(
            aggregator, shapes,
            round_clients=lambda r: {int(c): self.node_of[int(c)] for c in sched.clients(r - 1)},
            epoch_of=lambda r: sched.epoch_of(r - 1), partition_nodes=self.partitioned,
            min_available_nodes=1, min_train_nodes=1,
        )

    def connect(self, grid: Grid) -> None:
        """Attach to the grid and map clients to node ids (:func:`node_bounds`)."""
        self.grid = grid
        parts = self.fed.threat.participants()
        bounds = node_bounds(len(parts), self.ctx.cfg.federation.flower_nodes)
        by_pid = discover_nodes(grid, expected=len(bounds))
        missing = [p for p in range(len(bounds)) if p not in by_pid]
        if missing:
            raise RuntimeError(f"{len(missing)} partitions have no node (expected {len(bounds)})")
        self.node_of = {int(c): by_pid[k] for k, (a, b) in enumerate(bounds)
                        for c in parts[a:b]}

    def train_step(self, step: int) -> dict[str, float]:
        """Send round ``step`` to its clients through Flower and aggregate the replies."""
        assert self.grid is not None, "FlowerTrainer.connect(grid) first"
        arrays = array_record(self.params)
        config = ConfigRecord({"fedrec-round": step})
        msgs = self.strategy.configure_train(step + 1, arrays, config, self.grid)
        replies = self.grid.send_and_receive(msgs, timeout=self.timeout)
        new, metrics = self.strategy.aggregate_train(step + 1, replies)
        if new is not None:
            self.params = record_tensors(new)
        loss = float(metrics["loss"]) if metrics is not None else float("nan")
        n_clients = len(self.fed.schedule.clients(step)) if self.partitioned else len(msgs)
        return self.round_metrics(step, self.strategy.last_report, loss, n_clients)

    def client_side_eval(self) -> dict[str, float]:
        """Ask the clients (``@app.evaluate``) and average their reports (over users)."""
        assert self.grid is not None
        if self.partitioned:
            return self._partition_eval()
        arrays = array_record(self.params)
        record = RecordDict({"arrays": arrays, "config": ConfigRecord({})})
        nodes = [self.node_of[int(u)] for u in self.fed.client_eval_users()]
        msgs = [Message(record, dst_node_id=n, message_type=MessageType.EVALUATE) for n in nodes]
        replies = [r for r in self.grid.send_and_receive(msgs, timeout=self.timeout)
                   if not r.has_error()]
        if not replies:
            return {}
        keys = [k for k in next(iter(replies[0].content.metric_records.values()))
                if k not in ("num-examples", "client-id")]
        rows = [next(iter(r.content.metric_records.values())) for r in replies]
        return {k: float(np.mean([row[k] for row in rows])) for k in keys}

    def _partition_eval(self) -> dict[str, float]:
        """Client-side evaluation with partition nodes: one message per node listing its users
        to evaluate; each reply's means weighted by its ``num-examples`` (users), so the
        result is the mean over users. A reply that does not report exactly the users sent
        to its node is dropped with a log line."""
        assert self.grid is not None
        arrays = array_record(self.params)
        by_node: dict[int, list[int]] = {}
        for u in self.fed.client_eval_users():
            by_node.setdefault(self.node_of[int(u)], []).append(int(u))
        msgs = [Message(RecordDict({"arrays": arrays, "config": ConfigRecord({CLIENT_IDS: ids})}),
                        dst_node_id=node, message_type=MessageType.EVALUATE)
                for node, ids in by_node.items()]
        rows: list[Mapping[str, Any]] = []
        for reply in self.grid.send_and_receive(msgs, timeout=self.timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("client-side evaluation: node %s failed (%s)", node,
                            reply.error.reason)
                continue
            row = next(iter(reply.content.metric_records.values()), None)
            if (row is None or row.get(CLIENT_IDS) != by_node.get(node)
                    or row.get("num-examples") != len(by_node[node])):
                log.warning("client-side evaluation: dropped a malformed reply from node %s",
                            node)
                continue
            rows.append(row)
        if not rows:
            return {}
        keys = [k for k in rows[0] if k not in ("num-examples", CLIENT_IDS)]
        rows = [row for row in rows if set(row) == set(rows[0])]  # the same metrics from all
        weights = np.array([float(row["num-examples"]) for row in rows])
        return {k: float(np.average([float(row[k]) for row in rows], weights=weights))
                for k in keys}


def make_server_app(cfg_json: str | None = None, run_dir: str | None = None, resume: bool = False,
                    progress: bool = False, results: dict[str, Any] | None = None) -> ServerApp:
    """A ``ServerApp`` that runs the whole experiment (our step loop over the grid)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedrec.engine.finish import finish_run
        from fedrec.results import RunDir, open_run_dir

        quiet_third_party()
        exp = cfg_json if cfg_json is not None else config_from_run_config(dict(context.run_config))
        cfg = validate_config(json.loads(exp))
        if run_dir is not None:  # opened by fedrec.runner.run_experiment
            run, again = RunDir(run_dir), resume
        else:  # `flwr run`: the same rule as `fedrec run` (refuse a used out-dir, or resume)
            out = str(context.run_config.get("out-dir", "")) or str(Path(cfg.output_dir) / cfg.name)
            again = str(context.run_config.get("resume", "false")).lower() in ("1", "true", "yes")
            run, finished = open_run_dir(out, cfg.model_dump(mode="json"), dump_config(cfg),
                                         resume=again)
            if finished is not None:
                if results is not None:
                    results["summary"] = finished
                return
        # the server works on the CPU, where the messages arrive; the clients on cfg.device
        ctx = RunContext.build(cfg, device="cpu")
        fed = Federation.build(ctx)
        trainer = FlowerTrainer(fed, build_aggregator(cfg, tuple(ctx.model.item_param_names), fed))
        trainer.connect(grid)
        summary = finish_run(cfg, ctx, trainer, run, resume=again, progress=progress)
        if results is not None:
            results["summary"] = summary

    return app


def backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray backend settings: explicit address, quiet logs, CPUs per client."""
    fc = cfg.federation
    init_args: dict[str, Any] = {"address": fc.ray_address, "logging_level": "ERROR",
                                 "log_to_driver": False}
    # on a GPU each client actor takes the GPU share of its CPUs (Ray hides GPUs from actors
    # that ask for none), so as many actors run at once as the CPUs allow
    gpus = 0.0
    if resolve_device(cfg.device).type == "cuda":
        gpus = fc.cpus_per_client / max(1, os.cpu_count() or 1)
    return {"client_resources": {"num_cpus": fc.cpus_per_client, "num_gpus": gpus},
            "init_args": init_args}


def pending_nodes(state: Any, nodes: Mapping[int, int]) -> list[int] | None:
    """Nodes (among ``nodes``) holding an undelivered message in the simulation's LinkState,
    in the order their messages were stored; None when ``state`` is not flwr's in-memory
    LinkState (its ``message_ins_store`` and ``lock``)."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        dst = [m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""]
    return [n for n in dict.fromkeys(dst) if n in nodes]


def queue_pending_messages(state: Any, queue: Queue, nodes: Mapping[int, int],
                           f_stop: threading.Event, every: float = 0.1) -> None:
    """The simulation's message pump, asking only the nodes that have a message.

    Stands in for flwr 1.42's ``vce_api.add_messages_to_queue``, which every ``every``
    seconds calls ``state.get_message_ins(node, limit=1)`` for *every* node, each call
    scanning the whole message store: with one node per user (3,753 on steam) and a round's
    256 messages stored, a sweep is ~10^6 message checks and keeps a core of the server's
    process busy while the clients train. Here each sweep reads the store once
    (:func:`pending_nodes`) and calls ``get_message_ins`` (the same call, the same checks and
    delivery marks) only for the nodes it lists. A state of another kind gets the original
    sweep over all nodes.
    """
    while not f_stop.is_set():
        listed = pending_nodes(state, nodes)
        for node_id in (nodes if listed is None else listed):
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(every)


@contextmanager
def message_pump() -> Iterator[None]:
    """Run Flower's simulation with :func:`queue_pending_messages` as its message pump
    (restored on exit)."""
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    vce_api.add_messages_to_queue = queue_pending_messages
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = original


def run_flower(cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Run ``cfg`` on the Flower simulation engine; return the summary."""
    quiet_third_party()
    from flwr.simulation import run_simulation

    cfg_json = portable_config(cfg)
    n_parts = len(federation_for(cfg_json).threat.participants())
    n_nodes = len(node_bounds(n_parts, cfg.federation.flower_nodes))
    if cfg.federation.flower_nodes is not None and cfg.federation.flower_nodes > n_nodes:
        log.info("federation.flower_nodes=%d > %d participants: %d nodes of one client each",
                 cfg.federation.flower_nodes, n_parts, n_nodes)
    results: dict[str, Any] = {}
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR if not log.isEnabledFor(logging.INFO) else logging.WARNING)
    env_before = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore"
    try:
        with message_pump():
            run_simulation(server_app=make_server_app(cfg_json, str(run_dir), resume, progress,
                                                      results),
                           client_app=make_client_app(cfg_json), num_supernodes=n_nodes,
                           backend_config=backend_config(cfg))
    finally:
        flwr_logger.setLevel(level)
        if env_before is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = env_before
    if "summary" not in results:
        raise RuntimeError("the Flower run ended without a summary (see the log above)")
    return results["summary"]


# Entry points for `flwr run` ([tool.flwr.app.components] in pyproject.toml).
client_app = make_client_app()
server_app = make_server_app()
