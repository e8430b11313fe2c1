"""The server side of a round, shared by the local engine and the Flower strategy.

``stacked client updates → validation → defense → server optimizer → new global parameters``.
Both engines call :class:`ServerAggregator`, so a defense or server optimizer behaves the same
whichever engine produced the updates. The local engine may also hand over a *pre-combined*
benign update ``Σ c_i u_i`` for a linear rule (its fast path); :meth:`ServerAggregator.round`
accepts both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from defenses.base import AggregationContext, Defense
from strategies.optimizer import ServerOptimizer
from strategies.validation import finite_rows, log_rejections

log = logging.getLogger("fedrec")

Params = dict[str, torch.Tensor]


@dataclass
class RoundReport:
    """What happened to a round's updates.

    Attributes
    ----------
    client_ids : numpy.ndarray
        Clients whose updates reached the server, in aggregation order.
    kept : numpy.ndarray
        ``bool`` per client: False when the server dropped the update (malformed) or the
        defense rejected/flagged it.
    dropped : list of int
        Clients whose update failed validation.
    extra : dict
        Scalars from the defense (iterations, clip fraction, ...).
    """

    client_ids: np.ndarray
    kept: np.ndarray
    dropped: list[int] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


def detection_metrics(report: RoundReport, malicious: set[int]) -> dict[str, float]:
    """Precision and recall of the server's flags against the (server-hidden) malicious set.

    A client is *flagged* when its update was dropped or rejected by the defense. Precision is
    ``nan`` when nothing was flagged; recall is ``nan`` when no malicious client took part.
    """
    ids = report.client_ids
    flagged = ~report.kept
    is_mal = np.array([int(c) in malicious for c in ids], dtype=bool)
    tp = int((flagged & is_mal).sum())
    n_flag = int(flagged.sum())
    n_mal = int(is_mal.sum())
    return {
        "flagged": float(n_flag),
        "malicious_in_round": float(n_mal),
        "detect_precision": tp / n_flag if n_flag else math.nan,
        "detect_recall": tp / n_mal if n_mal else math.nan,
    }


class NeedsStackedPath(ValueError):
    """The linear fast path met a non-finite update; recompute the round client by client so
    the offending updates can be identified and dropped."""


class ServerAggregator:
    """Validation + defense + server optimizer.

    Parameters
    ----------
    defense : Defense
        Aggregation rule.
    optimizer : ServerOptimizer
        Applies the aggregate.
    protocol : str
        ``"fedsgd"`` (updates are gradients) or ``"fedavg"`` (updates are deltas).
    item_param_names : tuple of str
        Embedding tables whose rows are items (for item-wise rules).
    seed : int
        Seed for rules with randomness (FLAME noise).
    root_update_fn : callable, optional
        ``(params, round_idx) -> update`` computed by the server on its own clean root data
        (FLTrust).
    """

    def __init__(self, defense: Defense, optimizer: ServerOptimizer, protocol: str,
                 item_param_names: tuple[str, ...] = (), seed: int = 0,
                 root_update_fn: Callable[[Params, int], Params] | None = None) -> None:
        self.defense = defense
        self.optimizer = optimizer
        self.protocol = protocol
        self.item_param_names = item_param_names
        self.seed = seed
        self.root_update_fn = root_update_fn

    # ------------------------------------------------------------------ aggregation
    def aggregate(self, params: Mapping[str, torch.Tensor], stacked: Mapping[str, torch.Tensor],
                  weights: torch.Tensor, client_ids: Sequence[int], round_idx: int
                  ) -> tuple[Params | None, RoundReport]:
        """Validate stacked updates and apply the defense.

        Non-finite rows are dropped with a log line. Returns ``(None, report)`` when no update
        is left.
        """
        ids = np.asarray(client_ids, dtype=np.int64)
        ok = finite_rows(stacked).numpy()
        dropped = [int(c) for c in ids[~ok]]
        if dropped:
            log_rejections(round_idx, dropped, ["non-finite values"] * len(dropped))
        kept = ok.copy()
        if not ok.any():
            return None, RoundReport(ids, kept, dropped)
        sel = torch.from_numpy(ok)
        if not ok.all():
            stacked = {k: v[sel] for k, v in stacked.items()}
            weights = weights[sel]
        ctx = AggregationContext(
            round=round_idx, seed=self.seed, item_param_names=self.item_param_names,
            root_update=self.root_update_fn(dict(params), round_idx) if self.root_update_fn else None,
            client_ids=torch.as_tensor(ids[ok]),
        )
        agg, info = self.defense(stacked, weights, ctx)
        kept[ok] = info.kept.numpy()
        return agg, RoundReport(ids, kept, dropped, dict(info.extra))

    def apply(self, params: Mapping[str, torch.Tensor], aggregated: Mapping[str, torch.Tensor],
              epoch: int) -> Params:
        """Apply an aggregated update with the server optimizer."""
        if self.protocol == "fedsgd":
            pseudo = aggregated
        else:
            pseudo = {n: -v for n, v in aggregated.items()}
        return self.optimizer.step(params, pseudo, epoch)

    def round(self, params: Mapping[str, torch.Tensor], stacked: Mapping[str, torch.Tensor] | None,
              weights: torch.Tensor, client_ids: Sequence[int], round_idx: int, epoch: int,
              combined: tuple[Params, Sequence[int]] | None = None) -> tuple[Params, RoundReport]:
        """One server round: aggregate and apply.

        Parameters
        ----------
        params : mapping
            Current global parameters.
        stacked : mapping or None
            Per-client updates ``[n, ...]`` aligned with ``client_ids`` (may be None when
            everything is in ``combined``).
        weights : Tensor
            Example counts of the clients in ``stacked``; with ``combined``, of all clients
            (combined ones first).
        client_ids : sequence of int
            Ids of the clients in ``stacked``.
        round_idx, epoch : int
            Round counters (for logs, noise and the learning-rate schedule).
        combined : (dict, ids), optional
            Linear-rule fast path: ``Σ_i c_i u_i`` already summed over the clients ``ids``,
            with ``c`` = ``defense.coefficients`` of all weights. If anything is not finite,
            :class:`NeedsStackedPath` is raised and the caller recomputes the round stacked.
        """
        if combined is None:
            agg, report = self.aggregate(params, stacked or {}, weights, client_ids, round_idx)
            if agg is None:
                log.warning("round %d: no valid update; global model unchanged", round_idx)
                return dict(params), report
            return self.apply(params, agg, epoch), report
        part, combined_ids = combined
        finite = all(bool(torch.isfinite(v).all()) for v in part.values())
        if not finite or (stacked and not bool(finite_rows(stacked).all())):
            raise NeedsStackedPath("an update in the fast path is not finite")
        all_ids = np.asarray(list(combined_ids) + list(client_ids), dtype=np.int64)
        coef = self.defense.coefficients(weights.to(torch.float64))
        total = {n: v.clone() for n, v in part.items()}
        k = len(combined_ids)
        for j in range(len(client_ids)):
            for n in total:
                total[n] = total[n] + coef[k + j].to(total[n].dtype) * stacked[n][j]
        report = RoundReport(all_ids, np.ones(len(all_ids), dtype=bool))
        return self.apply(params, total, epoch), report

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Optimizer and defense state."""
        return {"optimizer": self.optimizer.state_dict(), "defense": self.defense.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.defense.load_state_dict(state["defense"])

