"""MG-BERT / PMGT (Liu et al., "Pre-training Graph Transformer with Multimodal Side Information
for Recommendation", ACM MM 2021, arXiv 2010.12284; code ``stephenliu0423/PMGT``) as a
centralized baseline: item graph and MCN sampler (:mod:`.graph`), graph transformer with the
diversity-promoting attention and the two reconstruction losses (:mod:`.encoder`), downstream
NCF (:mod:`.model`), data splits (:mod:`.data`) and the two-stage trainer (:mod:`.trainer`).
Run it with ``model.name: mgbert`` and ``mode: centralized``.
"""

from fedrec.baselines.mgbert.encoder import diversity_attention, feature_loss, structure_loss
from fedrec.baselines.mgbert.graph import build_item_graph, mask_context, mcn_context, multi_hop
from fedrec.baselines.mgbert.model import NCF, MGBert

__all__ = ["NCF", "MGBert", "build_item_graph", "diversity_attention", "feature_loss",
           "mask_context", "mcn_context", "multi_hop", "structure_loss"]
