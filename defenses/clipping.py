"""Norm-based clipping: norm bounding and centered clipping.

* ``norm_bound``: Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
  arXiv:1911.07963, 2019. Each client's whole update (all parameters concatenated) is scaled to
  L2 norm ``<= tau``, then the clipped updates are averaged weighted by example counts, so the
  result's norm is ``<= tau``. Clients whose update was clipped are flagged (``kept=False``).
* ``centered_clipping``: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
  Optimization", ICML 2021 (arXiv:2012.10333). Starting from a centre ``v`` (the previous
  round's aggregate, zero in the first round), repeat ``iters`` times
  ``v <- v + (1/n) sum_i clip_tau(x_i - v)`` with ``clip_tau(y) = y * min(1, tau / |y|)``; the
  mean is unweighted as in the paper. The paper's momentum is computed by the *workers*; with
  sampled, stateless FL clients that is not available to a server rule, so ``momentum`` here
  only smooths the centre: the next round starts from ``momentum * v_start + (1 - momentum) *
  v_out`` (``momentum=0``, the default, is the paper's "start from the last aggregate").
  ``AggregationInfo.weights`` are the coefficients ``c_i`` in ``v_out = a * v_start + sum_i c_i
  x_i`` (``extra['center_weight'] = a``); ``kept=False`` marks clients clipped in the last
  iteration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedrec.errors import ConfigError
from fedrec.rowsparse import RowSparse

from .base import AggregationContext, AggregationInfo, Defense, Stacked
from .linalg import client_sq_norms, combine

__all__ = ["CenteredClipping", "NormBound", "centered_clip_step", "clip_scales"]


def clip_scales(sq_norms: Tensor, tau: float) -> Tensor:
    """Per-client factors ``min(1, tau / norm)`` (1 for a zero update), float64.

    Parameters
    ----------
    sq_norms : Tensor
        ``[n]`` squared L2 norms.
    tau : float
        Norm bound, ``> 0``.
    """
    norms = sq_norms.to(torch.float64).sqrt()
    return torch.where(norms > tau, tau / norms.clamp_min(1e-300), torch.ones_like(norms))


def _check_tau(rule: str, tau: float, field: str = "tau") -> float:
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not (
        math.isfinite(tau) and tau > 0
    ):
        raise ConfigError(f"defense.{rule}.{field}={tau!r}: expected a finite float > 0")
    return float(tau)


class NormBound(Defense):
    """Clip each client's update to L2 norm ``<= tau``, then example-weighted mean.

    Parameters
    ----------
    tau : float
        Norm bound, ``> 0``.
    """

    name = "norm_bound"
    sparse_rows = True
    homogeneous = False  # fixed radius tau

    def __init__(self, tau: float) -> None:
        self.tau = _check_tau(self.name, tau)

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        scale = clip_scales(client_sq_norms(stacked), self.tau)
        coef = weights / weights.sum() * scale
        clipped = scale < 1.0
        extra = {"clip_fraction": float(clipped.double().mean())}
        return combine(stacked, coef), AggregationInfo(~clipped, coef, extra)


def centered_clip_step(
    stacked: Stacked, center: Mapping[str, Tensor], tau: float
) -> tuple[dict[str, Tensor], Tensor]:
    """One centered-clipping step ``v + (1/n) sum_i clip_tau(x_i - v)``.

    Parameters
    ----------
    stacked : Mapping[str, Tensor]
        ``param_name -> Tensor[n, *shape]``.
    center : Mapping[str, Tensor]
        ``param_name -> Tensor[*shape]``, the current centre ``v``.
    tau : float
        Clipping radius, ``> 0``.

    Returns
    -------
    new_center : dict[str, Tensor]
        The updated centre (dtype of the updates).
    scales : Tensor
        ``float64[n]`` clipping factors ``min(1, tau / |x_i - v|)``.
    """
    n = next(iter(stacked.values())).shape[0]
    sq = torch.zeros(n, dtype=torch.float64)
    for k, x in stacked.items():
        if isinstance(x, RowSparse):
            # |x_i - v|^2 = |x_i|^2 - 2 <x_i, v> + |v|^2 (float64): no dense [n, rows] difference
            v = center[k].to(torch.float64)
            sq += x.sq_norms()
            if bool(v.any()):
                sq += float(v.pow(2).sum()) - 2.0 * x.dots(v)
            continue
        c = center[k].reshape(1, -1).to(x.dtype)
        flat = x.reshape(n, -1)
        diff = flat if not bool(c.any()) else flat - c  # no copy while the centre is zero
        sq += torch.linalg.vector_norm(diff, dim=1).double().pow(2)
    scale = clip_scales(sq.clamp_(min=0.0), tau)
    moved = combine(stacked, scale / n)
    keep = 1.0 - float(scale.mean())
    new_center = {
        k: (moved[k].to(torch.float64) + keep * center[k].to(torch.float64)).to(x.dtype)
        for k, x in stacked.items()
    }
    return new_center, scale


class CenteredClipping(Defense):
    """Centered clipping (Karimireddy et al., ICML 2021), centre kept across rounds.

    Parameters
    ----------
    tau : float
        Clipping radius, ``> 0``.
    iters : int (default: 1)
        Clipping iterations per round, ``>= 1``.
    momentum : float (default: 0.0)
        Smoothing of the centre carried to the next round, ``0 <= momentum < 1``.
    """

    name = "centered_clipping"
    sparse_rows = True
    homogeneous = False  # fixed radius tau
    idempotent = False

    def __init__(self, tau: float, iters: int = 1, momentum: float = 0.0) -> None:
        self.tau = _check_tau(self.name, tau)
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ConfigError(f"defense.centered_clipping.iters={iters!r}: expected an int >= 1")
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not (
            0.0 <= momentum < 1.0
        ):
            raise ConfigError(
                f"defense.centered_clipping.momentum={momentum!r}: expected 0 <= momentum < 1"
            )
        self.iters = iters
        self.momentum = float(momentum)
        self._center: dict[str, Tensor] | None = None

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        if self._center is None:
            start = {k: torch.zeros(x.shape[1:], dtype=x.dtype) for k, x in stacked.items()}
        else:
            start = self._center
            for k, x in stacked.items():
                if k not in start or start[k].shape != x.shape[1:]:
                    raise ValueError(
                        f"centered_clipping: stored centre does not match param {k!r} "
                        f"of shape {tuple(x.shape[1:])}"
                    )
        v = start
        a = 1.0
        coef = torch.zeros(n, dtype=torch.float64)
        scale = torch.ones(n, dtype=torch.float64)
        for _ in range(self.iters):
            v, scale = centered_clip_step(stacked, v, self.tau)
            keep = 1.0 - float(scale.mean())
            a *= keep
            coef = coef * keep + scale / n
        if self.momentum > 0:
            m = self.momentum
            self._center = {k: (m * start[k] + (1 - m) * v[k]).clone() for k in v}
        else:
            self._center = {k: t.clone() for k, t in v.items()}
        clipped = scale < 1.0
        extra = {"clip_fraction": float(clipped.double().mean()), "center_weight": a}
        return v, AggregationInfo(~clipped, coef, extra)

    def state_dict(self) -> dict[str, Any]:
        """``{"center": None | {param_name: Tensor}}``."""
        return {"center": None if self._center is None else dict(self._center)}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the centre saved by :meth:`state_dict`."""
        if set(d) != {"center"}:
            raise ValueError(f"centered_clipping state: expected key 'center', got {sorted(d)}")
        c = d["center"]
        self._center = None if c is None else {k: t.clone() for k, t in c.items()}
