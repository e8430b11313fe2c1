"""Robust aggregation rules as pure tensor functions (one module per family).

Call a rule as ``result, info = rule(stacked, weights, ctx)`` with ``stacked`` mapping each
parameter name to ``Tensor[n_clients, *shape]`` and ``weights`` the clients' example counts;
build one from a config with ``build_defense(name, params)``. See :mod:`defenses.base` for the
contract and :mod:`defenses.linalg` for the shared Gram-matrix and distance helpers.
"""

from .averaging import Mean, Sum, UnweightedMean
from .base import AggregationContext, AggregationInfo, Defense, Stacked
from .clipping import CenteredClipping, NormBound
from .coordinate import Median, TrimmedMean, coordinate_median, coordinate_trimmed_mean
from .distance import Bulyan, Krum, MultiKrum, krum_scores, krum_select
from .geomed import DVFSRHybrid, GeometricMedian, weiszfeld_from_gram
from .hics import HiCS
from .itemwise import (
    ItemwiseKrum,
    ItemwiseMedian,
    ItemwiseNormBound,
    ItemwiseTrimmedMean,
)
from .linalg import flatten, gram, pairwise_sq_dists, touched_rows
from .registry import DEFENSES, build_defense, defense_params
from .similarity import Flame, FLTrust, FoolsGold

__all__ = [
    "DEFENSES",
    "AggregationContext",
    "AggregationInfo",
    "Bulyan",
    "CenteredClipping",
    "DVFSRHybrid",
    "Defense",
    "FLTrust",
    "Flame",
    "FoolsGold",
    "GeometricMedian",
    "HiCS",
    "ItemwiseKrum",
    "ItemwiseMedian",
    "ItemwiseNormBound",
    "ItemwiseTrimmedMean",
    "Krum",
    "Mean",
    "Median",
    "MultiKrum",
    "NormBound",
    "Stacked",
    "Sum",
    "TrimmedMean",
    "UnweightedMean",
    "build_defense",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "defense_params",
    "flatten",
    "gram",
    "krum_scores",
    "krum_select",
    "pairwise_sq_dists",
    "touched_rows",
    "weiszfeld_from_gram",
]
