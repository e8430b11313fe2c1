"""Defense contract: stacked client updates in, one aggregated update out.

A defense (robust aggregation rule) receives the updates of the ``n`` clients selected in a
round as a *stacked* mapping ``param_name -> Tensor[n, *param_shape]`` together with the
clients' example counts, and returns ``param_name -> Tensor[*param_shape]`` plus an
:class:`AggregationInfo` that says which clients the rule rejected and how much each client
weighs in the result. Rules are pure tensor math (no I/O, no global RNG); stateful rules
(FoolsGold, HiCS, centered clipping) keep their state in the instance and expose it through
``state_dict`` / ``load_state_dict`` so that a run can be checkpointed and resumed.

Meaning of :attr:`AggregationInfo.weights` across rules
--------------------------------------------------------
``weights[i]`` is client ``i``'s effective coefficient in the result:

* rules whose output is a linear combination of the raw updates (mean, sum, Krum, Multi-Krum,
  geometric median, norm bound, FLAME, FLTrust, FoolsGold): the coefficient ``c_i`` with
  ``result = sum_i c_i * update_i (+ an additive term that does not come from the round's
  updates: FLAME's noise, centered clipping's centre, HiCS's bank)``. Clipping and rescaling
  rules therefore report coefficients that need not sum to 1;
* coordinate-wise rules (median, trimmed mean, Bulyan, item-wise rules): client ``i``'s weight
  in each output coordinate (e.g. 1 or 1/2 for the median's middle value(s)), averaged over the
  output coordinates that received any contribution; these sum to 1. When several clients
  send the same value (e.g. the zeros of sparse embedding updates), the share goes to whichever
  of the tied clients the sort or selection returns, so only the values, not these shares, are
  permutation invariant on tied data. (The median and the trimmed mean decide an item row that
  few clients touched without sorting, and credit its zeros' holders equally; see
  :func:`defenses.coordinate.columnwise`.)

Updates are assumed finite (the engine should reject NaN/inf updates before aggregation).

This module also holds the checks a rule author needs: input validation
(:func:`validate_inputs`), checks of rule parameters against the round's inputs
(:func:`check_n_dependent`, :func:`check_item_params`) and :func:`all_kept`. The float64 Gram
matrices, pairwise distances and per-client norms shared by the vector-wise rules live in
:mod:`defenses.linalg`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedrec.errors import ConfigError
from fedrec.rowsparse import RowSparse, densify

Stacked = Mapping[str, Tensor]
"""``param_name -> Tensor[n_clients, *param_shape]`` (float32); an item table may be a
:class:`fedrec.rowsparse.RowSparse` standing for that tensor."""


@dataclass
class AggregationContext:
    """Round-level information a rule may need besides the updates.

    Parameters
    ----------
    round : int (default: 0)
        Server round; seeds deterministic noise together with ``seed``.
    seed : int (default: 0)
        Experiment seed.
    item_param_names : tuple[str, ...] (default: ())
        Names of the embedding tables whose dim-1 rows are items (``stacked[name]`` has shape
        ``[n, n_rows, ...]``); used by the item-wise rules and HiCS.
    root_update : Mapping[str, Tensor] | None (default: None)
        FLTrust: the server's update on its clean root set, same keys and per-parameter
        shapes as the result (no client dimension).
    client_ids : Tensor | None (default: None)
        Integer tensor ``[n]`` of stable client identifiers, aligned with the client dimension
        of the stacked updates. Needed by rules with per-client state (FoolsGold).
    """

    round: int = 0
    seed: int = 0
    item_param_names: tuple[str, ...] = ()
    root_update: Mapping[str, Tensor] | None = None
    client_ids: Tensor | None = None


@dataclass
class AggregationInfo:
    """What a rule did with each client.

    Parameters
    ----------
    kept : Tensor
        ``bool[n]``; ``False`` means the rule rejected or flagged the client (detection).
    weights : Tensor
        ``float[n]``; client's effective coefficient in the result (see module docstring).
    extra : dict[str, float]
        Small scalars to log (iterations, clip fraction, ...).
    """

    kept: Tensor
    weights: Tensor
    extra: dict[str, float] = field(default_factory=dict)


class Defense(ABC):
    """Base class of all aggregation rules.

    Subclasses validate their parameters in ``__init__`` (raising
    :class:`fedrec.errors.ConfigError`) and implement :meth:`_aggregate`; the public entry
    points :meth:`aggregate` and ``__call__`` validate the inputs first.
    """

    name: ClassVar[str]
    #: the result is ``sum_i c_i * update_i`` with :meth:`coefficients` (engines may then
    #: combine benign updates in one pass)
    linear: ClassVar[bool] = False

    # Traits: the generic property tests (tests/test_defenses_properties.py) read these to
    # decide which properties a rule must satisfy; a new rule states them and is covered.
    #: positively homogeneous: scaling every update (and the root update) by ``c > 0`` scales
    #: the result by ``c`` (False for rules with a fixed radius or threshold in update units)
    homogeneous: ClassVar[bool] = True
    #: ``n`` identical updates aggregate to that update
    consensus: ClassVar[bool] = True
    #: aggregating ``n`` copies of the rule's own result gives that result back
    idempotent: ClassVar[bool] = True
    #: aggregates each item row over the clients whose update touches it, so on sparse rows
    #: the per-client ``info`` is not a permutation-equivariant function of the clients alone
    rowwise: ClassVar[bool] = False
    #: :meth:`_aggregate` takes :class:`fedrec.rowsparse.RowSparse` item tables as they are
    #: (through the helpers of :mod:`defenses.linalg`); otherwise :meth:`aggregate` densifies
    #: them first. Either way the result equals the dense one.
    sparse_rows: ClassVar[bool] = False

    def min_clients(self) -> int:
        """The fewest updates a round must hold for this rule's parameters (engines check the
        schedule's smallest round against it before training)."""
        return 1

    def coefficients(self, weights: Tensor) -> Tensor:
        """Per-client coefficients of a linear rule (``result = sum_i c_i * update_i``).

        Parameters
        ----------
        weights : Tensor
            ``float[n]`` example counts.

        Returns
        -------
        Tensor
            ``float[n]`` coefficients.

        Raises
        ------
        NotImplementedError
            If the rule is not linear.
        """
        raise NotImplementedError(f"defense {self.name!r} is not linear; it has no coefficients")

    def aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext | None = None
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        """Aggregate one round of client updates.

        Parameters
        ----------
        stacked : Mapping[str, Tensor]
            ``param_name -> Tensor[n, *param_shape]``.
        weights : Tensor
            ``float[n]`` per-client example counts (non-negative, finite).
        ctx : AggregationContext | None
            Round context; ``None`` means ``AggregationContext()``.

        Returns
        -------
        tuple[dict[str, Tensor], AggregationInfo]
            The aggregated update (same keys, per-parameter shapes without the client
            dimension, dtype of the input) and what happened to each client.

        Raises
        ------
        ValueError
            If the stacked updates or weights are malformed.
        fedrec.errors.ConfigError
            If a parameter of the rule is impossible for this number of clients.
        """
        validate_inputs(stacked, weights)
        weights = weights.to(dtype=torch.float64)
        if not self.sparse_rows and any(isinstance(v, RowSparse) for v in stacked.values()):
            stacked = densify(dict(stacked))
        return self._aggregate(stacked, weights, ctx if ctx is not None else AggregationContext())

    __call__ = aggregate

    @abstractmethod
    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        """Rule-specific aggregation on validated inputs (``weights`` is float64)."""

    def state_dict(self) -> dict[str, Any]:
        """Return the rule's state (empty for stateless rules)."""
        return {}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`.

        Raises
        ------
        ValueError
            If a stateless rule receives a non-empty state.
        """
        if d:
            raise ValueError(f"defense {self.name!r} is stateless; got state keys {sorted(d)}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def validate_inputs(stacked: Stacked, weights: Tensor) -> int:
    """Check that the stacked updates and weights are consistent; return ``n``.

    Raises
    ------
    ValueError
        On an empty mapping, a tensor without a client dimension, a non-floating tensor,
        client dimensions that disagree, or weights that are not finite non-negative ``[n]``
        with a positive sum.
    """
    if not stacked:
        raise ValueError("stacked updates: empty mapping; expected at least one parameter")
    n = -1
    for key, value in stacked.items():
        if isinstance(value, RowSparse):
            if not value.is_floating_point():
                raise ValueError(f"stacked[{key!r}]: expected floating rows, got {value.dtype}")
            n = value.n if n < 0 else n
            if value.n != n:
                raise ValueError(
                    f"stacked[{key!r}]: client dimension {value.n} != {n} of the first param"
                )
            continue
        if not isinstance(value, Tensor) or value.dim() < 1:
            raise ValueError(f"stacked[{key!r}]: expected a Tensor[n_clients, ...]")
        if not value.is_floating_point():
            raise ValueError(f"stacked[{key!r}]: expected a floating tensor, got {value.dtype}")
        if n < 0:
            n = value.shape[0]
        elif value.shape[0] != n:
            raise ValueError(
                f"stacked[{key!r}]: client dimension {value.shape[0]} != {n} of the first param"
            )
    if n < 1:
        raise ValueError("stacked updates: zero clients; expected n_clients >= 1")
    if not isinstance(weights, Tensor) or weights.shape != (n,):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected a Tensor of shape ({n},), got {shape}")
    w = weights.to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("weights: expected finite, non-negative example counts with sum > 0")
    return n


def check_n_dependent(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_item_params(rule: str, stacked: Stacked, ctx: AggregationContext) -> tuple[str, ...]:
    """Return ``ctx.item_param_names`` after checking they exist and are at least 2-D.

    Raises
    ------
    ConfigError
        If no item tables are named.
    ValueError
        If a named table is missing from ``stacked`` or has no row dimension.
    """
    if not ctx.item_param_names:
        raise ConfigError(
            f"defense.{rule}: ctx.item_param_names is empty; item-wise rules need the names "
            "of the item embedding tables"
        )
    for key in ctx.item_param_names:
        if key not in stacked:
            raise ValueError(f"ctx.item_param_names: {key!r} is not a key of the stacked updates")
        if stacked[key].dim() < 2:
            raise ValueError(f"stacked[{key!r}]: item table needs shape [n, n_rows, ...]")
    return tuple(ctx.item_param_names)


def all_kept(n: int) -> Tensor:
    """``bool[n]`` of ``True``."""
    return torch.ones(n, dtype=torch.bool)
