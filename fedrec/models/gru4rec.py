"""GRU4Rec: recurrent next-item recommendation.

Hidasi, Karatzoglou, Baltrunas & Tikk, "Session-based Recommendations with Recurrent Neural
Networks", ICLR 2016 (arXiv 1511.06939), used here (as in most sequential-recommendation
benchmarks) on whole user histories: item embedding → GRU → dropout, scored against the shared
item embeddings with the same losses as SASRec. The GRU is written out (one matrix product for
the input gates of all steps, then the recurrence) so it works under ``torch.func.vmap``;
the hidden state is held at zero across left padding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fedrec.models.base import SequentialRecommender, init_weights
from fedrec.models.transformer import Dropout


class GRULayer(nn.Module):
    """Single GRU layer (Cho et al., 2014) over ``[B, L, d_in]`` with a padding mask."""

    def __init__(self, d_in: int, d: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(d_in, 3 * d)
        self.w_h = nn.Linear(d, 3 * d)
        self.d = d

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Run the recurrence; ``keep`` [B, L, 1] zeroes the state at padding positions."""
        gates_in = self.w_in(x)
        h = x.new_zeros(x.shape[0], self.d)
        outs = []
        for t in range(x.shape[1]):
            gi = gates_in[:, t]
            gh = self.w_h(h)
            r = torch.sigmoid(gi[:, : self.d] + gh[:, : self.d])
            z = torch.sigmoid(gi[:, self.d: 2 * self.d] + gh[:, self.d: 2 * self.d])
            n = torch.tanh(gi[:, 2 * self.d:] + r * gh[:, 2 * self.d:])
            h = ((1 - z) * n + z * h) * keep[:, t]
            outs.append(h)
        return torch.stack(outs, dim=1)


class GRU4Rec(SequentialRecommender):
    """GRU4Rec (see module docstring).

    Parameters
    ----------
    n_items, max_len, loss_type, n_neg
        See :class:`~fedrec.models.base.SequentialRecommender`.
    hidden : int
        Embedding and GRU width.
    layers : int
        Stacked GRU layers.
    dropout : float
        Dropout on embeddings and GRU output.
    """

    sparse_item_grads = True  # item_emb is read only by id lookups (inputs, targets, negatives)

    def __init__(
        self,
        n_items: int,
        max_len: int = 50,
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.2,
        loss_type: str = "bce",
        n_neg: int = 1,
    ) -> None:
        super().__init__(n_items, max_len, loss_type, n_neg)
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.grus = nn.ModuleList(GRULayer(hidden, hidden) for _ in range(layers))
        self.drop = Dropout(dropout)
        init_weights(self)
        for gru in self.grus:  # orthogonal-ish recurrent init keeps the recurrence stable
            nn.init.normal_(gru.w_h.weight, std=1.0 / math.sqrt(hidden))

    def encode(self, inputs: torch.Tensor, input_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``[B, L, d]`` (``input_embeddings`` replaces the lookup, see SASRec)."""
        keep = (inputs > 0).unsqueeze(-1).to(torch.float32)
        emb = F.embedding(inputs, self.item_emb.weight, padding_idx=0) if input_embeddings is None else input_embeddings
        x = self.drop(emb)
        for gru in self.grus:
            x = gru(x, keep)
        return self.drop(x)
