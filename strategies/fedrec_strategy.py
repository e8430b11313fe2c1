"""``FedRecStrategy``: a Flower ``FedAvg`` whose aggregation is fedrec's server pipeline.

Subclasses :class:`flwr.serverapp.strategy.FedAvg` (Message API, flwr 1.42) and overrides

* ``configure_train``: sends the round's messages to the nodes chosen by fedrec's schedule
  (``round_clients``: client id -> node id, or ``node_selector``: node ids; otherwise FedAvg's
  own sampling) with the round config, and records which client each message went to. With
  ``partition_nodes`` (a node holds a partition of the users, ``federation.flower_nodes``)
  each node holding at least one of the round's clients gets **one** message whose config
  lists them (``client-ids``, increasing);
* ``aggregate_train``: drops, with a log line, error replies, malformed replies, replies whose
  identity does not hold up and malformed updates (wrong keys or shapes, non-finite values),
  stacks the rest into tensors ordered by client id (an item table sent as
  ``<name>::row_ids`` / ``<name>::rows`` into a :class:`fedrec.rowsparse.RowSparse`), and runs
  :class:`strategies.server.ServerAggregator` (defense + server optimizer). It returns the
  **new global parameters** (not the raw aggregate), so ``Strategy.start`` works unchanged.

A reply carries one ``ArrayRecord`` and one ``MetricRecord``, in one of two forms:

* **one client** (one node per participant): the update's arrays, and metrics
  ``num-examples`` and ``client-id``;
* **several clients** (a partition node): metrics ``client-ids``, ``num-examples`` and
  ``losses``, lists of one entry per client; the arrays hold the clients' updates stacked in
  that order, dense tensors as ``<name>`` of shape ``[n, *shape]`` and row-sparse item tables
  as ``<name>::clients`` / ``<name>::row_ids`` / ``<name>::rows``
  (:func:`fedrec.rowsparse.encode_row_stack`). Such a reply is **dropped whole**, with a log
  line, when it is malformed: the lists are not lists, are empty or differ in length, a dense
  array does not have one row per client, or a row-sparse stack does not decode
  (:func:`fedrec.rowsparse.decode_row_stack`: bounds, shapes, order). Otherwise it is split
  into one entry per client (:func:`reply_entries`), and each entry goes through exactly the
  checks of a one-client reply below, on its own: a bad entry is dropped without its
  node-mates.

Checks of each reply (or entry), in order:

* ``client-id`` must be a non-negative integer (not a bool or a float); when the server knows
  the round's clients (``round_clients``), it must be one of them and the reply must come from
  the node that client's message went to (for a partition node: the id must be one the
  server listed in that node's message). Otherwise the reply (entry) is dropped and not
  reported under any client (the server cannot tell whose it is), and it does not count as a
  claim of that id.
* A ``client-id`` claimed by more than one reply or entry in a round (two nodes, or twice in
  one node's list): **every** claim of that id is dropped and the id reported as dropped,
  since the server cannot tell which one is genuine (keeping the first would let whichever
  reply arrives first win).
* ``num-examples`` must be an int or float (not a bool), finite, in ``(0, MAX_NUM_EXAMPLES]``;
  the update must pass :func:`strategies.validation.check_update`. Otherwise the client is
  reported as dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrec.rowsparse import (
    ROW_CLIENTS,
    ROW_IDS,
    ROW_VALUES,
    RowSparse,
    decode_row_stack,
    decode_rows,
)
from strategies.server import RoundReport, ServerAggregator
from strategies.validation import check_update, log_rejections
from strategies.wire import array_record, record_tensors

log = logging.getLogger("fedrec")

NodeSelector = Callable[[int], list[int]]
RoundClients = Callable[[int], Mapping[int, int]]

#: Upper bound on a reply's ``num-examples`` (one user's sequence is far shorter; a larger
#: claim would only serve to dominate an example-weighted rule).
MAX_NUM_EXAMPLES = 10**9

#: Config and metric key of a partition node's client list (train and evaluate messages).
CLIENT_IDS = "client-ids"

_SPARSE_SUFFIXES = (ROW_CLIENTS, ROW_IDS, ROW_VALUES)


def reply_update(content: RecordDict) -> tuple[dict[str, Any], dict[str, Any]]:
    """The update arrays and metrics of a train reply.

    The arrays are read-only torch views of the reply's bytes
    (:func:`strategies.wire.record_tensors`, no copy): validation reads them and stacking
    copies them once.

    Raises
    ------
    ValueError
        When the reply does not hold exactly one ArrayRecord and one MetricRecord, or an array
        is not readable (not ``.npy`` bytes, or an array of Python objects).
    """
    arrays = list(content.array_records.values())
    metrics = list(content.metric_records.values())
    if len(arrays) != 1 or len(metrics) != 1:
        raise ValueError(f"expected 1 ArrayRecord and 1 MetricRecord, got {len(arrays)} and "
                         f"{len(metrics)}")
    return record_tensors(arrays[0], copy=False), dict(metrics[0])


def stack_replies(arrays: list[dict[str, torch.Tensor]], shapes: Mapping[str, tuple[int, ...]]
                  ) -> dict[str, torch.Tensor | RowSparse]:
    """Stack validated replies' arrays by parameter (float32), in the given client order.

    A table any reply sent row-sparse (``<name>::row_ids`` / ``<name>::rows``) is stacked as a
    :class:`~fedrec.rowsparse.RowSparse` (dense replies of it are converted); the others as
    ``Tensor[n, *shape]``.
    """
    out: dict[str, torch.Tensor | RowSparse] = {}
    for name, shape in shapes.items():
        if any(name + ROW_IDS in a for a in arrays):
            parts = [decode_rows(a, name, shape) if name + ROW_IDS in a
                     else RowSparse.from_dense(a[name][None]) for a in arrays]
            out[name] = RowSparse.concat(parts).to(torch.float32)
        else:
            out[name] = torch.stack([a[name].to(torch.float32) for a in arrays])
    return out


def _sparse_name(key: str) -> str | None:
    """The table name of a row-sparse message array (None for a dense one)."""
    for suffix in _SPARSE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def split_stacked(arrays: Mapping[str, torch.Tensor], n: int,
                  shapes: Mapping[str, tuple[int, ...]]) -> list[dict[str, torch.Tensor]]:
    """The per-client arrays of a reply carrying ``n`` clients' stacked updates.

    A dense array ``<name>`` of shape ``[n, *shape]`` gives each client its row (a view); a
    row-sparse stack (``<name>::clients`` / ``::row_ids`` / ``::rows``) gives each client the
    one-client pair ``<name>::row_ids`` / ``<name>::rows`` of its rows, so that
    :func:`strategies.validation.check_update` and :func:`stack_replies` read every client as
    if it had replied alone.

    Parameters
    ----------
    arrays : mapping
        The reply's arrays.
    n : int
        Clients the reply lists.
    shapes : mapping
        Expected update layout ``name -> shape`` (a row-sparse stack is decoded against it).

    Returns
    -------
    list of dict
        One ``name -> Tensor`` per client, in the reply's order.

    Raises
    ------
    ValueError
        When an array does not hold one row per client, or a row-sparse stack is malformed or
        names a table that is not in ``shapes``.
    """
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    sparse = sorted({name for k in arrays if (name := _sparse_name(k)) is not None})
    for name in sparse:
        if name not in shapes:
            raise ValueError(f"{name}: unexpected row-sparse table")
        stack = decode_row_stack(arrays, name, shapes[name], n)
        ends = torch.cumsum(stack.counts(), 0).tolist()
        start = 0
        for i, end in enumerate(ends):
            out[i][name + ROW_IDS] = stack.ids[start:end]
            out[i][name + ROW_VALUES] = stack.rows[start:end]
            start = end
    for key, value in arrays.items():
        if _sparse_name(key) is not None:
            continue
        if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[0] != n:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
            raise ValueError(f"{key}: shape {shape}, expected one row for each of {n} clients")
        for i in range(n):
            out[i][key] = value[i]
    return out


def reply_entries(content: RecordDict, shapes: Mapping[str, tuple[int, ...]]
                  ) -> list[tuple[Any, dict[str, torch.Tensor], dict[str, Any]]]:
    """A train reply as ``(claimed client id, arrays, metrics)`` entries, one per client.

    A one-client reply is one entry (its metrics as sent); a partition node's reply (metrics
    ``client-ids``, ``num-examples``, ``losses``: lists) is one entry per listed client, with
    metrics ``client-id``, ``num-examples`` and ``loss`` and its own arrays
    (:func:`split_stacked`). The claimed ids are not checked here.

    Raises
    ------
    ValueError, KeyError, TypeError
        When the reply is malformed (see the module docstring): it is then dropped whole.
    """
    arrays, metrics = reply_update(content)
    if CLIENT_IDS not in metrics:
        return [(metrics["client-id"], arrays, metrics)]
    if "client-id" in metrics:
        raise ValueError("the reply holds both client-id and client-ids")
    ids, counts, losses = metrics[CLIENT_IDS], metrics.get("num-examples"), metrics.get("losses")
    for key, value in ((CLIENT_IDS, ids), ("num-examples", counts), ("losses", losses)):
        if not isinstance(value, list):
            raise ValueError(f"{key} is not a list ({type(value).__name__})")
    if not ids:
        raise ValueError(f"{CLIENT_IDS} is empty")
    if len(counts) != len(ids) or len(losses) != len(ids):
        raise ValueError(f"{len(ids)} client-ids, {len(counts)} num-examples, "
                         f"{len(losses)} losses")
    per_client = split_stacked(arrays, len(ids), shapes)
    return [(cid, a, {"client-id": cid, "num-examples": k, "loss": loss})
            for cid, a, k, loss in zip(ids, per_client, counts, losses, strict=True)]


def _number(value: Any) -> float:
    """``value`` as a float when it is a real number (not a bool), else NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return float("nan")
    return float(value)


