"""GradCraft (Bai et al., KDD 2024, arXiv:2407.19682) and multi-objective gradient combiners.

A reusable gradient combiner (:mod:`.combiners`), a generic multi-loss backward step
(:mod:`.step`), and a multi-task recommendation setting to show it on: models (:mod:`.mtl`),
data (:mod:`.data`), metrics (:mod:`.metrics`) and a training entry point (:mod:`.train`).
"""

from fedrec.baselines.gradcraft.combiners import (
    COMBINERS,
    Combiner,
    available_combiners,
    equal_weighting,
    get_combiner,
    gradcraft,
    mgda,
    pcgrad,
)
from fedrec.baselines.gradcraft.metrics import auc, gauc
from fedrec.baselines.gradcraft.step import multi_objective_backward
from fedrec.baselines.gradcraft.train import MultiTaskConfig, train_multitask

__all__ = [
    "COMBINERS",
    "Combiner",
    "MultiTaskConfig",
    "auc",
    "available_combiners",
    "equal_weighting",
    "gauc",
    "get_combiner",
    "gradcraft",
    "mgda",
    "multi_objective_backward",
    "pcgrad",
    "train_multitask",
]
