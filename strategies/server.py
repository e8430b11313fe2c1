"""The server side of a round, shared by the local engine and the Flower strategy.

``stacked client updates → validation → defense → checks → server optimizer → checks → new
global parameters``. Both engines call :class:`ServerAggregator`, so a defense or server
optimizer behaves the same whichever engine produced the updates. An item table may arrive as
a :class:`fedrec.rowsparse.RowSparse` (the clients' touched rows): validation, the norm guard
and the client selection work on its stored rows, and the defense decides whether it needs
the dense form (:attr:`defenses.base.Defense.sparse_rows`).

Validation drops an update that holds a non-finite value or, with ``max_update_norm``, whose
L2 norm (over all parameters) exceeds the bound. After the defense, a round whose aggregate or
new global parameters are not finite is *refused*: logged, the global model and the server
optimizer's state stay as they were, and the report says so (``RoundReport.refused``).
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
from defenses.linalg import client_sq_norms
from strategies.optimizer import ServerOptimizer
from strategies.validation import finite_rows, log_rejections, nonfinite_keys

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
    refused : str or None
        Why the server refused the round's result (non-finite aggregate or parameters); the
        global model was left unchanged.
    """

    client_ids: np.ndarray
    kept: np.ndarray
    dropped: list[int] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    refused: str | None = None


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
    max_update_norm : float, optional
        Drop (with a log line) any update whose L2 norm over all parameters exceeds this
        (``federation.max_update_norm``; None: no bound).
    """

    def __init__(self, defense: Defense, optimizer: ServerOptimizer, protocol: str,
                 item_param_names: tuple[str, ...] = (), seed: int = 0,
                 root_update_fn: Callable[[Params, int], Params] | None = None,
                 max_update_norm: float | None = None) -> None:
        self.defense = defense
        self.optimizer = optimizer
        self.protocol = protocol
        self.item_param_names = item_param_names
        self.seed = seed
        self.root_update_fn = root_update_fn
        self.max_update_norm = max_update_norm

    # ------------------------------------------------------------------ aggregation
    def aggregate(self, params: Mapping[str, torch.Tensor], stacked: Mapping[str, torch.Tensor],
                  weights: torch.Tensor, client_ids: Sequence[int], round_idx: int
                  ) -> tuple[Params | None, RoundReport]:
        """Validate stacked updates and apply the defense.

        Non-finite rows are dropped with a log line. Returns ``(None, report)`` when no update
        is left.
        """
        ids = np.asarray(client_ids, dtype=np.int64)
        ok = finite_rows(stacked).cpu().numpy()
        reasons = {int(c): "non-finite values" for c in ids[~ok]}
        if self.max_update_norm is not None:
            norms = client_sq_norms(stacked).sqrt().cpu().numpy()
            too_big = ok & (norms > self.max_update_norm)
            reasons.update({int(c): f"L2 norm {n:.4g} > federation.max_update_norm="
                            f"{self.max_update_norm:g}"
                            for c, n in zip(ids[too_big], norms[too_big], strict=True)})
            ok = ok & ~too_big
        dropped = [int(c) for c in ids[~ok]]
        if dropped:
            log_rejections(round_idx, dropped, [reasons[c] for c in dropped])
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
        kept[ok] = info.kept.cpu().numpy()
        return agg, RoundReport(ids, kept, dropped, dict(info.extra))

    def apply(self, params: Mapping[str, torch.Tensor], aggregated: Mapping[str, torch.Tensor],
              epoch: int) -> Params:
        """Apply an aggregated update with the server optimizer."""
        if self.protocol == "fedsgd":
            pseudo = aggregated
        else:
            pseudo = {n: -v for n, v in aggregated.items()}
        return self.optimizer.step(params, pseudo, epoch)

    def round(self, params: Mapping[str, torch.Tensor], stacked: Mapping[str, torch.Tensor],
              weights: torch.Tensor, client_ids: Sequence[int], round_idx: int, epoch: int
              ) -> tuple[Params, RoundReport]:
        """One server round: validate, aggregate, check and apply.

        Parameters
        ----------
        params : mapping
            Current global parameters.
        stacked : mapping
            Per-client updates ``[n, ...]`` aligned with ``client_ids``.
        weights : Tensor
            Example counts of the clients in ``stacked``.
        client_ids : sequence of int
            Ids of the clients in ``stacked``.
        round_idx, epoch : int
            Round counters (for logs, noise and the learning-rate schedule).

        Returns
        -------
        (dict, RoundReport)
            The new global parameters (``params`` unchanged when no update is left or the round
            is refused) and what happened to each update.
        """
        agg, report = self.aggregate(params, stacked, weights, client_ids, round_idx)
        if agg is None:
            log.warning("round %d: no valid update; global model unchanged", round_idx)
            return dict(params), report
        return self.conclude(params, agg, report, round_idx, epoch)

    def conclude(self, params: Mapping[str, torch.Tensor], aggregated: Mapping[str, torch.Tensor],
                 report: RoundReport, round_idx: int, epoch: int) -> tuple[Params, RoundReport]:
        """Check the aggregate, apply it, check the result.

        A non-finite aggregate, or new parameters that are not finite, refuse the round: a log
        line, ``report.refused`` set, and ``params`` returned unchanged (the server optimizer's
        state is rolled back too).
        """
        bad = nonfinite_keys(aggregated)
        if bad:
            return self._refuse(params, report, round_idx, f"the aggregate is not finite ({bad})")
        saved = self.optimizer.state_dict()
        new = self.apply(params, aggregated, epoch)
        bad = nonfinite_keys(new)
        if bad:
            self.optimizer.load_state_dict(saved)
            return self._refuse(params, report, round_idx,
                                f"the new global parameters are not finite ({bad})")
        return new, report

    @staticmethod
    def _refuse(params: Mapping[str, torch.Tensor], report: RoundReport, round_idx: int,
                why: str) -> tuple[Params, RoundReport]:
        log.warning("round %d: refused: %s; global model unchanged", round_idx, why)
        report.refused = why
        return dict(params), report

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Optimizer and defense state."""
        return {"optimizer": self.optimizer.state_dict(), "defense": self.defense.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.defense.load_state_dict(state["defense"])

