"""PMGT's graph transformer: per-node modality fusion, the diversity-promoting attention, and
the two pre-training heads (graph-structure and masked node-feature reconstruction).

Liu et al., ACM MM 2021 (arXiv 2010.12284); official code ``stephenliu0423/PMGT``
(``MModal_encoder.py``, ``PMGT_model.py``, ``EgoGraph_encoder.py``, ``utils/loss_fn.py``), which
this module follows:

* fusion (``AttentionEncoder``): each modality is L2-normalised and projected to ``hidden``;
  gate ``g = softmax(W₂ tanh([v₁; …; v_M]))``; node vector ``Σ_m g_m v_m``;
* input sequence ``[ego, n₁ … n_k]`` + learned role embedding (ego 1, neighbour 0) + learned
  position embedding, LayerNorm, dropout; BERT layers (post-LN, GELU);
* attention of every head: ``P = (1 − α) softmax(QKᵀ/√d_h) + α softmax(1 − cos(D_i, D_j) + δ_ij)``
  with ``D`` a separate linear "distance" projection of the layer input (``α`` = 0.2 in the
  code; ``α = 0`` is standard attention); the second term puts weight on *dissimilar* nodes;
* pooler = linear layer on the ego output; the item representation is its L2 normalisation;
* graph-structure reconstruction: ``logit = cos(pooled_seed, pooled_other)`` for a sampled
  neighbour (label 1) and non-neighbour (label 0), sigmoid BCE;
* masked node-feature reconstruction: a linear layer from ``hidden`` to the raw feature size
  at the masked context positions (offset 1 for the ego), MSE against the raw concatenated
  features of the original nodes; total ``L = L_GSR + β L_NFR``.

Our choice [INF]: a [MASK] node has all-zero raw features (the code looks up node id −1).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def diversity_attention(q: torch.Tensor, k: torch.Tensor, d: torch.Tensor,
                        alpha: float) -> torch.Tensor:
    """PMGT's mixed attention probabilities (module docstring).

    Parameters
    ----------
    q, k, d : Tensor [B, H, L, d_h]
        Queries, keys and the "distance" projection.
    alpha : float
        Weight of the diversity term (0 gives standard attention).

    Returns
    -------
    Tensor [B, H, L, L]
        Rows sum to 1.
    """
    std = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    if alpha == 0:
        return std
    dn = F.normalize(d, dim=-1)
    eye = torch.eye(d.shape[-2], dtype=d.dtype, device=d.device)
    div = torch.softmax(1.0 - dn @ dn.transpose(-1, -2) + eye, dim=-1)
    return (1.0 - alpha) * std + alpha * div


class Layer(nn.Module):
    """One BERT layer with :func:`diversity_attention`."""

    def __init__(self, hidden: int, heads: int, inner: int, dropout: float, alpha: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"model.hidden={hidden}: expected a multiple of model.heads={heads}")
        self.heads, self.alpha = heads, alpha
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.dist = nn.Linear(hidden, hidden)
        self.out, self.ln1 = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=1e-12)
        self.ff = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.ln2, self.drop = nn.LayerNorm(hidden, eps=1e-12), nn.Dropout(dropout)
        #: the last forward's attention probabilities [B, H, L, L] (for inspection)
        self.last_attention: torch.Tensor | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        return x.view(b, n, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, hidden]`` → ``[B, L, hidden]``."""
        p = diversity_attention(self._split(self.q(x)), self._split(self.k(x)),
                                self._split(self.dist(x)), self.alpha)
        self.last_attention = p.detach()
        ctx = (self.drop(p) @ self._split(self.v(x))).transpose(1, 2).reshape(x.shape)
        a = self.ln1(x + self.drop(self.out(ctx)))
        return self.ln2(a + self.drop(self.ff(a)))


class Fusion(nn.Module):
    """Per-node gated fusion of ``M`` modalities (module docstring)."""

    def __init__(self, dims: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.dims = dims
        self.proj = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.gate = nn.Linear(hidden * len(dims), len(dims))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """``[..., Σ dims]`` raw features → ``[..., hidden]``."""
        parts = torch.split(raw, list(self.dims), dim=-1)
        vs = [p(F.normalize(x, dim=-1)) for p, x in zip(self.proj, parts, strict=True)]
        g = torch.softmax(self.gate(torch.tanh(torch.cat(vs, -1))), dim=-1)
        return sum(g[..., m:m + 1] * v for m, v in enumerate(vs))


class GraphTransformer(nn.Module):
    """PMGT's encoder of an ego node with its ordered context, plus the pre-training heads.

    Parameters
    ----------
    features : Tensor [n_nodes, Σ dims]
        Raw node features (modalities concatenated in the order of ``dims``).
    dims : tuple of int
        Size of every modality.
    hidden, heads, layers, inner : int
        Transformer sizes (code: 128, 2, 2, 64).
    context : int
        Context length ``k``.
    dropout, alpha : float
        Dropout; diversity weight.
    """

    def __init__(self, features: torch.Tensor, dims: tuple[int, ...], hidden: int, heads: int,
                 layers: int, inner: int, context: int, dropout: float, alpha: float) -> None:
        super().__init__()
        # row 0 = [MASK] (zeros); node i is row i + 1
        self.register_buffer("raw", torch.cat([torch.zeros(1, features.shape[1]), features]))
        self.fusion = Fusion(dims, hidden)
        self.role = nn.Embedding(2, hidden)
        self.pos = nn.Embedding(context + 1, hidden)
        self.ln, self.drop = nn.LayerNorm(hidden, eps=1e-12), nn.Dropout(dropout)
        self.layers = nn.ModuleList(Layer(hidden, heads, inner, dropout, alpha)
                                    for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.recon = nn.Linear(hidden, features.shape[1])

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``seq`` ``[B, 1 + k]`` node ids (ego first, −1 = [MASK]).

        Returns
        -------
        pooled : Tensor [B, hidden]
            L2-normalised item representation of the ego.
        states : Tensor [B, 1 + k, hidden]
            Sequence outputs.
        """
        x = self.fusion(self.raw[seq + 1])
        role = torch.zeros_like(seq)
        role[:, 0] = 1
        x = x + self.role(role) + self.pos(torch.arange(seq.shape[1], device=seq.device))
        h = self.drop(self.ln(x))
        for layer in self.layers:
            h = layer(h)
        return F.normalize(self.pooler(h[:, 0]), dim=-1), h


def structure_loss(seed: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Graph-structure reconstruction: BCE of the cosine logits, neighbour 1, non-neighbour 0
    (inputs are L2-normalised, so the dot product is the cosine)."""
    lp, ln = (seed * pos).sum(-1), (seed * neg).sum(-1)
    return 0.5 * (F.binary_cross_entropy_with_logits(lp, torch.ones_like(lp))
                  + F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln)))


def feature_loss(recon: torch.Tensor, positions: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    """Masked node-feature reconstruction: MSE at the masked context positions only.

    Parameters
    ----------
    recon : Tensor [B, 1 + k, F]
        Reconstructed features of every sequence position.
    positions : Tensor [B, m]
        Masked context positions (0-based in the context; the ego is position 0 of ``recon``).
    targets : Tensor [B, m, F]
        Raw features of the original nodes.
    """
    rows = torch.arange(len(recon), device=recon.device)[:, None]
    return F.mse_loss(recon[rows, positions + 1], targets)
