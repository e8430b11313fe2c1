"""Registry of aggregation rules: name -> class, and construction from a config mapping.

:data:`DEFENSES` is the explicit table of every rule (the registry idiom of
:mod:`fedrec.registry`): add a rule by importing its class here and listing it. The parameter
schema of a rule is the keyword signature of its class's ``__init__`` (names, defaults,
annotated types); :func:`build_defense` checks names and types and reports the first problem
on one line as :class:`fedrec.errors.ConfigError`; range checks are done by the class itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedrec.registry import check_kwargs, keyword_schema, lookup

from .averaging import Mean, Sum, UnweightedMean
from .base import Defense
from .clipping import CenteredClipping, NormBound
from .coordinate import Median, TrimmedMean
from .distance import Bulyan, Krum, MultiKrum
from .geomed import DVFSRHybrid, GeometricMedian
from .hics import HiCS
from .itemwise import ItemwiseKrum, ItemwiseMedian, ItemwiseNormBound, ItemwiseTrimmedMean
from .similarity import Flame, FLTrust, FoolsGold

__all__ = ["DEFENSES", "build_defense", "defense_params"]

DEFENSES: dict[str, type[Defense]] = {
    cls.name: cls
    for cls in (
        Mean,
        UnweightedMean,
        Sum,
        Median,
        TrimmedMean,
        Krum,
        MultiKrum,
        Bulyan,
        GeometricMedian,
        DVFSRHybrid,
        NormBound,
        CenteredClipping,
        Flame,
        FoolsGold,
        FLTrust,
        ItemwiseMedian,
        ItemwiseTrimmedMean,
        ItemwiseKrum,
        ItemwiseNormBound,
        HiCS,
    )
}


def defense_params(cls: type[Defense]) -> dict[str, tuple[tuple[type, ...], Any]]:
    """Parameter schema of a rule: ``name -> (accepted types, default or inspect.Parameter.empty)``
    (:func:`fedrec.registry.keyword_schema`)."""
    return keyword_schema(cls)


def build_defense(name: str, params: Mapping[str, Any] | None = None) -> Defense:
    """Construct a registered rule from its name and a parameter mapping.

    Parameters
    ----------
    name : str
        Registered rule name (see :data:`DEFENSES`).
    params : Mapping[str, Any] | None
        Keyword parameters of the rule's ``__init__``.

    Returns
    -------
    Defense
        A new instance (fresh state).

    Raises
    ------
    ConfigError
        Unknown name, unknown parameter, missing required parameter, ill-typed or out-of-range
        value; the one-line message names the field and what is accepted.
    """
    cls = lookup(DEFENSES, name, "defense.name")
    return cls(**check_kwargs(f"defense.{name}", defense_params(cls), dict(params or {})))
