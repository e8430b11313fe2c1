"""CrossTimeNet (Cheng et al., "Cross-Domain Pre-training with Language Models for Transferable
Time Series Representations", WSDM 2025, arXiv 2403.12372; code: GitHub
``Mingyue-Cheng/CrossTimeNet``) as a centralized baseline: domains (:mod:`.data`), model with
the joint vocabulary, masking and heads (:mod:`.model`), the staged trainer (tokenizer,
pre-training, fine-tuning; :mod:`.trainer`) and a classical reference, 1-NN with DTW
(:mod:`.dtw`). Run it with ``mode: centralized`` and ``model.name: crosstimenet``
(``experiments/centralized/crosstimenet_ucr.yaml``).
"""

from fedrec.baselines.crosstimenet.model import CrossTimeNet, Vocabulary, mask_tokens

__all__ = ["CrossTimeNet", "Vocabulary", "mask_tokens"]
