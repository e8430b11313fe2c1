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
  permutation invariant on tied data.

Updates are assumed finite (the engine should reject NaN/inf updates before aggregation).

This module also holds the shared helpers: input validation, :func:`flatten`, the float64
Gram matrix / pairwise squared distances used by all vector-wise rules, and per-client norms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedrec.errors import ConfigError

Stacked = Mapping[str, Tensor]
"""``param_name -> Tensor[n_clients, *param_shape]`` (float32)."""

#: Columns processed per block when accumulating the float64 Gram matrix (bounds the
#: temporary float64 copy to ``n * _GRAM_BLOCK`` elements).
_GRAM_BLOCK = 32_768

#: Elements per padded block ``[rows, max_count, max(row_dim, max_count)]`` in
#: :func:`row_blocks`.
BLOCK_ELEMENTS = 1 << 21

#: A param with a row dimension takes the row-sparse Gram path when fewer than this fraction
#: of its (client, row) pairs are nonzero.
SPARSE_ROW_DENSITY = 0.25


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
    linear: ClassVar[bool] = False

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


# --------------------------------------------------------------------------------------------
# tensor helpers
# --------------------------------------------------------------------------------------------


def flatten(stacked: Stacked) -> tuple[Tensor, Callable[[Tensor], dict[str, Tensor]]]:
    """Concatenate all parameters of every client into one matrix.

    Parameters
    ----------
    stacked : Mapping[str, Tensor]
        ``param_name -> Tensor[n, *param_shape]``.

    Returns
    -------
    flat : Tensor
        ``[n, D]`` with ``D`` the total number of parameters (key order of ``stacked``).
    unflatten : Callable[[Tensor], dict[str, Tensor]]
        Maps a ``[..., D]`` tensor back to ``param_name -> Tensor[..., *param_shape]``.
    """
    keys = list(stacked)
    n = next(iter(stacked.values())).shape[0]
    shapes = [tuple(stacked[k].shape[1:]) for k in keys]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    flat = torch.cat([stacked[k].reshape(n, -1) for k in keys], dim=1)

    def unflatten(vec: Tensor) -> dict[str, Tensor]:
        lead = tuple(vec.shape[:-1])
        out: dict[str, Tensor] = {}
        for key, shape, piece in zip(keys, shapes, vec.split(sizes, dim=-1), strict=True):
            out[key] = piece.reshape(*lead, *shape)
        return out

    return flat, unflatten


