"""Registry of sequential recommenders: name → class (the idiom of :mod:`fedrec.registry`).

:data:`MODELS` is the explicit table; a centralized baseline whose module is heavy is listed as
``"module:Class"`` and imported on first use. Add a model by listing it here.
"""

from __future__ import annotations

from typing import Any

from fedrec.errors import ConfigError
from fedrec.models.base import SequentialRecommender
from fedrec.models.bert4rec import BERT4Rec
from fedrec.models.gru4rec import GRU4Rec
from fedrec.models.sasrec import SASRec
from fedrec.registry import keyword_schema, lookup, suggestion

MODELS: dict[str, type[SequentialRecommender] | str] = {
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "gru4rec": GRU4Rec,
    "gcl4sr": "fedrec.baselines.gcl4sr.model:GCL4SR",
    "sitn": "fedrec.baselines.sitn.model:SITN",
    "sass": "fedrec.baselines.sass.model:SASS",
    "crosstimenet": "fedrec.baselines.crosstimenet.model:CrossTimeNet",
    "cdl": "fedrec.baselines.cdl.model:CDL",
    "mgbert": "fedrec.baselines.mgbert.model:MGBert",
    "lavit": "fedrec.baselines.lavit.model:LaViT",
    "victor": "fedrec.baselines.victor.model:VICTOR",
}


def model_class(name: str) -> type[SequentialRecommender]:
    """The class registered under ``name`` (imports a ``"module:Class"`` entry).

    Raises
    ------
    ConfigError
        Unknown name, with "did you mean".
    """
    return lookup(MODELS, name, "model.name")


def all_model_names() -> list[str]:
    """Names of every registered model."""
    return sorted(MODELS)


def model_params(name: str) -> list[str]:
    """Keyword parameters a model accepts (besides ``n_items``)."""
    return list(keyword_schema(model_class(name), skip=("n_items",)))


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
            raise ConfigError(f"model.{key}: not a parameter of {name}{suggestion(key, allowed)} "
                              f"(accepted: {', '.join(allowed)})")
    try:
        return cls(n_items=n_items, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
