"""Coordinate-wise median and trimmed mean.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018 (arXiv:1803.01498).

Both rules are unweighted (example counts are ignored, as in the paper and in Flower's
``FedMedian`` / ``FedTrimmedAvg``). Conventions, chosen to match numpy / Flower exactly:

* median: for an even number of values, the mean of the two middle values (``np.median``);
* trimmed mean with fraction ``beta``: ``k = int(beta * n)`` values are removed at *each* end of
  every coordinate and the remaining ``n - 2k`` are averaged (``scipy.stats.trim_mean`` and
  ``flwr.serverapp.strategy.fedtrimmedavg.trim_mean`` use the same ``k``).

Bounded influence: the median tolerates ``f < n/2`` arbitrary clients per coordinate, the
trimmed mean ``f <= k`` (its output always lies between the (k+1)-th smallest and the (k+1)-th
largest value of each coordinate). Updates are assumed finite.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fedrec.errors import ConfigError
from fedrec.rowsparse import RowSparse

from .base import AggregationContext, AggregationInfo, Defense, Stacked, all_kept
from .linalg import touched_rows

__all__ = [
    "Median",
    "TrimmedMean",
    "columnwise",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "skip_zero_rows",
    "trim_count",
    "zero_upto_for_ranks",
]


def coordinate_median(x: Tensor) -> tuple[Tensor, Tensor]:
    """Median of every column of ``x`` (numpy convention for even ``n``).

    Parameters
    ----------
    x : Tensor
        ``[n, N]``.

    Returns
    -------
    median : Tensor
        ``[N]`` in the dtype of ``x``.
    shares : Tensor
        ``float64[n]``: summed over columns, the weight of each row in the column's median
        (1 for the middle value, 1/2 each for the two middle values when ``n`` is even).
    """
    n = x.shape[0]
    lo = x.median(dim=0)
    shares = torch.bincount(lo.indices, minlength=n).to(torch.float64)
    if n % 2 == 1:
        return lo.values, shares
    hi = (-x).median(dim=0)  # upper middle value of x, negated
    shares = 0.5 * (shares + torch.bincount(hi.indices, minlength=n).to(torch.float64))
    return (lo.values - hi.values) / 2, shares


def trim_count(beta: float, n: int) -> int:
    """Number of values removed at each end: ``int(beta * n)`` (as numpy/scipy/Flower)."""
    return int(beta * n)


def coordinate_trimmed_mean(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean of every column of ``x`` after removing its ``k`` smallest and ``k`` largest values.

    Parameters
    ----------
    x : Tensor
        ``[n, N]``.
    k : int
        Values removed at each end, ``0 <= 2k < n``.

    Returns
    -------
    mean : Tensor
        ``[N]`` in the dtype of ``x``.
    shares : Tensor
        ``float64[n]``: summed over columns, ``1 / (n - 2k)`` for each kept value.

    Raises
    ------
    ValueError
        If ``2k >= n``.
    """
    n, cols = x.shape
    if not 0 <= 2 * k < n:
        raise ValueError(f"trimmed mean: need 0 <= 2k < n, got k={k}, n={n}")
    trimmed = torch.zeros(n, dtype=torch.float64)
    if k == 0:
        return x.mean(dim=0), torch.full((n,), cols / n, dtype=torch.float64)
    # mask the k smallest, then the k largest among the rest (disjoint even with ties), and sum
    # the others: the trimmed values are never added, so huge outliers cost no precision
    lo = x.topk(k, dim=0, largest=False).indices
    trim = torch.zeros(x.shape, dtype=torch.bool).scatter_(0, lo, True)
    hi = x.masked_fill(trim, float("-inf")).topk(k, dim=0, largest=True).indices
    trim.scatter_(0, hi, True)
    total = x.masked_fill(trim, 0.0).sum(dim=0)
    trimmed += torch.bincount(hi.reshape(-1), minlength=n).to(torch.float64)
    trimmed += torch.bincount(lo.reshape(-1), minlength=n).to(torch.float64)
    shares = (cols - trimmed) / (n - 2 * k)
    return total / (n - 2 * k), shares


