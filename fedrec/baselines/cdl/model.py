"""CDL: a dual-net (item-content and user sub-networks into one latent space) trained by
comparing two items against one user, with the naive pointwise variant and BPR-MF.

Lei, Liu, Li, Zha & Li, "Comparative Deep Learning of Hybrid Representations for Image
Recommendations", CVPR 2016 (arXiv 1604.01252). No public code.

Follows the paper (abstract, Fig. 2 and its caption): an image sub-network and a user
sub-network map items and user preferences into the same latent space; decisions use the
user–item distance there; training uses triples (user, positive item, negative item) in which
the two item branches are **one** network (identical weights); the difference of the two
distances feeds a cross-entropy loss against the label; "naive deep learning" (the same network
trained on single (user, item, label) pairs) is the comparison, and comparative training is
claimed to beat it because it draws on far more training examples at no extra network cost.

Our inference [INF] (the method section was not available to us):

* distance ``d(u, i) = ‖f_U(u) − f_I(i)‖₂``; comparative loss
  ``−log σ(d⁻ − d⁺) = softplus(d⁺ − d⁻)`` (the label is 1 for the preferred item placed first;
  swapping the items with the label flipped gives the same value); ranking by ascending ``d``;
* naive variant: ``p(u, i) = σ(b − d(u, i))`` with a learned scalar ``b``, BCE on each positive
  pair and one sampled negative pair (the same examples a triple uses, taken one at a time);
* the user input is the user's *preference profile*: the mean content vector of the user's
  training items (``user_input: profile``), or a learned id embedding (``user_input: id``);
* sizes: the paper's sub-networks end in 1024-d outputs (AlexNet-like convolutions on
  photos); ours are small — a two-layer MLP for content vectors, two convolutions + a linear
  layer for the 8×8 digits — with ``dim`` outputs;
* BPR-MF (Rendle et al., UAI 2009): user and item id embeddings, score = dot product,
  ``softplus(s⁻ − s⁺)``; it has nothing to say about a cold item (its untrained row).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = ("cdl", "naive", "bprmf")
USER_INPUTS = ("profile", "id")


def pairwise_distance(u: torch.Tensor, v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise Euclidean distance ``‖u − v‖₂`` (``eps`` inside the root keeps the gradient
    finite at 0)."""
    return ((u - v).pow(2).sum(-1) + eps).sqrt()


def comparative_loss(d_pos: torch.Tensor, d_neg: torch.Tensor) -> torch.Tensor:
    """Mean of ``softplus(d⁺ − d⁻) = −log σ(d⁻ − d⁺)``: the cross-entropy of the distance
    difference against the label "the first item is preferred"."""
    return F.softplus(d_pos - d_neg).mean()


