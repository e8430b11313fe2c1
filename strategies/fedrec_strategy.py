"""``FedRecStrategy``: a Flower ``FedAvg`` whose aggregation is fedrec's server pipeline.

Subclasses :class:`flwr.serverapp.strategy.FedAvg` (Message API, flwr 1.42) and overrides

* ``configure_train``: sends the round's messages to the nodes chosen by fedrec's schedule
  (when a node selector is set; otherwise FedAvg's own sampling) with the round config;
* ``aggregate_train``: drops error replies and malformed updates (wrong keys or shapes,
  non-finite values) with a log line, stacks the rest into tensors ordered by client id, and
  runs :class:`strategies.server.ServerAggregator` (defense + server optimizer). It returns the
  **new global parameters** (not the raw aggregate), so ``Strategy.start`` works unchanged.

Replies must carry one ``ArrayRecord`` (the update) and one ``MetricRecord`` with
``num-examples`` and ``client-id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from strategies.server import RoundReport, ServerAggregator
from strategies.validation import check_update, log_rejections

log = logging.getLogger("fedrec")

NodeSelector = Callable[[int], list[int]]


def reply_update(content: RecordDict) -> tuple[dict[str, Any], dict[str, Any]]:
    """The update arrays (as torch tensors) and metrics of a train reply.

    Raises
    ------
    ValueError
        When the reply does not hold exactly one ArrayRecord and one MetricRecord.
    """
    arrays = list(content.array_records.values())
    metrics = list(content.metric_records.values())
    if len(arrays) != 1 or len(metrics) != 1:
        raise ValueError(f"expected 1 ArrayRecord and 1 MetricRecord, got {len(arrays)} and {len(metrics)}")
    return dict(arrays[0].to_torch_state_dict()), dict(metrics[0])


class FedRecStrategy(FedAvg):
    """Flower strategy running fedrec's defenses and server optimizer.

    Parameters
    ----------
    aggregator : ServerAggregator
        Validation, defense and server optimizer (shared with the local engine).
    shapes : dict
        Expected update layout ``name -> shape``.
    node_selector : callable, optional
        ``server_round -> node ids`` for the round (fedrec's deterministic schedule).
    epoch_of : callable, optional
        ``server_round -> epoch`` for the learning-rate schedule (default: 0).
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, aggregator: ServerAggregator, shapes: dict[str, tuple[int, ...]],
                 node_selector: NodeSelector | None = None,
                 epoch_of: Callable[[int], int] | None = None, **kwargs: Any) -> None:
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
        self.epoch_of = epoch_of or (lambda r: 0)
        self.current: dict[str, torch.Tensor] | None = None
        self.last_report: RoundReport | None = None

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
        self.current = dict(arrays.to_torch_state_dict())
        if self.node_selector is None:
            return super().configure_train(server_round, arrays, config, grid)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.node_selector(server_round), MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, stack (by client id) and aggregate the replies; return new global params."""
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        for msg in errors:
            log.warning("round %d: client reply failed (%s)", server_round - 1, msg.error.reason)
        updates: list[tuple[int, dict[str, torch.Tensor], float, dict[str, Any]]] = []
        bad_ids: list[int] = []
        reasons: list[str] = []
        for msg in valid:
            try:
                arrays, metrics = reply_update(msg.content)
                cid = int(metrics["client-id"])
                n_ex = float(metrics["num-examples"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("round %d: dropped a malformed reply from node %d (%s)",
                            server_round - 1, msg.metadata.src_node_id, exc)
                continue
            why = check_update(arrays, self.shapes)
            if why is None and not (np.isfinite(n_ex) and n_ex > 0):
                why = f"num-examples={n_ex}"
            if why is not None:
                bad_ids.append(cid)
                reasons.append(why)
                continue
            updates.append((cid, arrays, n_ex, metrics))
        if bad_ids:
            log_rejections(server_round - 1, bad_ids, reasons)
        if not updates or self.current is None:
            self.last_report = RoundReport(np.asarray(bad_ids, dtype=np.int64),
                                           np.zeros(len(bad_ids), dtype=bool), bad_ids)
            return None, None
        updates.sort(key=lambda u: u[0])
        ids = [u[0] for u in updates]
        stacked = {n: torch.stack([u[1][n].to(torch.float32) for u in updates]) for n in self.shapes}
        weights = torch.tensor([u[2] for u in updates], dtype=torch.float64)
        new, report = self.aggregator.round(self.current, stacked, weights, ids,
                                            server_round - 1, self.epoch_of(server_round))
        if bad_ids:
            report = RoundReport(np.concatenate([report.client_ids, np.asarray(bad_ids)]),
                                 np.concatenate([report.kept, np.zeros(len(bad_ids), dtype=bool)]),
                                 report.dropped + bad_ids, report.extra)
        self.last_report = report
        self.current = new
        losses = [float(u[3].get("loss", np.nan)) for u in updates]
        metrics = MetricRecord({"loss": float(np.nanmean(losses)) if losses else float("nan"),
                                "clients": len(updates), "dropped": len(report.dropped)})
        return ArrayRecord({n: v.detach().contiguous() for n, v in new.items()}), metrics
