"""SASS (Zhang et al., "Scenario-Adaptive and Self-Supervised Model for Multi-Scenario
Personalized Recommendation", CIKM 2022, arXiv 2208.11457) as a centralized baseline with its
four comparison variants: model (:mod:`.model`), losses (:mod:`.losses`), scenario data on
:mod:`fedrec.data.domains` (:mod:`.data`) and the two-stage trainer (:mod:`.trainer`). Run it
with ``model.name: sass`` and ``mode: centralized``.
"""

from fedrec.baselines.sass.losses import bce_with_negatives, info_nce, sampled_softmax
from fedrec.baselines.sass.model import SASS, VARIANTS, Tower

__all__ = ["SASS", "VARIANTS", "Tower", "bce_with_negatives", "info_nce", "sampled_softmax"]
