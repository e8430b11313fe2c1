"""GCL4SR (Zhang et al., "Enhancing Sequential Recommendation with Graph Contrastive Learning",
IJCAI 2022, arXiv 2205.14837) as a centralized baseline: item transition graph and sampler
(:mod:`.graph`), GCN / GraphSAGE propagation (:mod:`.gnn`), losses (:mod:`.losses`), prefix
samples (:mod:`.data`), model (:mod:`.model`) and trainer (:mod:`.trainer`). Run it with
``model.name: gcl4sr`` and ``mode: centralized``.
"""

from fedrec.baselines.gcl4sr.data import PrefixSamples, expand_prefixes
from fedrec.baselines.gcl4sr.graph import WITG, build_witg, sample_neighbors, transition_counts
from fedrec.baselines.gcl4sr.losses import info_nce, mmd_across_batch, mmd_per_sequence, nt_xent
from fedrec.baselines.gcl4sr.model import GCL4SR, PRESETS

__all__ = [
    "GCL4SR",
    "PRESETS",
    "WITG",
    "PrefixSamples",
    "build_witg",
    "expand_prefixes",
    "info_nce",
    "mmd_across_batch",
    "mmd_per_sequence",
    "nt_xent",
    "sample_neighbors",
    "transition_counts",
]
