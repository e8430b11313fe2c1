"""A rule added by following docs/contributing.md ("Add a defense"), and nothing else.

``EXAMPLE_RULES`` plays the part of ``defenses.registry.DEFENSES`` for rules that exist only
in the tests: the generic property tests (tests/test_defenses_properties.py) run every rule in
both tables, choosing the properties from each rule's traits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from defenses.base import AggregationContext, AggregationInfo, Defense, Stacked, all_kept


def coordinate_midrange(x: Tensor) -> Tensor:
    """``(max + min) / 2`` over clients (dim 0), coordinate by coordinate."""
    return (x.amax(dim=0) + x.amin(dim=0)) / 2


class MidRange(Defense):
    """Coordinate-wise mid-range: a toy rule (not robust: one client moves it arbitrarily)."""

    name = "midrange"

    def _aggregate(self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
                   ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        out = {k: coordinate_midrange(v) for k, v in stacked.items()}
        return out, AggregationInfo(all_kept(n), torch.full((n,), 1.0 / n, dtype=torch.float64))


EXAMPLE_RULES: dict[str, type[Defense]] = {MidRange.name: MidRange}
