"""SASRec: Self-Attentive Sequential Recommendation.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (arXiv 1808.09781).
Causal transformer over item embeddings (scaled by sqrt(d)) plus learned positions; pre-LN
blocks in the layout of the widely used PyTorch port (the query is layer-normalised, keys and
values are not); the final hidden state is scored against the shared item embeddings.

Position ids are anchored at the right end (the most recent item always has position
``max_len - 1``), which equals left-padding every sequence to ``max_len`` but lets a batch be
padded only to its longest member. Padding keys are masked out of attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fedrec.models.base import SequentialRecommender, init_weights
from fedrec.models.transformer import Dropout, FeedForward, SelfAttention, attention_mask


class SASRecBlock(nn.Module):
    """One SASRec block: ``Q = LN(x); x = Q + MHA(Q, x); x = LN(x); x = x + FFN(x)``."""

    def __init__(self, d: int, heads: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d, eps=1e-8)
        self.attn = SelfAttention(d, heads, attn_dropout)
        self.ln_ffn = nn.LayerNorm(d, eps=1e-8)
        self.ffn = FeedForward(d, dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` [B, L, d] (no dropout on the attention output)."""
        q = self.ln_attn(x)
        x = q + self.attn(q, x, allowed)
        x = self.ln_ffn(x)
        return x + self.ffn(x)


class SASRec(SequentialRecommender):
    """SASRec (see module docstring).

    Parameters
    ----------
    n_items, max_len, loss_type, n_neg
        See :class:`~fedrec.models.base.SequentialRecommender`.
    hidden : int
        Embedding and model width.
    blocks : int
        Number of transformer blocks.
    heads : int
        Attention heads.
    dropout : float
        Dropout on embeddings and in the feed-forward branch.
    attn_dropout : float
        Dropout on attention weights (defaults to ``dropout``).
    """

    sparse_item_grads = True  # item_emb is read only by id lookups (inputs, targets, negatives)

    def __init__(
        self,
        n_items: int,
        max_len: int = 50,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        attn_dropout: float | None = None,
        loss_type: str = "bce",
        n_neg: int = 1,
    ) -> None:
        super().__init__(n_items, max_len, loss_type, n_neg)
        self.hidden = hidden
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(hidden, heads, dropout, dropout if attn_dropout is None else attn_dropout)
            for _ in range(blocks)
        )
        self.ln_out = nn.LayerNorm(hidden, eps=1e-8)
        init_weights(self)

    def encode(self, inputs: torch.Tensor, input_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Causal hidden states ``[B, L, d]``.

        ``input_embeddings`` ``[B, L, d]`` replaces the item-embedding lookup of ``inputs``
        (which still defines padding); attacks use it to take gradients w.r.t. the input.
        """
        n = inputs.shape[-1]
        if n > self.max_len:
            raise ValueError(f"input width {n} exceeds model.max_len={self.max_len}")
        keep = (inputs > 0).unsqueeze(-1)
        emb = F.embedding(inputs, self.item_emb.weight, padding_idx=0) if input_embeddings is None else input_embeddings
        x = emb * math.sqrt(self.hidden)
        pos = torch.arange(self.max_len - n, self.max_len, device=inputs.device)
        x = self.emb_drop(x + self.pos_emb(pos)) * keep
        allowed = attention_mask(inputs, causal=True)
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.ln_out(x)