def columnwise(x: Tensor | RowSparse, fn: Callable[[Tensor], tuple[Tensor, Tensor]],
               zero_upto: int | None = None) -> tuple[Tensor, Tensor, int]:
    """Apply a column rule to one stacked parameter.

    Parameters
    ----------
    x : Tensor | RowSparse
        ``[n, *shape]``. A :class:`RowSparse` table is compacted to the rows anyone touched
        (``[n, U * row_dim]``); every other column is zero for all clients, so the rule runs on
        one all-zero column standing for all of them, whose value fills those rows and whose
        shares count once per untouched column. Memory ``O(n * U * row_dim)``.
    fn : Callable
        ``fn(cols [n, N]) -> (values [N], shares float64[n] summed over the columns)``.
    zero_upto : int, optional
        For a rule whose value is exactly 0 on a column with at most this many non-zero values
        (see :func:`zero_upto_for_ranks`): a :class:`RowSparse` row touched by at most
        ``zero_upto`` clients gets 0 without running the rule (most item rows of a round; see
        :func:`skip_zero_rows`). A dense table (a parameter with rows: two or more dimensions
        per client) is then taken by its rows as well, so dense and row-sparse stacks of the
        same updates give the same values and the same shares.

    Returns
    -------
    value : Tensor
        ``[*shape]``.
    shares : Tensor
        ``float64[n]`` summed over all columns.
    cols : int
        Number of columns.
    """
    if zero_upto is not None and not isinstance(x, RowSparse) and x.dim() >= 3:
        # rows: [n, rows, row_dim]; worth taking apart only when some row can be skipped (an
        # item table; not a dense weight matrix, whose rows every client touches)
        touched = touched_rows(x)
        if bool((touched.sum(dim=0) <= zero_upto).any()):
            x = RowSparse.from_dense(x, touched)
    if not isinstance(x, RowSparse):
        n = x.shape[0]
        value, s = fn(x.reshape(n, -1))
        return value.reshape(x.shape[1:]), s, value.numel()
    s = torch.zeros(x.n, dtype=torch.float64)
    dropped = 0
    if zero_upto is not None:
        x, s, dropped = skip_zero_rows(x, zero_upto)
    uids, vals = x.compact()
    value, s_touched = fn(vals.reshape(x.n, -1))
    s = s + s_touched
    untouched = (x.n_rows - uids.numel() - dropped) * x.row_dim
    out = torch.zeros((x.n_rows, *x.row_shape), dtype=value.dtype)
    if untouched and zero_upto is None:
        zero_value, zero_shares = fn(torch.zeros(x.n, 1, dtype=x.dtype))
        s = s + zero_shares * untouched
        out.fill_(float(zero_value[0]))
    elif untouched:  # value 0; each client is one of the zeros: equal shares
        s = s + untouched / x.n
    out[uids] = value.reshape(uids.numel(), *x.row_shape)
    return out, s, x.n_rows * x.row_dim


def zero_upto_for_ranks(n: int, lo: int, hi: int) -> int:
    """Non-zero values a column of ``n`` may hold while its sorted values of 0-based ranks
    ``lo..hi`` are all zero, whatever their signs: ``min(lo, n - 1 - hi)``.

    A rule built from those ranks (the median, the trimmed mean) is then exactly 0 there.
    """
    return min(lo, n - 1 - hi)


def skip_zero_rows(x: RowSparse, max_touches: int) -> tuple[RowSparse, Tensor, int]:
    """Drop the rows touched by at most ``max_touches`` clients (their rule value is 0).

    Parameters
    ----------
    x : RowSparse
        ``[n, n_rows, *row_shape]``.
    max_touches : int
        Rows touched by this many clients or fewer are dropped.

    Returns
    -------
    rest : RowSparse
        ``x`` without the dropped rows' entries.
    shares : Tensor
        ``float64[n]``: the dropped rows' shares. In each of their columns the clients that did
        not touch the row hold the zeros the rule keeps, and share the column equally
        (``1 / (n - touches)`` each).
    dropped : int
        Number of rows dropped.
    """
    uids, inv = x.touched_union()
    touches = torch.bincount(inv, minlength=uids.numel())
    dropped = touches <= max_touches
    shares = torch.zeros(x.n, dtype=torch.float64)
    if not bool(dropped.any()):
        return x, shares, 0
    credit = x.row_dim / (x.n - touches[dropped]).to(torch.float64)
    entry_dropped = dropped[inv]
    # every client gets each dropped row's credit, less the rows it touched
    shares += float(credit.sum())
    row_credit = torch.zeros(uids.numel(), dtype=torch.float64)
    row_credit[dropped] = credit
    shares.index_add_(0, x.clients[entry_dropped], -row_credit[inv[entry_dropped]])
    shares.clamp_(min=0.0)
    keep = ~entry_dropped
    # a subset of sorted, non-zero entries stays sorted and non-zero
    rest = RowSparse(x.clients[keep], x.ids[keep], x.rows[keep], x.n, x.n_rows)
    return rest, shares, int(dropped.sum())


def _per_param(stacked: Stacked, fn, zero_upto: int | None = None
               ) -> tuple[dict[str, Tensor], Tensor, int]:
    out: dict[str, Tensor] = {}
    shares: Tensor | None = None
    cols = 0
    for key, x in stacked.items():
        out[key], s, c = columnwise(x, fn, zero_upto)
        shares = s if shares is None else shares + s
        cols += c
    assert shares is not None
    return out, shares, cols


class Median(Defense):
    """Coordinate-wise median (Yin et al., ICML 2018); unweighted, tolerates ``f < n/2``."""

    name = "median"
    sparse_rows = True

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        out, shares, cols = _per_param(stacked, coordinate_median,
                                       zero_upto_for_ranks(n, (n - 1) // 2, n // 2))
        return out, AggregationInfo(all_kept(weights.shape[0]), shares / cols, {})


class TrimmedMean(Defense):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018); unweighted.

    Parameters
    ----------
    beta : float (default: 0.2)
        Fraction trimmed at each end, ``0 <= beta < 0.5``; ``int(beta * n)`` values per end
        (identical to Flower's ``FedTrimmedAvg(beta)``).
    """

    name = "trimmed_mean"
    sparse_rows = True

    def __init__(self, beta: float = 0.2) -> None:
        if not 0.0 <= beta < 0.5:
            raise ConfigError(f"defense.trimmed_mean.beta={beta}: expected 0 <= beta < 0.5")
        self.beta = float(beta)

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        k = trim_count(self.beta, n)
        out, shares, cols = _per_param(stacked, lambda x: coordinate_trimmed_mean(x, k),
                                       zero_upto_for_ranks(n, k, n - 1 - k))
        return out, AggregationInfo(all_kept(n), shares / cols, {"trimmed_per_side": float(k)})
