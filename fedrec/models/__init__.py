"""Sequential recommenders behind one contract (:mod:`fedrec.models.base`) and their registry
(:mod:`fedrec.models.registry`)."""

from __future__ import annotations

from fedrec.models.base import SequentialRecommender
from fedrec.models.bert4rec import BERT4Rec
from fedrec.models.gru4rec import GRU4Rec
from fedrec.models.registry import MODELS, all_model_names, build_model, model_class, model_params
from fedrec.models.sasrec import SASRec

__all__ = ["MODELS", "BERT4Rec", "GRU4Rec", "SASRec", "SequentialRecommender", "all_model_names",
           "build_model", "model_class", "model_params"]