def client_id_problem(value: Any) -> str | None:
    """Why a reply's ``client-id`` is not a valid client id (None when it is one).

    A valid id is a non-negative integer (Python or numpy), not a bool and not a float.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return f"client-id {value!r} is not an integer"
    if int(value) < 0:
        return f"client-id {int(value)} is negative"
    return None


def num_examples_problem(value: Any) -> str | None:
    """Why a reply's ``num-examples`` is not acceptable (None when it is).

    Accepted: an int or float (not a bool), finite, with ``0 < value <= MAX_NUM_EXAMPLES``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"num-examples {value!r} is not a number"
    n = float(value)
    if not np.isfinite(n) or n <= 0 or n > MAX_NUM_EXAMPLES:
        return f"num-examples={value!r} outside (0, {MAX_NUM_EXAMPLES}]"
    return None


class FedRecStrategy(FedAvg):
    """Flower strategy running fedrec's defenses and server optimizer.

    Parameters
    ----------
    aggregator : ServerAggregator
        Validation, defense and server optimizer (shared with the local engine).
    shapes : dict
        Expected update layout ``name -> shape``.
    node_selector : callable, optional
        ``server_round -> node ids`` for the round (fedrec's deterministic schedule), when the
        server does not know which client a node holds (then client ids are only type-checked).
    epoch_of : callable, optional
        ``server_round -> epoch`` for the learning-rate schedule (default: 0).
    round_clients : callable, optional
        ``server_round -> {client id: node id}`` for the round; takes precedence over
        ``node_selector``. With it, a reply must claim one of the round's clients and come from
        that client's node.
    partition_nodes : bool
        Nodes hold several clients (``federation.flower_nodes``): each node holding some of
        the round's clients gets one message listing them (needs ``round_clients``).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, aggregator: ServerAggregator, shapes: dict[str, tuple[int, ...]],
                 node_selector: NodeSelector | None = None,
                 epoch_of: Callable[[int], int] | None = None,
                 round_clients: RoundClients | None = None, partition_nodes: bool = False,
                 **kwargs: Any) -> None:
        if partition_nodes and round_clients is None:
            raise ValueError("partition_nodes needs round_clients (which node holds which client)")
        kwargs.setdefault("fraction_evaluate", 0.0)
        flwr_level = logging.getLogger("flwr").level
        logging.getLogger("flwr").setLevel(logging.ERROR)  # FedAvg warns about fraction_evaluate=0
        try:
            super().__init__(**kwargs)
        finally:
            logging.getLogger("flwr").setLevel(flwr_level)
        self.aggregator = aggregator
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.node_selector = node_selector
        self.round_clients = round_clients
        self.partition_nodes = partition_nodes
        self.epoch_of = epoch_of or (lambda r: 0)
        self.current: dict[str, torch.Tensor] | None = None
        self.last_report: RoundReport | None = None
        #: ``(server_round, {client id: node id})`` of the last configured round.
        self.sent: tuple[int, dict[int, int]] | None = None

    def summary(self) -> None:
        """Log the strategy settings."""
        flwr_log(INFO, "\t├──> FedRecStrategy settings:")
        flwr_log(INFO, "\t│\t├── defense: %s", self.aggregator.defense)
        flwr_log(INFO, "\t│\t└── server optimizer: %s (lr %s)", self.aggregator.optimizer.kind,
                 self.aggregator.optimizer.lr)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Messages for the round's nodes (fedrec schedule when a selector is set)."""
        self.current = record_tensors(arrays)
        self.sent = None
        if self.round_clients is not None:
            clients = {int(c): int(n) for c, n in self.round_clients(server_round).items()}
            self.sent = (server_round, clients)
            if self.partition_nodes:
                config["server-round"] = server_round
                return self._partition_messages(arrays, config, clients)
            nodes = list(clients.values())
        elif self.node_selector is not None:
            nodes = list(self.node_selector(server_round))
        else:
            return super().configure_train(server_round, arrays, config, grid)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def _partition_messages(self, arrays: ArrayRecord, config: ConfigRecord,
                            clients: Mapping[int, int]) -> list[Message]:
        """One train message per node holding some of ``clients`` (client id -> node id),
        its config listing them (``client-ids``, increasing)."""
        by_node: dict[int, list[int]] = {}
        for cid in sorted(clients):
            by_node.setdefault(clients[cid], []).append(cid)
        return [Message(RecordDict({self.arrayrecord_key: arrays,
                                    self.configrecord_key: ConfigRecord({**config,
                                                                         CLIENT_IDS: ids})}),
                        dst_node_id=node, message_type=MessageType.TRAIN)
                for node, ids in by_node.items()]

    def expected_clients(self, server_round: int) -> dict[int, int] | None:
        """``{client id: node id}`` the round's messages went to (None: not known)."""
        if self.sent is not None and self.sent[0] == server_round:
            return self.sent[1]
        if self.round_clients is not None:
            return {int(c): int(n) for c, n in self.round_clients(server_round).items()}
        return None

    def _identified(self, server_round: int, valid: list[Message]
                    ) -> list[tuple[int, dict[str, torch.Tensor], dict[str, Any]]]:
        """Parse replies into per-client entries (:func:`reply_entries`) and keep those whose
        ``client-id`` holds up (each drop is logged)."""
        expected = self.expected_clients(server_round)
        out: list[tuple[int, dict[str, torch.Tensor], dict[str, Any]]] = []
        for msg in valid:
            node = msg.metadata.src_node_id
            try:
                entries = reply_entries(msg.content, self.shapes)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("round %d: dropped a malformed reply from node %s (%s)",
                            server_round - 1, node, exc)
                continue
            for raw_id, arrays, metrics in entries:
                why = client_id_problem(raw_id)
                if why is None and expected is not None:
                    cid = int(raw_id)
                    if cid not in expected:
                        why = f"client-id {cid} was not sent this round's message"
                    elif expected[cid] != node:
                        why = f"client-id {cid}'s message went to node {expected[cid]}"
                if why is not None:
                    log.warning("round %d: dropped a reply from node %s (%s)",
                                server_round - 1, node, why)
                    continue
                out.append((int(raw_id), arrays, metrics))
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, stack (by client id) and aggregate the replies; return new global params.

        See the module docstring for the checks. Returns ``(None, None)`` when no update is
        left (the caller keeps its parameters); :attr:`last_report` then lists the dropped ids.
        """
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        for msg in errors:
            log.warning("round %d: client reply failed (%s)", server_round - 1, msg.error.reason)
        identified = self._identified(server_round, valid)
        claims: dict[int, int] = {}
        for cid, _, _ in identified:
            claims[cid] = claims.get(cid, 0) + 1
        updates: list[tuple[int, dict[str, torch.Tensor], float, dict[str, Any]]] = []
        bad_ids: list[int] = []
        reasons: list[str] = []
        for cid, n in sorted(claims.items()):
            if n > 1:
                bad_ids.append(cid)
                reasons.append(f"{n} replies claim this client id; all rejected")
        for cid, arrays, metrics in identified:
            if claims[cid] > 1:
                continue
            why = check_update(arrays, self.shapes)
            if why is None:
                why = num_examples_problem(metrics.get("num-examples"))
            if why is not None:
                bad_ids.append(cid)
                reasons.append(why)
                continue
            updates.append((cid, arrays, float(metrics["num-examples"]), metrics))
        if bad_ids:
            log_rejections(server_round - 1, bad_ids, reasons)
        if not updates or self.current is None:
            self.last_report = RoundReport(np.asarray(bad_ids, dtype=np.int64),
                                           np.zeros(len(bad_ids), dtype=bool), bad_ids)
            return None, None
        updates.sort(key=lambda u: u[0])
        ids = [u[0] for u in updates]
        stacked = stack_replies([u[1] for u in updates], self.shapes)
        weights = torch.tensor([u[2] for u in updates], dtype=torch.float64)
        new, report = self.aggregator.round(self.current, stacked, weights, ids,
                                            server_round - 1, self.epoch_of(server_round))
        if bad_ids:
            report = RoundReport(np.concatenate([report.client_ids, np.asarray(bad_ids)]),
                                 np.concatenate([report.kept, np.zeros(len(bad_ids), dtype=bool)]),
                                 report.dropped + bad_ids, report.extra)
        self.last_report = report
        self.current = new
        losses = np.array([_number(u[3].get("loss")) for u in updates])
        loss = float(np.nanmean(losses)) if not np.isnan(losses).all() else float("nan")
        metrics = MetricRecord({"loss": loss, "clients": len(updates),
                                "dropped": len(report.dropped)})
        return array_record(new), metrics
