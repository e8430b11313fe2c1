"""BERT4Rec: bidirectional transformer trained with the cloze objective.

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations
from Transformer", CIKM 2019 (arXiv 1904.06690). Items of a training sequence are masked with
probability ``mask_prob`` (80 % replaced by the mask token, 10 % by a random item, 10 % kept) and
predicted with a full-softmax cross-entropy; at inference the mask token is appended to the
history and its output scores the next item. Post-LN blocks with GELU feed-forward (4d), and the
output head ``LN(GELU(W h)) E^T + b`` tied to the item embeddings, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.data.batching import pad_left, to_tensor
from fedrec.data.random import stream_key, uniform_floats, uniform_ints
from fedrec.models.base import Batch, SequentialRecommender, init_weights
from fedrec.models.transformer import Dropout, FeedForward, SelfAttention, attention_mask


class BERTBlock(nn.Module):
    """Post-LN transformer block: ``x = LN(x + MHA(x)); x = LN(x + FFN(x))``."""

    def __init__(self, d: int, heads: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.attn = SelfAttention(d, heads, attn_dropout)
        self.ln_attn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, dropout, hidden=4 * d, act="gelu")
        self.ln_ffn = nn.LayerNorm(d)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` [B, L, d]."""
        x = self.ln_attn(x + self.drop(self.attn(x, x, allowed)))
        return self.ln_ffn(x + self.ffn(x))


class BERT4Rec(SequentialRecommender):
    """BERT4Rec (see module docstring).

    Parameters
    ----------
    n_items, max_len
        See :class:`~fedrec.models.base.SequentialRecommender`. The mask token is
        ``n_items + 1``.
    hidden, blocks, heads, dropout, attn_dropout
        Transformer size.
    mask_prob : float
        Cloze masking probability.
    """

    item_param_names = ("item_emb.weight", "out_bias")

    def __init__(
        self,
        n_items: int,
        max_len: int = 50,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
        attn_dropout: float | None = None,
        mask_prob: float = 0.15,
        loss_type: str = "ce",
        n_neg: int = 1,
    ) -> None:
        super().__init__(n_items, max_len, "ce", n_neg)
        if loss_type != "ce":
            raise ValueError("model.loss: BERT4Rec is trained with the cloze loss; use 'ce'")
        self.hidden = hidden
        self.mask_prob = mask_prob
        self.mask_token = n_items + 1
        self.item_emb = nn.Embedding(n_items + 2, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.ln_emb = nn.LayerNorm(hidden)
        self.emb_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(
            BERTBlock(hidden, heads, dropout, dropout if attn_dropout is None else attn_dropout)
            for _ in range(blocks)
        )
        self.head = nn.Linear(hidden, hidden)
        self.ln_head = nn.LayerNorm(hidden)
        self.out_bias = nn.Parameter(torch.zeros(n_items + 1))
        init_weights(self)

    def encode(self, inputs: torch.Tensor, input_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional hidden states, passed through the output head, ``[B, L, d]``.

        ``input_embeddings`` replaces the item-embedding lookup (see SASRec).
        """
        n = inputs.shape[-1]
        if n > self.max_len:
            raise ValueError(f"input width {n} exceeds model.max_len={self.max_len}")
        keep = (inputs > 0).unsqueeze(-1)
        pos = torch.arange(self.max_len - n, self.max_len, device=inputs.device)
        emb = F.embedding(inputs, self.item_emb.weight, padding_idx=0) if input_embeddings is None else input_embeddings
        x = emb + self.pos_emb(pos)
        x = self.emb_drop(self.ln_emb(x)) * keep
        allowed = attention_mask(inputs, causal=False)
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.ln_head(F.gelu(self.head(x)))

    def output_bias(self) -> torch.Tensor:
        """Per-item output bias."""
        return self.out_bias

    def prepare_batch(self, seqs: Sequence[np.ndarray], keys: np.ndarray) -> Batch:
        """Cloze batch: mask items of each (truncated) training sequence.

        Masking decisions come from each row's random stream, anchored at the right end; a
        sequence that drew no mask gets its last item masked.
        """
        seq = pad_left(seqs, self.max_len)
        width = seq.shape[1]
        keys = np.asarray(keys, dtype=np.uint64)
        u = uniform_floats(keys, (self.max_len,))[:, -width:]
        kind = uniform_floats(stream_key(keys, 1), (self.max_len,))[:, -width:]
        rand_items = uniform_ints(stream_key(keys, 2), (self.max_len,), 1, self.n_items + 1)
        rand_items = rand_items[:, -width:]
        real = seq > 0
        masked = (u < self.mask_prob) & real
        none = ~masked.any(axis=1)
        masked[none, -1] = real[none, -1]
        inputs = seq.copy()
        inputs[masked & (kind < 0.8)] = self.mask_token
        swap = masked & (kind >= 0.8) & (kind < 0.9)
        inputs[swap] = rand_items[swap]
        targets = np.where(masked, seq, 0)
        return {"inputs": to_tensor(inputs), "targets": to_tensor(targets)}

    def last_hidden(self, seqs: torch.Tensor) -> torch.Tensor:
        """Append the mask token to each history and return its hidden state."""
        seqs = seqs[:, -(self.max_len - 1):] if self.max_len > 1 else seqs[:, :0]
        mask = torch.full((seqs.shape[0], 1), self.mask_token, dtype=seqs.dtype, device=seqs.device)
        return self.encode(torch.cat([seqs, mask], dim=1))[:, -1]