def naive_loss(d: torch.Tensor, bias: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Pointwise BCE of ``σ(b − d)`` against 0/1 labels."""
    return F.binary_cross_entropy_with_logits(bias - d, label)


class ContentNet(nn.Module):
    """Item sub-network: MLP on content vectors, or a small CNN on ``[1, H, W]`` images."""

    def __init__(self, shape: tuple[int, ...], hidden: int, dim: int) -> None:
        super().__init__()
        if len(shape) == 1:
            self.net: nn.Module = nn.Sequential(nn.Linear(shape[0], hidden), nn.ReLU(),
                                                nn.Linear(hidden, dim))
        else:
            c, h, w = shape
            flat = 32 * ((h + 1) // 2) * ((w + 1) // 2)
            self.net = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(flat, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim]`` latent vectors."""
        return self.net(x)


class CDL(nn.Module):
    """CDL, its naive variant or BPR-MF (``variant``); ``model.name: cdl``. The networks are
    built by :meth:`attach` once the data is known. Keywords are ``model.hidden`` and
    ``model.params.<key>``.
    """

    max_len = 1  # unused; the run context reads it

    def __init__(self, n_items: int = 0, variant: str = "cdl", setting: str = "movielens",
                 dataset: str = "ml-100k", hidden: int = 256, dim: int = 64,
                 user_input: str = "profile", cold_fraction: float = 0.2, n_users: int = 300,
                 per_user: int = 40, taste_concentration: float = 0.3) -> None:
        super().__init__()
        from fedrec.baselines.cdl.data import SETTINGS

        checks = {"params.variant": (variant in VARIANTS, f"one of {', '.join(VARIANTS)}"),
                  "params.setting": (setting in SETTINGS, f"one of {', '.join(SETTINGS)}"),
                  "params.user_input": (user_input in USER_INPUTS,
                                        f"one of {', '.join(USER_INPUTS)}"),
                  "hidden": (hidden >= 1, ">= 1"), "params.dim": (dim >= 1, ">= 1")}
        for key, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"model.{key}={locals()[key.split('.')[-1]]!r}: "
                                 f"expected {expected}")
        self.variant, self.setting, self.dataset = variant, setting, dataset
        self.hidden, self.dim, self.user_input = hidden, dim, user_input
        self.cold_fraction, self.n_users_cfg, self.per_user = cold_fraction, n_users, per_user
        self.taste_concentration = taste_concentration
        self.content: torch.Tensor | None = None
        self.profile: torch.Tensor | None = None

    def attach(self, content: torch.Tensor, n_users: int, profile: torch.Tensor) -> None:
        """Build the sub-networks for items with ``content`` and users with ``profile``
        (``[n_users, *content.shape[1:]]``, the mean content of their training items)."""
        self.content, self.profile = content, profile
        if self.variant == "bprmf":
            self.user_emb = nn.Embedding(n_users, self.dim)
            self.item_emb = nn.Embedding(len(content), self.dim)
            nn.init.normal_(self.user_emb.weight, std=0.1)
            nn.init.normal_(self.item_emb.weight, std=0.1)
            return
        self.item_net = ContentNet(tuple(content.shape[1:]), self.hidden, self.dim)
        if self.user_input == "id":
            self.user_net: nn.Module = nn.Embedding(n_users, self.dim)
            nn.init.normal_(self.user_net.weight, std=0.1)
        else:
            self.user_net = ContentNet(tuple(profile.shape[1:]), self.hidden, self.dim)
        self.bias = nn.Parameter(torch.zeros(()))

    def users(self, u: torch.Tensor) -> torch.Tensor:
        """User latent vectors."""
        if self.variant == "bprmf":
            return self.user_emb(u)
        return self.user_net(u if self.user_input == "id" else self.profile[u])

    def items(self, i: torch.Tensor) -> torch.Tensor:
        """Item latent vectors (the one item sub-network, for every item branch)."""
        if self.variant == "bprmf":
            return self.item_emb(i)
        return self.item_net(self.content[i])

    def score(self, zu: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
        """``[U, I]`` ranking scores: −distance (CDL, naive) or dot product (BPR-MF)."""
        if self.variant == "bprmf":
            return zu @ zi.T
        return -torch.cdist(zu, zi)

    def loss(self, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The variant's training loss on triples (user, preferred item, other item)."""
        zu = self.users(u)
        if self.variant == "bprmf":
            zp, zn = self.items(pos), self.items(neg)
            return F.softplus((zu * zn).sum(-1) - (zu * zp).sum(-1)).mean()
        if self.variant == "cdl":
            return comparative_loss(pairwise_distance(zu, self.items(pos)),
                                    pairwise_distance(zu, self.items(neg)))
        d = pairwise_distance(zu.repeat(2, 1), self.items(torch.cat([pos, neg])))
        label = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        return naive_loss(d, self.bias, label)

    def make_trainer(self, ctx: Any) -> Any:
        """The CDL trainer (:class:`fedrec.baselines.cdl.trainer.CDLTrainer`)."""
        from fedrec.baselines.cdl.trainer import CDLTrainer

        return CDLTrainer(ctx)
