"""SITN (Sun et al., "Self-Supervised Interest Transfer Network via Prototypical Contrastive
Learning for Recommendation", AAAI 2023, arXiv 2302.14438) as a centralized cross-domain
baseline: losses and k-means (:mod:`.losses`), model (:mod:`.model`), trainer and evaluation
(:mod:`.trainer`). Run it with ``mode: centralized``, ``model.name: sitn`` and a ``domains``
section (:mod:`fedrec.data.domains`).
"""

from fedrec.baselines.sitn.losses import bce_sampled, instance_nce, kmeans, proto_nce, softmax_ce
from fedrec.baselines.sitn.model import SITN, VARIANTS

__all__ = ["SITN", "VARIANTS", "bce_sampled", "instance_nce", "kmeans", "proto_nce", "softmax_ce"]
