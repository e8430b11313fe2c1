"""The one registry idiom for models, attacks and defenses.

A registry is a plain, importable ``dict`` from name to class, written out in the package's
``registry`` module (``attacks.registry.ATTACKS``, ``defenses.registry.DEFENSES``,
``fedrec.models.registry.MODELS``). An entry may be a ``"module:Class"`` string for a class
that is imported on first use (a centralized baseline whose module is heavy). Method modules
never import their registry, so the registry is the only place that lists them and there is no
import cycle.

This module holds what every registry needs: looking a name up (an unknown name is a
:class:`~fedrec.errors.ConfigError` with "did you mean"), the keyword schema of a class's
constructor, and checking a parameter mapping against it (names, required keys, types).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from fedrec.errors import ConfigError

#: ``name -> class`` (or ``"module:Class"`` for a class imported on first use)
Table = Mapping[str, Any]


def suggestion(name: str, names: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``names``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(key: str, name: str, names: Iterable[str]) -> ConfigError:
    """The one-line error for an unknown registered name under config key ``key``."""
    names = sorted(names)
    return ConfigError(f"{key}={name!r} is unknown{suggestion(name, names)}; valid names: "
                       f"{', '.join(names)}")


def check_name(table: Table, name: str, key: str) -> None:
    """Raise :func:`unknown_name` unless ``name`` is registered (imports nothing)."""
    if name not in table:
        raise unknown_name(key, name, table)


def lookup(table: dict[str, Any], name: str, key: str) -> Any:
    """The class registered as ``name``; a ``"module:Class"`` entry is imported and cached.

    Parameters
    ----------
    table : dict
        The registry.
    name : str
        Registered name.
    key : str
        Config key named in the error (e.g. ``"attack.name"``).

    Raises
    ------
    ConfigError
        Unknown name, with "did you mean".
    """
    check_name(table, name, key)
    entry = table[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = table[name] = getattr(importlib.import_module(module), attr)
    return entry


def keyword_schema(cls: type, skip: Iterable[str] = ()) -> dict[str, tuple[tuple[Any, ...], Any]]:
    """Constructor keywords of ``cls``: ``name -> (accepted types, default)``.

    The ``__init__`` of ``cls`` and, while it takes ``**kwargs``, those up its MRO.

    The accepted types come from the annotations (``int``, ``float``, ``bool``, ``str``, their
    ``| None`` forms; anything else accepts any value); the default is
    ``inspect.Parameter.empty`` for a required keyword. ``skip`` names are left out.
    """
    schema: dict[str, tuple[tuple[Any, ...], Any]] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        if klass is object:
            break
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - unresolvable annotations accept anything
            hints = {}
        for pname, param in inspect.signature(init).parameters.items():
            if (pname == "self" or pname in skip or pname in schema
                    or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)):
                continue
            hint = hints.get(pname, Any)
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                accepted = tuple(typing.get_args(hint))
            else:
                accepted = (hint,)
            schema[pname] = (accepted, param.default)
        params = inspect.signature(init).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break  # this __init__ passes nothing further up
    return schema


def type_ok(value: Any, accepted: tuple[Any, ...]) -> bool:
    """Whether ``value`` fits one of ``accepted`` (``float`` also takes an ``int``; a ``bool``
    is never an ``int``; unknown annotation types accept anything)."""
    for t in accepted:
        if t is type(None):
            if value is None:
                return True
        elif t is bool:
            if isinstance(value, bool):
                return True
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif t is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True
        elif t is str:
            if isinstance(value, str):
                return True
        else:
            return True
    return False


def type_name(accepted: tuple[Any, ...]) -> str:
    """``"float | None"``-style name of accepted types."""
    return " | ".join("None" if t is type(None) else getattr(t, "__name__", str(t)) for t in accepted)


def check_kwargs(where: str, schema: Mapping[str, tuple[tuple[Any, ...], Any]],
                 params: Mapping[str, Any], *, require: bool = True) -> dict[str, Any]:
    """Check ``params`` against a :func:`keyword_schema`; return them with ints made floats
    where only ``float`` is accepted.

    Parameters
    ----------
    where : str
        Config path of the parameters in messages (e.g. ``"defense.krum"``).
    schema : mapping
        From :func:`keyword_schema`.
    params : mapping
        The given parameters.
    require : bool
        Report required keywords that are missing.

    Raises
    ------
    ConfigError
        Unknown parameter (with "did you mean"), ill-typed value, or missing required one.
    """
    accepted_names = ", ".join(schema) if schema else "(none)"
    for key, value in params.items():
        if key not in schema:
            raise ConfigError(f"{where}: unknown parameter {key!r}{suggestion(key, schema)}; "
                              f"accepted: {accepted_names}")
        accepted, _ = schema[key]
        if not type_ok(value, accepted):
            raise ConfigError(f"{where}.{key}={value!r}: expected {type_name(accepted)}, "
                              f"got {type(value).__name__}")
    if require:
        for key, (_, default) in schema.items():
            if default is inspect.Parameter.empty and key not in params:
                raise ConfigError(f"{where}.{key} is required (parameters: {accepted_names})")
    return {k: float(v) if float in schema[k][0] and int not in schema[k][0]
            and isinstance(v, int) and not isinstance(v, bool) else v for k, v in params.items()}
