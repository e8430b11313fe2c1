"""Geometric median (RFA) and the DV-FSR mean / geometric-median blend.

* Geometric median by smoothed Weiszfeld iterations: Pillutla, Kakade, Harchaoui, "Robust
  Aggregation for Federated Learning", IEEE Transactions on Signal Processing 70, 2022
  (arXiv:1912.13445).
* Hybrid ``mean_weight * mean + (1 - mean_weight) * geometric_median``: Qin et al., "Dual-View
  Target Attack on Federated Sequential Recommendation" (DV-FSR), arXiv:2409.07500; the defaults
  0.3 / 0.7, at most 4 Weiszfeld iterations and relative tolerance 1e-6 follow the authors' code.

Algorithm (weights ``a_i`` = example counts, normalised; vectors = concatenation of all
parameters)::

    z_0 = sum_i a_i x_i                                 # weighted mean
    repeat up to max_iter times:
        b_i = a_i / max(nu, |z - x_i|) ;  z = sum_i b_i x_i / sum_j b_j
        stop when |F_prev - F| <= tol * F,  F(z) = sum_i a_i |z - x_i|

Every iterate is a convex combination ``z = sum_j c_j x_j`` of the updates, so the distances
``|z - x_i|^2 = G_ii - 2 (G c)_i + c^T G c`` are computed from the float64 Gram matrix ``G``
(computed once): each iteration costs ``O(n^2)``, not ``O(n D)``, and the updates are read only
twice (Gram matrix and final combination).

Detection: ``AggregationInfo.weights`` is the final coefficient vector ``c`` (sums to 1).
Client ``i`` is flagged (``kept=False``) when ``|z - x_i| > flag_distance * max(nu,
median_j |z - x_j|)`` (default factor 10). A threshold on the coefficients themselves (e.g.
``c_i < 1/(10 n)``) was rejected: near convergence Weiszfeld puts most of the weight on the
update closest to ``z`` (``c_i`` is proportional to ``1 / |z - x_i|``), so honest clients a
little farther away would be flagged (``tests/test_defenses_robust.py`` has such a case).

Robustness note: the geometric median tolerates ``f < n/2`` arbitrary clients (breakdown point
1/2) once the iterations have converged. Started at the mean, a far outlier cluster loses
influence only geometrically per iteration, so 4 iterations (DV-FSR's setting) leave a
noticeable pull; and the hybrid's mean term has unbounded influence (``mean_weight * f/n`` times
the outliers' magnitude). Because a relative tolerance on the objective is loose when far
outliers dominate the objective (the location error scales like ``tol`` times their distance),
and iterations are cheap here (``O(n^2)`` each), ``geometric_median`` defaults to
``max_iter=1000, tol=1e-10``; ``geometric_median(max_iter=4, tol=1e-6)`` is DV-FSR's ``RFA``
mode.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fedrec.errors import ConfigError

from .base import AggregationContext, AggregationInfo, Defense, Stacked
from .linalg import combine, gram

__all__ = ["DVFSRHybrid", "GeometricMedian", "WeiszfeldResult", "weiszfeld_from_gram"]


def _distances(g: Tensor, c: Tensor) -> Tensor:
    gc = g @ c
    sq = torch.diagonal(g) - 2.0 * gc + c @ gc
    return sq.clamp_min(0.0).sqrt()


class WeiszfeldResult(NamedTuple):
    """Outcome of :func:`weiszfeld_from_gram`."""

    coef: Tensor
    iterations: int
    objective: float
    distances: Tensor


def weiszfeld_from_gram(
    g: Tensor, alphas: Tensor, nu: float = 1e-5, max_iter: int = 1000, tol: float = 1e-10
) -> WeiszfeldResult:
    """Smoothed Weiszfeld iterations for the weighted geometric median, on a Gram matrix.

    Parameters
    ----------
    g : Tensor
        ``float64[n, n]`` Gram matrix of the points.
    alphas : Tensor
        ``[n]`` non-negative point weights with a positive sum.
    nu : float (default: 1e-5)
        Smoothing: distances below ``nu`` are replaced by ``nu`` in the reweighting.
    max_iter : int (default: 1000)
        Maximum number of reweighting steps.
    tol : float (default: 1e-10)
        Stop when the objective's relative change is ``<= tol``.

    Returns
    -------
    WeiszfeldResult
        ``coef``: ``float64[n]`` convex coefficients of the median, ``z = sum_i coef_i x_i``;
        ``iterations``: reweighting steps performed; ``objective``: ``sum_i (a_i / sum a)
        |z - x_i|`` at the returned ``z``; ``distances``: ``float64[n]`` values ``|z - x_i|``.
    """
    a = alphas.to(torch.float64)
    a = a / a.sum()
    coef = a.clone()
    dist = _distances(g, coef)
    obj = float(a @ dist)
    iterations = 0
    for _ in range(max_iter):
        b = a / dist.clamp_min(nu)
        coef = b / b.sum()
        dist = _distances(g, coef)
        new_obj = float(a @ dist)
        iterations += 1
        done = abs(obj - new_obj) <= tol * new_obj
        obj = new_obj
        if done:
            break
    return WeiszfeldResult(coef, iterations, obj, dist)


def _check(rule: str, nu: float, max_iter: int, tol: float) -> None:
    if not (isinstance(nu, int | float) and math.isfinite(nu) and nu > 0):
        raise ConfigError(f"defense.{rule}.nu={nu!r}: expected a finite float > 0")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"defense.{rule}.max_iter={max_iter!r}: expected an integer >= 1")
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"defense.{rule}.tol={tol!r}: expected a finite float >= 0")


def _check_flag(rule: str, flag_distance: float) -> None:
    if isinstance(flag_distance, bool) or not (
        isinstance(flag_distance, int | float) and flag_distance >= 1.0
    ):
        raise ConfigError(
            f"defense.{rule}.flag_distance={flag_distance!r}: expected a float >= 1 (inf: never)"
        )


class GeometricMedian(Defense):
    """RFA geometric median (Pillutla et al., IEEE TSP 2022) weighted by example counts.

    Parameters
    ----------
    nu : float (default: 1e-5)
        Weiszfeld smoothing, ``> 0``.
    max_iter : int (default: 1000)
        Maximum Weiszfeld iterations, ``>= 1``.
    tol : float (default: 1e-10)
        Relative objective change that stops the iterations, ``>= 0``.
    flag_distance : float (default: 10.0)
        A client is flagged when its distance to the median exceeds this multiple of the
        median distance, ``>= 1`` (``inf`` flags nobody).
    """

    name = "geometric_median"
    sparse_rows = True

    def __init__(
        self,
        nu: float = 1e-5,
        max_iter: int = 1000,
        tol: float = 1e-10,
        flag_distance: float = 10.0,
    ) -> None:
        _check(self.name, nu, max_iter, tol)
        _check_flag(self.name, flag_distance)
        self.nu, self.max_iter, self.tol = float(nu), int(max_iter), float(tol)
        self.flag_distance = float(flag_distance)

    def _median(self, stacked: Stacked, weights: Tensor) -> tuple[Tensor, Tensor, dict]:
        res = weiszfeld_from_gram(
            gram(stacked, center=True), weights, self.nu, self.max_iter, self.tol
        )
        n = weights.shape[0]
        d = res.distances
        med = float(d.sort().values[(n - 1) // 2 : n // 2 + 1].mean())
        kept = d <= self.flag_distance * max(med, self.nu)
        return res.coef, kept, {"iterations": float(res.iterations), "objective": res.objective}

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        coef, kept, extra = self._median(stacked, weights)
        return combine(stacked, coef), AggregationInfo(kept, coef, extra)


class DVFSRHybrid(GeometricMedian):
    """DV-FSR hybrid: ``mean_weight * mean + (1 - mean_weight) * geometric_median``.

    The authors' ``mixagg`` blends the plain mean of the round's gradients with their
    geometric median (whose Weiszfeld weights are example counts), so the mean term is
    unweighted by default; ``mean_weighting="examples"`` uses the example-weighted mean instead.
    ``AggregationInfo.weights`` are the blended coefficients ``mean_weight * m + (1 -
    mean_weight) * c`` (``m`` = the mean's coefficients; the result is exactly ``sum_i
    weights_i x_i``); ``kept`` flags clients far from the geometric median as in
    :class:`GeometricMedian`.

    Parameters
    ----------
    mean_weight : float (default: 0.3)
        Weight of the mean, ``0 <= mean_weight <= 1``.
    mean_weighting : {"uniform", "examples"} (default: "uniform")
        Coefficients of the mean term: ``1/n`` each, or proportional to example counts.
    max_iter : int (default: 4)
        Maximum Weiszfeld iterations, ``>= 1``.
    tol : float (default: 1e-6)
        Relative objective change that stops the iterations, ``>= 0``.
    nu : float (default: 1e-5)
        Weiszfeld smoothing, ``> 0``.
    flag_distance : float (default: 10.0)
        See :class:`GeometricMedian`.
    """

    name = "dvfsr_hybrid"

    def __init__(
        self,
        mean_weight: float = 0.3,
        mean_weighting: str = "uniform",
        max_iter: int = 4,
        tol: float = 1e-6,
        nu: float = 1e-5,
        flag_distance: float = 10.0,
    ) -> None:
        if not (isinstance(mean_weight, int | float) and 0.0 <= mean_weight <= 1.0):
            raise ConfigError(
                f"defense.dvfsr_hybrid.mean_weight={mean_weight!r}: expected 0 <= x <= 1"
            )
        if mean_weighting not in ("uniform", "examples"):
            raise ConfigError(
                f"defense.dvfsr_hybrid.mean_weighting={mean_weighting!r}: expected 'uniform' or "
                "'examples'"
            )
        super().__init__(nu=nu, max_iter=max_iter, tol=tol, flag_distance=flag_distance)
        self.mean_weight = float(mean_weight)
        self.mean_weighting = mean_weighting

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        coef, kept, extra = self._median(stacked, weights)
        if self.mean_weighting == "examples":
            mean_coef = weights / weights.sum()
        else:
            mean_coef = torch.full_like(coef, 1.0 / coef.numel())
        blend = self.mean_weight * mean_coef.to(coef.dtype) + (1.0 - self.mean_weight) * coef
        return combine(stacked, blend), AggregationInfo(kept, blend, extra)
