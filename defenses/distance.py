"""Distance-based selection: Krum, Multi-Krum and Bulyan.

* Krum / Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (arXiv:1703.02757).
* Bulyan: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
  Byzantium", ICML 2018 (arXiv:1802.07927).

Krum score of client ``i``: the sum of the squared L2 distances from ``x_i`` to its ``n - f - 2``
nearest other updates, with vectors taken over the concatenation of all parameters. Distances
come from a float64 Gram matrix (``|a|^2 + |b|^2 - 2ab``, clamped at 0). Ties in the score are
broken by the lower client index.

Mapping to Flower 1.42 (``flwr.serverapp.strategy``), checked in
``tests/test_defenses_flower.py``:

* ``Krum(f)`` == Flower ``Krum(num_malicious_nodes=f)``: the result is the selected update.
* ``MultiKrum(f, m)`` == Flower ``MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m)``:
  the ``m`` lowest-scoring updates are averaged **weighted by example counts** (Flower's
  ``aggregate_arrayrecords`` with ``num-examples``). Flower uses ``max(1, n - f - 2)``
  neighbours and does not check ``2f + 2 < n``; this module raises instead.
* ``Bulyan(f)`` == Flower ``Bulyan(num_malicious_nodes=f)``: a one-shot Multi-Krum selection of
  the ``theta = n - 2f`` lowest Krum scores (the paper applies Krum recursively, removing one
  update at a time; the two selections can differ), then per coordinate the **unweighted**
  mean of the ``beta = theta - 2f`` selected values closest to the coordinate-wise median of
  the selection (median with numpy's convention for even ``theta``). Requires ``n >= 4f + 3``
  (Flower skips the round with a warning; this module raises ``ConfigError``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedrec.errors import ConfigError
from fedrec.rowsparse import RowSparse

from .base import AggregationContext, AggregationInfo, Defense, Stacked, check_n_dependent
from .coordinate import columnwise, coordinate_median, zero_upto_for_ranks
from .linalg import combine, gram, pairwise_sq_dists, sq_dists_from_gram

__all__ = [
    "Bulyan",
    "Krum",
    "MultiKrum",
    "bulyan_coordinate",
    "krum_scores",
    "krum_select",
    "krum_select_from_dists",
]


def krum_scores(sq_dists: Tensor, f: int) -> Tensor:
    """Krum score of every client.

    Parameters
    ----------
    sq_dists : Tensor
        ``[n, n]`` pairwise squared distances.
    f : int
        Assumed number of Byzantine clients, ``2f + 2 < n``.

    Returns
    -------
    Tensor
        ``[n]``: sum of the squared distances to the ``n - f - 2`` nearest other clients.
    """
    n = sq_dists.shape[0]
    k = n - f - 2
    if k < 1:
        raise ValueError(f"krum_scores: need 2f + 2 < n, got f={f}, n={n}")
    d = sq_dists.clone()
    d.fill_diagonal_(float("inf"))
    return d.topk(k, dim=1, largest=False).values.sum(dim=1)


def krum_select_from_dists(sq_dists: Tensor, f: int, m: int) -> Tensor:
    """Indices of the ``m`` lowest Krum scores (ascending score, ties by index)."""
    scores = krum_scores(sq_dists, f)
    return torch.sort(scores, stable=True).indices[:m]


def krum_select(flat: Tensor, f: int, m: int) -> Tensor:
    """Multi-Krum selection on an ``[n, D]`` matrix of flattened updates.

    Parameters
    ----------
    flat : Tensor
        ``[n, D]``.
    f : int
        Assumed number of Byzantine clients, ``2f + 2 < n``.
    m : int
        Number of clients to select, ``1 <= m <= n``; ``m = 1`` is Krum.

    Returns
    -------
    Tensor
        ``int64[m]`` client indices, best score first.
    """
    return krum_select_from_dists(pairwise_sq_dists(flat), f, m)


def bulyan_coordinate(xs: Tensor, beta: int) -> tuple[Tensor, Tensor]:
    """Per column, the mean of the ``beta`` values closest to the column median.

    Parameters
    ----------
    xs : Tensor
        ``[theta, N]`` selected updates.
    beta : int
        ``1 <= beta <= theta``.

    Returns
    -------
    values : Tensor
        ``[N]`` in the dtype of ``xs``.
    shares : Tensor
        ``float64[theta]``: per row, the summed weight ``1 / beta`` over the columns where it
        is among the ``beta`` closest.
    """
    theta, cols = xs.shape
    drop = theta - beta
    if drop == 0:
        return xs.mean(dim=0), torch.full((theta,), cols / beta, dtype=torch.float64)
    med, _ = coordinate_median(xs)
    diff = (xs - med).abs_()
    if drop < beta:  # cheaper to find the values to remove; mask them (no subtraction)
        idx = diff.topk(drop, dim=0, largest=True).indices
        dropped = torch.zeros(xs.shape, dtype=torch.bool).scatter_(0, idx, True)
        total = xs.masked_fill(dropped, 0.0).sum(dim=0)
        removed = torch.bincount(idx.reshape(-1), minlength=theta).to(torch.float64)
        shares = (cols - removed) / beta
    else:
        idx = diff.topk(beta, dim=0, largest=False).indices
        total = xs.gather(0, idx).sum(dim=0)
        shares = torch.bincount(idx.reshape(-1), minlength=theta).to(torch.float64) / beta
    return total / beta, shares


def _check_f(rule: str, f: int) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ConfigError(f"defense.{rule}.f={f!r}: expected an integer >= 0")
    return f


class Krum(Defense):
    """Krum (Blanchard et al., NeurIPS 2017): return the update with the lowest Krum score.

    Parameters
    ----------
    f : int
        Assumed number of Byzantine clients; at call time ``2f + 2 < n_clients``.
    """

    name = "krum"
    sparse_rows = True

    def __init__(self, f: int) -> None:
        self.f = _check_f(self.name, f)

    def min_clients(self) -> int:
        """``2f + 3`` (Krum needs ``2f + 2 < n``)."""
        return 2 * self.f + 3

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        check_n_dependent(
            2 * self.f + 2 < n,
            f"defense.{self.name}.f={self.f}: Krum needs 2f+2 < n_clients, got n_clients={n}",
        )
        sel = krum_select_from_dists(sq_dists_from_gram(gram(stacked, center=True)), self.f, 1)
        i = int(sel[0])
        out = {k: (v.client(i) if isinstance(v, RowSparse) else v[i].clone())
               for k, v in stacked.items()}
        coef = torch.zeros(n, dtype=torch.float64)
        coef[i] = 1.0
        return out, AggregationInfo(coef > 0, coef, {"selected": float(i)})


class MultiKrum(Defense):
    """Multi-Krum (Blanchard et al., NeurIPS 2017): example-weighted mean of the ``m`` best.

    Parameters
    ----------
    f : int
        Assumed number of Byzantine clients; at call time ``2f + 2 < n_clients``.
    m : int | None (default: None)
        Number of updates averaged, ``1 <= m <= n_clients``; ``None`` means ``n_clients - f``.
    """

    name = "multi_krum"
    sparse_rows = True

    def __init__(self, f: int, m: int | None = None) -> None:
        self.f = _check_f(self.name, f)
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(f"defense.multi_krum.m={m!r}: expected an integer >= 1 or None")
        self.m = m

    def min_clients(self) -> int:
        """``2f + 3`` (Multi-Krum needs ``2f + 2 < n``)."""
        return 2 * self.f + 3

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        check_n_dependent(
            2 * self.f + 2 < n,
            f"defense.{self.name}.f={self.f}: Multi-Krum needs 2f+2 < n_clients, "
            f"got n_clients={n}",
        )
        m = n - self.f if self.m is None else self.m
        check_n_dependent(
            m <= n, f"defense.{self.name}.m={m}: expected 1 <= m <= n_clients={n}"
        )
        sel = krum_select_from_dists(sq_dists_from_gram(gram(stacked, center=True)), self.f, m)
        coef = torch.zeros(n, dtype=torch.float64)
        coef[sel] = weights[sel]
        total = float(coef.sum())
        if total > 0:
            coef /= total
        else:  # all selected clients report zero examples: plain average of the selection
            coef[sel] = 1.0 / m
        return combine(stacked, coef), AggregationInfo(coef > 0, coef, {"m": float(m)})


class Bulyan(Defense):
    """Bulyan (El Mhamdi et al., ICML 2018) over Multi-Krum selection; unweighted.

    Parameters
    ----------
    f : int
        Assumed number of Byzantine clients; at call time ``n_clients >= 4f + 3``.
    """

    name = "bulyan"
    sparse_rows = True

    def __init__(self, f: int) -> None:
        self.f = _check_f(self.name, f)

    def min_clients(self) -> int:
        """``4f + 3``."""
        return 4 * self.f + 3

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        f = self.f
        check_n_dependent(
            n >= 4 * f + 3,
            f"defense.bulyan.f={f}: Bulyan needs n_clients >= 4f+3 = {4 * f + 3}, "
            f"got n_clients={n}",
        )
        theta = n - 2 * f
        beta = theta - 2 * f
        sel = krum_select_from_dists(sq_dists_from_gram(gram(stacked, center=True)), f, theta)
        out: dict[str, Tensor] = {}
        shares_sel = torch.zeros(theta, dtype=torch.float64)
        cols = 0
        for key, x in stacked.items():
            xs = x.select(sel) if isinstance(x, RowSparse) else x[sel]
            # a column with at most 2f non-zeros among the theta has its median at 0 and at least
            # beta zeros, the closest values to it: its value is 0
            out[key], s, c = columnwise(xs, lambda cols_: bulyan_coordinate(cols_, beta),
                                        min(2 * f, zero_upto_for_ranks(theta, (theta - 1) // 2,
                                                                       theta // 2)))
            shares_sel += s
            cols += c
        shares = torch.zeros(n, dtype=torch.float64)
        shares[sel] = shares_sel / cols
        kept = torch.zeros(n, dtype=torch.bool)
        kept[sel] = True
        return out, AggregationInfo(kept, shares, {"theta": float(theta), "beta": float(beta)})
