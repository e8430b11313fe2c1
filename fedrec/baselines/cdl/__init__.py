"""CDL (Lei et al., "Comparative Deep Learning of Hybrid Representations for Image
Recommendations", CVPR 2016, arXiv 1604.01252) as a centralized baseline with its naive
pointwise variant and BPR-MF: model (:mod:`.model`), warm/cold data of the MovieLens and digits
settings (:mod:`.data`) and trainer (:mod:`.trainer`). Run it with ``model.name: cdl`` and
``mode: centralized``.
"""

from fedrec.baselines.cdl.model import CDL, VARIANTS, comparative_loss, pairwise_distance

__all__ = ["CDL", "VARIANTS", "comparative_loss", "pairwise_distance"]
