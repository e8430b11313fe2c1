"""Linear (non-robust) aggregation: example-weighted mean, unweighted mean and sum.

``mean`` is the FedAvg aggregate of McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017 (arXiv:1602.05629). ``sum`` is what the DV-FSR
reference code (Qin et al., "Dual-View Target Attack on Federated Sequential Recommendation",
arXiv:2409.07500) applies under ``--agg common``: the server step is ``lr * sum_i g_i``.
All three rules are linear: ``result = sum_i coefficients(weights)_i * update_i``.
"""

from __future__ import annotations

from torch import Tensor

from .base import AggregationContext, AggregationInfo, Defense, Stacked, all_kept
from .linalg import combine

__all__ = ["Mean", "Sum", "UnweightedMean", "linear_aggregate"]


def linear_aggregate(stacked: Stacked, coef: Tensor) -> dict[str, Tensor]:
    """Return ``sum_i coef[i] * stacked[k][i]`` for every parameter ``k``.

    Parameters
    ----------
    stacked : Mapping[str, Tensor]
        ``param_name -> Tensor[n, *shape]``.
    coef : Tensor
        ``[n]`` coefficients.

    Returns
    -------
    dict[str, Tensor]
        ``param_name -> Tensor[*shape]`` in the input dtype (accumulated in float64).
    """
    return combine(stacked, coef)


class _Linear(Defense):
    linear = True
    sparse_rows = True

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        coef = self.coefficients(weights)
        return linear_aggregate(stacked, coef), AggregationInfo(
            kept=all_kept(weights.shape[0]), weights=coef, extra={}
        )


class Mean(_Linear):
    """FedAvg mean weighted by example counts: coefficients ``w_i / sum_j w_j``."""

    name = "mean"

    def coefficients(self, weights: Tensor) -> Tensor:
        """Return ``weights / weights.sum()`` (float64)."""
        w = weights.double()
        return w / w.sum()


class UnweightedMean(_Linear):
    """Plain average of the client updates: coefficients ``1 / n``."""

    name = "unweighted_mean"

    def coefficients(self, weights: Tensor) -> Tensor:
        """Return ``1 / n`` for every client (float64)."""
        return weights.double().new_full(weights.shape, 1.0 / weights.shape[0])


class Sum(_Linear):
    """Sum of the client updates (DV-FSR ``--agg common``): coefficients 1.

    ``AggregationInfo.weights`` are the coefficients, i.e. all ones (they sum to ``n``).
    """

    name = "sum"
    consensus = False  # n identical updates sum to n times the update
    idempotent = False

    def coefficients(self, weights: Tensor) -> Tensor:
        """Return ones (float64)."""
        return weights.double().new_ones(weights.shape)
