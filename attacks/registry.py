"""Registry of attacks: name → class, named configurations, and construction from the config.

Besides classes (``register``), the registry holds *aliases*: a name that builds a registered
class with some parameters fixed (``s_fsr`` = ``dvfsr`` with ``implicit_weight: 0``). Every
attack module is imported at the bottom of this file, so :func:`build_attack` sees all of them.
"""

from __future__ import annotations

import inspect
from typing import Any

from attacks.base import Attack, NoAttack
from fedrec.errors import ConfigError

ATTACKS: dict[str, type[Attack]] = {NoAttack.name: NoAttack}

#: alias → (registered class name, fixed parameters)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator adding an attack to :data:`ATTACKS`."""
    ATTACKS[cls.name] = cls
    return cls


def register_alias(alias: str, base: str, **fixed: Any) -> None:
    """Register ``alias`` as attack ``base`` with parameters ``fixed`` (which users cannot set)."""
    if base not in ATTACKS:
        raise KeyError(f"alias {alias!r}: unknown base attack {base!r}")
    ALIASES[alias] = (base, dict(fixed))


def attack_names() -> list[str]:
    """Every name :func:`build_attack` accepts."""
    return sorted(set(ATTACKS) | set(ALIASES))


def resolve(name: str) -> tuple[type[Attack], dict[str, Any]]:
    """Class and fixed parameters of attack (or alias) ``name``.

    Raises
    ------
    ConfigError
        Unknown name.
    """
    if name in ALIASES:
        base, fixed = ALIASES[name]
        return ATTACKS[base], dict(fixed)
    if name not in ATTACKS:
        raise ConfigError(f"attack.name={name!r}: expected one of {', '.join(attack_names())}")
    return ATTACKS[name], {}


def required_knowledge(name: str) -> tuple[str, ...]:
    """Knowledge keys attack ``name`` assumes (empty for unknown names; see ``Attack.requires``)."""
    if name not in ATTACKS and name not in ALIASES:
        return ()
    return resolve(name)[0].requires


def attack_params(cls: type[Attack]) -> list[str]:
    """Keyword parameters an attack accepts."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names:
                    names.append(p.name)
    return names


def build_attack(name: str, params: dict[str, Any], scale: float = 1.0) -> Attack:
    """Instantiate attack ``name`` with ``params`` (``attack.params``) and ``scale``.

    Raises
    ------
    ConfigError
        Unknown attack or parameter, a parameter the alias fixes, or a bad value.
    """
    cls, fixed = resolve(name)
    allowed = [a for a in attack_params(cls) if a not in fixed]
    for key in params:
        if key in fixed:
            raise ConfigError(f"attack.params.{key}: fixed to {fixed[key]!r} by {name!r} "
                              f"(use the base attack {ALIASES[name][0]!r} to change it)")
        if key not in allowed:
            raise ConfigError(f"attack.params.{key}: not a parameter of {name} "
                              f"(accepted: {', '.join(a for a in allowed if a != 'scale')})")
    try:
        attack = cls(scale=scale, **{**params, **fixed})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"attack.params: {exc}") from None
    attack.name = name  # type: ignore[misc]  # an alias reports its own name
    return attack


# Attack modules register themselves on import (cheap: torch/numpy are already loaded).
from attacks import (  # noqa: E402,F401  (imported for registration)
    approx_users,
    dvfsr,
    eb,
    fabricated,
    fedrecattack,
    pipattack,
    psmu,
)
