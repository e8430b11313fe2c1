"""Registry of attacks: name → class, and construction from the ``attack`` config section."""

from __future__ import annotations

import inspect
from typing import Any

from attacks.base import Attack, NoAttack
from fedrec.errors import ConfigError

ATTACKS: dict[str, type[Attack]] = {NoAttack.name: NoAttack}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator adding an attack to :data:`ATTACKS`."""
    ATTACKS[cls.name] = cls
    return cls


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
        Unknown attack or parameter.
    """
    if name not in ATTACKS:
        raise ConfigError(f"attack.name={name!r}: expected one of {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    allowed = attack_params(cls)
    for key in params:
        if key not in allowed:
            raise ConfigError(f"attack.params.{key}: not a parameter of {name} "
                              f"(accepted: {', '.join(a for a in allowed if a != 'scale')})")
    try:
        return cls(scale=scale, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"attack.params: {exc}") from None
