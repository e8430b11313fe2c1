"""Sequential recommenders behind one contract (:mod:`fedrec.models.base`) and a registry."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from fedrec.errors import ConfigError
from fedrec.models.base import SequentialRecommender
from fedrec.models.bert4rec import BERT4Rec
from fedrec.models.gru4rec import GRU4Rec
from fedrec.models.sasrec import SASRec

MODELS: dict[str, type[SequentialRecommender]] = {
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "gru4rec": GRU4Rec,
}

#: Models defined outside this package (centralized baselines), imported on first use as
#: ``"module:ClassName"``.
LAZY_MODELS: dict[str, str] = {
    "gcl4sr": "fedrec.baselines.gcl4sr.model:GCL4SR",
}


def model_class(name: str) -> type[SequentialRecommender]:
    """The class registered under ``name`` (imports lazily registered ones)."""
    if name not in MODELS and name in LAZY_MODELS:
        module, cls = LAZY_MODELS[name].split(":")
        MODELS[name] = getattr(importlib.import_module(module), cls)
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r}: expected one of {', '.join(all_model_names())}")
    return MODELS[name]


def all_model_names() -> list[str]:
    """Names of every registered model."""
    return sorted(set(MODELS) | set(LAZY_MODELS))


def model_params(name: str) -> list[str]:
    """Keyword parameters a model accepts (besides ``n_items``)."""
    sig = inspect.signature(model_class(name).__init__)
    return [p for p in sig.parameters if p not in ("self", "n_items")]


def build_model(name: str, n_items: int, **params: Any) -> SequentialRecommender:
    """Instantiate a registered model.

    Raises
    ------
    ConfigError
        Unknown model name or parameter.
    """
    cls = model_class(name)
    allowed = model_params(name)
    for key in params:
        if key not in allowed:
            raise ConfigError(
                f"model.{key}: not a parameter of {name} (accepted: {', '.join(allowed)})"
            )
    try:
        return cls(n_items=n_items, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


__all__ = ["MODELS", "BERT4Rec", "GRU4Rec", "SASRec", "SequentialRecommender", "build_model"]
