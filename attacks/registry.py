"""Registry of attacks: name → class, named configurations, and construction from the config.

:data:`ATTACKS` is the explicit table of every attack class (the registry idiom of
:mod:`fedrec.registry`: add an attack by importing its class here and listing it; attack modules
never import this one). :data:`ALIASES` holds named configurations: a name that builds a
registered class with some parameters fixed (``s_fsr`` = ``dvfsr`` with ``implicit_weight: 0``).
"""

from __future__ import annotations

from typing import Any

from attacks.adaptive import AdaptiveDVFSR, AdaptivePipAttack
from attacks.alie import ALIE
from attacks.approx_users import ApproximatedUsersAttack
from attacks.base import Attack, NoAttack
from attacks.dvfsr import DVFSR
from attacks.eb import ExplicitBoosting
from attacks.fabricated import BandwagonAttack, PopularAttack, RandomAttack
from attacks.fang import FangKrum, FangTrimmedMean
from attacks.fedrecattack import FedRecAttack
from attacks.flipping import LabelFlip
from attacks.ipm import IPM
from attacks.minmax import MinMax, MinSum
from attacks.pipattack import PipAttack
from attacks.psmu import PSMU
from fedrec.errors import ConfigError
from fedrec.registry import keyword_schema, lookup, suggestion, unknown_name

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        NoAttack,
        DVFSR,
        RandomAttack,
        PopularAttack,
        BandwagonAttack,
        ExplicitBoosting,
        PipAttack,
        FedRecAttack,
        ApproximatedUsersAttack,
        PSMU,
        ALIE,
        IPM,
        MinMax,
        MinSum,
        FangKrum,
        FangTrimmedMean,
        LabelFlip,
        AdaptiveDVFSR,
        AdaptivePipAttack,
    )
}

#: alias → (registered class name, fixed parameters)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "s_fsr": ("dvfsr", {"implicit_weight": 0.0}),  # DV-FSR's explicit part only
    "c_fsr": ("dvfsr", {"explicit_weight": 0.0}),  # DV-FSR's implicit part only
    # The reference code's effective objective: its substitution step (``Substitute`` in
    # USTCAGI/DV-FSR) leaves the CE(target) gradient of the last search in the model's
    # parameter gradients, so it is uploaded too.
    "dvfsr_ref": ("dvfsr", {"leak_substitution_grad": True}),
    "a_ra": ("a_hum", {"mining_steps": 0}),  # A-ra: A-hum without hard-user mining
    # the reference-code DV-FSR, constrained to the assumed defense's checks
    "dvfsr_ref_adaptive": ("dvfsr_adaptive", {"leak_substitution_grad": True}),
}


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
        raise unknown_name("attack.name", name, attack_names())
    return lookup(ATTACKS, name, "attack.name"), {}


def required_knowledge(name: str) -> tuple[str, ...]:
    """Knowledge keys attack ``name`` assumes (empty for unknown names; see ``Attack.requires``)."""
    if name not in ATTACKS and name not in ALIASES:
        return ()
    return resolve(name)[0].requires


def attack_params(cls: type[Attack]) -> list[str]:
    """Keyword parameters an attack accepts (its constructor's keywords over the MRO)."""
    return list(keyword_schema(cls))


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
            raise ConfigError(f"attack.params.{key}: not a parameter of {name}"
                              f"{suggestion(key, allowed)} (accepted: "
                              f"{', '.join(a for a in allowed if a != 'scale')})")
    try:
        attack = cls(scale=scale, **{**params, **fixed})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"attack.params: {exc}") from None
    attack.name = name  # type: ignore[misc]  # an alias reports its own name
    return attack