def row_blocks(touched: Tensor, row_dim: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Group the rows of a row-sparse table by how many clients touch them.

    Parameters
    ----------
    touched : Tensor
        ``bool[n, n_rows]``.
    row_dim : int
        Elements per row (sizes the blocks).

    Yields
    ------
    rows : Tensor
        ``int64[B]`` row indices (rows touched by nobody are skipped).
    members : Tensor
        ``int64[B, C]``: ``members[b, p]`` is the ``p``-th client (in index order) touching
        ``rows[b]``; positions ``p >= counts[b]`` are padding (arbitrary client indices).
    counts : Tensor
        ``int64[B]`` number of touching clients per row.

    Rows are bucketed by ``ceil(log2(count))`` and each bucket is cut into blocks of at most
    :data:`BLOCK_ELEMENTS` elements of ``[B, C, max(row_dim, C)]``, so padding stays below 2x.
    """
    counts = touched.sum(dim=0)
    active = torch.nonzero(counts > 0).reshape(-1)
    if active.numel() == 0:
        return
    act_counts = counts[active]
    order = torch.sort(act_counts, stable=True).indices
    active, act_counts = active[order], act_counts[order]
    members_all = torch.sort(
        touched[:, active].T.to(torch.int8), dim=1, descending=True, stable=True
    ).indices
    bucket = torch.ceil(torch.log2(act_counts.double())).long()
    for b in torch.unique(bucket).tolist():
        sel = torch.nonzero(bucket == b).reshape(-1)
        cm = int(act_counts[sel].max())
        per = max(1, BLOCK_ELEMENTS // (cm * max(row_dim, cm)))
        for start in range(0, sel.numel(), per):
            part = sel[start : start + per]
            yield active[part], members_all[part, :cm], act_counts[part]


def touched_rows(table: Tensor) -> Tensor:
    """``bool[n, n_rows]``: client ``i`` touches row ``r`` iff that row has a nonzero entry."""
    n, rows = table.shape[:2]
    # the L1 norm of a finite row is 0 iff every entry is 0; it is several times faster than
    # (x != 0).any() on CPU
    return torch.linalg.vector_norm(table.reshape(n, rows, -1), ord=1, dim=2) > 0


def row_sparse_gram(table: Tensor, touched: Tensor | None = None) -> Tensor:
    """Float64 Gram matrix of a table whose clients touch few rows, without densifying.

    ``G = sum_r X_r X_r^T`` where ``X_r`` holds row ``r`` of the clients touching it; the cost
    is ``sum_r count_r^2 * row_dim`` instead of ``n^2 * n_rows * row_dim``.

    Parameters
    ----------
    table : Tensor
        ``[n, n_rows, *row_shape]``.
    touched : Tensor | None
        ``bool[n, n_rows]`` (computed if omitted).

    Returns
    -------
    Tensor
        ``float64[n, n]``.
    """
    n, n_rows = table.shape[:2]
    x = table.reshape(n, n_rows, -1)
    if touched is None:
        touched = touched_rows(table)
    g = torch.zeros(n, n, dtype=torch.float64)
    for rows, members, counts in row_blocks(touched, x.shape[2]):
        cm = members.shape[1]
        valid = torch.arange(cm)[None, :] < counts[:, None]
        v = x[members, rows[:, None]].to(torch.float64) * valid[:, :, None]
        gb = torch.bmm(v, v.transpose(1, 2))
        ii = members[:, :, None].expand(-1, cm, cm).reshape(-1)
        jj = members[:, None, :].expand(-1, cm, cm).reshape(-1)
        g.index_put_((ii, jj), gb.reshape(-1), accumulate=True)
    return g


def gram(stacked: Stacked | Tensor, center: bool = False) -> Tensor:
    """Float64 Gram matrix ``G[i, j] = <x_i, x_j>`` over the concatenation of all params.

    Dense params are accumulated block-wise in float64 (no ``[n, D]`` float64 copy). A param
    with a row dimension whose (client, row) pairs are less than :data:`SPARSE_ROW_DENSITY`
    nonzero (an item-embedding update) goes through :func:`row_sparse_gram`.

    Parameters
    ----------
    stacked : Mapping[str, Tensor] | Tensor
        Stacked updates or an ``[n, D]`` matrix.
    center : bool (default: False)
        Subtract the (unweighted) mean update from every *dense* param first (row-sparse
        params are left as they are). The result is the Gram matrix of ``x_i - t`` for one
        fixed vector ``t``, so distances, and anything computed from convex combinations of
        the updates, are unchanged, while the cancellation error shrinks when the updates
        share a large common component. Cosines need ``center=False``.

    Returns
    -------
    Tensor
        ``float64[n, n]``.
    """
    tensors = [stacked] if isinstance(stacked, Tensor) else list(stacked.values())
    n = tensors[0].shape[0]
    g = torch.zeros(n, n, dtype=torch.float64)
    for t in tensors:
        if t.dim() >= 3 and t.shape[1] >= 8:
            touched = touched_rows(t)
            if float(touched.double().mean()) < SPARSE_ROW_DENSITY:
                g += row_sparse_gram(t, touched)
                continue
        mat = t.reshape(n, -1)
        for start in range(0, mat.shape[1], _GRAM_BLOCK):
            block = mat[:, start : start + _GRAM_BLOCK].to(torch.float64)
            if center:
                block = block - block.mean(dim=0, keepdim=True)
            g.addmm_(block, block.T)
    return g


def sq_dists_from_gram(g: Tensor) -> Tensor:
    """Pairwise squared L2 distances ``|x_i|^2 + |x_j|^2 - 2<x_i, x_j>``, clamped at 0.

    The diagonal is set to exactly 0.
    """
    sq = torch.diagonal(g)
    d = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    d.fill_diagonal_(0.0)
    return d


def pairwise_sq_dists(flat: Tensor) -> Tensor:
    """Pairwise squared L2 distances of the rows of ``flat`` (``[n, D]``), float64 ``[n, n]``.

    Uses the centred Gram matrix (see :func:`gram`).
    """
    return sq_dists_from_gram(gram(flat, center=True))


def client_sq_norms(stacked: Stacked, keys: list[str] | tuple[str, ...] | None = None) -> Tensor:
    """Squared L2 norm of each client's update over ``keys`` (default: all), float64 ``[n]``.

    Each param's norm is computed in its own dtype (``torch.linalg.vector_norm``), then
    squared and summed in float64.
    """
    keys = list(stacked) if keys is None else list(keys)
    n = stacked[keys[0]].shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    for k in keys:
        total += torch.linalg.vector_norm(stacked[k].reshape(n, -1), dim=1).double().pow(2)
    return total


def client_dots(x: Tensor, vec: Tensor) -> Tensor:
    """Inner products ``<x_i, vec>`` of every client's parameter with ``vec``, float64 ``[n]``.

    Parameters
    ----------
    x : Tensor
        ``[n, *shape]`` one stacked parameter.
    vec : Tensor
        ``[*shape]`` or flat vector of the same number of elements.
    """
    n = x.shape[0]
    return (x.reshape(n, -1) @ vec.reshape(-1).to(x.dtype)).double()


def combine(stacked: Stacked, coef: Tensor, keys: list[str] | tuple[str, ...] | None = None
            ) -> dict[str, Tensor]:
    """``sum_i coef[i] * stacked[k][i]`` for each key (a matrix-vector product per param).

    Runs in the dtype of the updates and returns that dtype.
    """
    keys = list(stacked) if keys is None else list(keys)
    out: dict[str, Tensor] = {}
    for k in keys:
        x = stacked[k]
        n = x.shape[0]
        out[k] = (coef.to(x.dtype) @ x.reshape(n, -1)).reshape(x.shape[1:])
    return out


def all_kept(n: int) -> Tensor:
    """``bool[n]`` of ``True``."""
    return torch.ones(n, dtype=torch.bool)
