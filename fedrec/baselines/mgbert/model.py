"""MG-BERT/PMGT pre-training followed by the downstream NCF, as one ``fedrec run`` model.

Liu, Yang, Lei, Wang, Tang, Zhang, Sun & Miao, "Pre-training Graph Transformer with Multimodal
Side Information for Recommendation", ACM MM 2021 (arXiv 2010.12284 v1: "A Pre-training
Strategy for Recommendation", model named MG-BERT); official code ``stephenliu0423/PMGT``.

Downstream model, as the code's ``down_rec/NCF.py``: user embedding (normal, std 0.01), item
embedding initialised from the pre-trained item vectors (``init: pretrained``; fine-tuned) or
normal with std 0.01 (``init: random``); ``[user; item]`` → ``ncf_layers`` halving ReLU layers
(2: 256 → 128 → 64 for ``hidden`` 128) → linear score; loss ``−Σ log₂ σ(s⁺ − s⁻)`` with one
uniformly sampled item the user has not trained on. Pre-training parts: :mod:`.graph`,
:mod:`.encoder`; the two stages: :mod:`.trainer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedrec.baselines.mgbert.encoder import GraphTransformer

INITS = ("pretrained", "random")


class NCF(nn.Module):
    """The downstream NCF (MLP variant) of the module docstring."""

    def __init__(self, n_users: int, n_items: int, dim: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user.weight, std=0.01)
        nn.init.normal_(self.item.weight, std=0.01)
        mods: list[nn.Module] = []
        width = 2 * dim
        for _ in range(layers):
            lin = nn.Linear(width, width // 2)
            nn.init.xavier_uniform_(lin.weight)
            mods += [nn.Dropout(dropout), lin, nn.ReLU()]
            width //= 2
        self.mlp = nn.Sequential(*mods)
        self.predict = nn.Linear(width, 1)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Scores of the pairs ``(u[b], i[b])``."""
        return self.predict(self.mlp(torch.cat([self.user(u), self.item(i)], -1))).squeeze(-1)

    def loss(self, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``−Σ log₂ σ(s⁺ − s⁻)`` (the code's BPR form)."""
        diff = self.forward(u, pos) - self.forward(u, neg)
        return -(nn.functional.logsigmoid(diff) / torch.log(torch.tensor(2.0))).sum()

    @torch.no_grad()
    def score_all(self, u: torch.Tensor) -> torch.Tensor:
        """``[len(u), n_items]`` scores of every item (the first layer split into its user and
        item halves, so no ``[U·I, 2·dim]`` concatenation is built)."""
        lin0 = self.mlp[1]
        dim = self.user.embedding_dim
        hu = self.user(u) @ lin0.weight[:, :dim].T + lin0.bias
        hi = self.item.weight @ lin0.weight[:, dim:].T
        h = torch.relu(hu[:, None, :] + hi[None, :, :])
        rest = self.mlp[3:]
        return self.predict(rest(h)).squeeze(-1)


class MGBert(nn.Module):
    """PMGT pre-training + NCF (``model.name: mgbert``); parts are built by :meth:`attach`.
    Keywords are ``model.hidden``/``heads``/``blocks``/``dropout`` and ``model.params.<key>``.
    """

    max_len = 1  # unused; the run context reads it

    def __init__(self, n_items: int = 0, dataset: str = "ml-100k", protocol: str = "random80",
                 init: str = "pretrained", hidden: int = 128, heads: int = 2, blocks: int = 2,
                 inner: int = 64, dropout: float = 0.0, alpha: float = 0.2, beta: float = 1.0,
                 context: int = 10, hops: tuple[int, ...] = (10, 5, 2), mask_prob: float = 0.2,
                 graph_threshold: int = 3, holdout_nodes: float = 0.1, pretrain_epochs: int = 30,
                 pretrain_lr: float = 1e-3, pretrain_batch: int = 256,
                 pretrain_weight_decay: float = 1e-4, ncf_layers: int = 2,
                 ncf_dropout: float = 0.0, sparse_max: int = 10,
                 synthetic: dict[str, int] | None = None) -> None:
        super().__init__()
        hops = tuple(hops)
        checks = {"params.init": (init in INITS, f"one of {', '.join(INITS)}"),
                  "params.alpha": (0 <= alpha <= 1, "in [0, 1]"),
                  "params.beta": (beta >= 0, ">= 0"),
                  "params.context": (context >= 1, ">= 1"),
                  "params.hops": (len(hops) >= 1 and all(h >= 1 for h in hops),
                                  "a non-empty list of positive integers"),
                  "params.mask_prob": (1 <= int(context * mask_prob) <= context,
                                       "with int(context * mask_prob) in 1..context"),
                  "params.holdout_nodes": (0 < holdout_nodes < 1, "in (0, 1)"),
                  "params.pretrain_epochs": (pretrain_epochs >= 0, ">= 0"),
                  "params.pretrain_lr": (pretrain_lr > 0, "> 0"),
                  "params.pretrain_batch": (pretrain_batch >= 2, ">= 2"),
                  "params.ncf_layers": (ncf_layers >= 1 and 2 * hidden >> ncf_layers >= 1,
                                        ">= 1 and at most log2(2 * hidden)"),
                  "params.sparse_max": (sparse_max >= 0, ">= 0")}
        for key, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"model.{key}={locals()[key.split('.')[-1]]!r}: "
                                 f"expected {expected}")
        self.dataset, self.protocol, self.init = dataset, protocol, init
        self.hidden, self.heads, self.blocks, self.inner = hidden, heads, blocks, inner
        self.dropout, self.alpha, self.beta = dropout, alpha, beta
        self.context, self.hops, self.mask_len = context, hops, int(context * mask_prob)
        self.graph_threshold, self.holdout_nodes = graph_threshold, holdout_nodes
        self.pretrain_epochs = pretrain_epochs if init == "pretrained" else 0
        self.pretrain_lr, self.pretrain_batch = pretrain_lr, pretrain_batch
        self.pretrain_weight_decay = pretrain_weight_decay
        self.ncf_layers, self.ncf_dropout, self.sparse_max = ncf_layers, ncf_dropout, sparse_max
        self.synthetic = dict(synthetic) if synthetic else None
        self.encoder: GraphTransformer | None = None
        self.ncf: NCF | None = None

    def attach(self, features: torch.Tensor, dims: tuple[int, ...], n_users: int) -> None:
        """Build the graph transformer over ``features`` and the NCF."""
        self.encoder = GraphTransformer(features, dims, self.hidden, self.heads, self.blocks,
                                        self.inner, self.context, self.dropout, self.alpha)
        self.ncf = NCF(n_users, len(features), self.hidden, self.ncf_layers, self.ncf_dropout)

    def make_trainer(self, ctx: Any) -> Any:
        """The two-stage trainer (:class:`fedrec.baselines.mgbert.trainer.MGBertTrainer`)."""
        from fedrec.baselines.mgbert.trainer import MGBertTrainer

        return MGBertTrainer(ctx)
