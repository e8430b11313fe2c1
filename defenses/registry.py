"""Registry of aggregation rules: name -> class, and construction from a config mapping.

The parameter schema of a rule is the keyword signature of its class's ``__init__``: names,
defaults, and the annotated types (``int``, ``float``, ``bool``, ``str`` and their ``| None``
forms). :func:`build_defense` checks names and types and reports the first problem on one line
as :class:`fedrec.errors.ConfigError`; range checks are done by the class itself.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from fedrec.errors import ConfigError

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
    """Parameter schema of a rule: ``name -> (accepted types, default or inspect.Parameter.empty)``.

    ``float`` parameters also accept ``int`` values; ``None`` appears among the accepted types
    of optional parameters.
    """
    sig = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    schema: dict[str, tuple[tuple[type, ...], Any]] = {}
    for pname, param in sig.parameters.items():
        if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = hints.get(pname, Any)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            accepted = tuple(type(None) if a is type(None) else a for a in typing.get_args(hint))
        else:
            accepted = (hint,)
        schema[pname] = (accepted, param.default)
    return schema


def _type_ok(value: Any, accepted: tuple[type, ...]) -> bool:
    for t in accepted:
        if t is Any:
            return True
        if t is type(None) and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if t is str and isinstance(value, str):
            return True
    return False


def _type_name(accepted: tuple[type, ...]) -> str:
    return " | ".join("None" if t is type(None) else getattr(t, "__name__", str(t))
                      for t in accepted)


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
    if name not in DEFENSES:
        raise ConfigError(f"defense {name!r} is unknown; valid names: {', '.join(DEFENSES)}")
    cls = DEFENSES[name]
    params = dict(params or {})
    schema = defense_params(cls)
    accepted_names = ", ".join(schema) if schema else "(none)"
    for key, value in params.items():
        if key not in schema:
            raise ConfigError(
                f"defense.{name}: unknown parameter {key!r}; accepted: {accepted_names}"
            )
        types_ok, _ = schema[key]
        if not _type_ok(value, types_ok):
            raise ConfigError(
                f"defense.{name}.{key}={value!r}: expected {_type_name(types_ok)}, "
                f"got {type(value).__name__}"
            )
    for key, (_, default) in schema.items():
        if default is inspect.Parameter.empty and key not in params:
            raise ConfigError(f"defense.{name}.{key} is required (parameters: {accepted_names})")
    converted = {
        k: float(v) if float in schema[k][0] and int not in schema[k][0]
        and isinstance(v, int) else v
        for k, v in params.items()
    }
    return cls(**converted)
