"""SASS: symmetric user/item towers with a multi-layer scenario-adaptive transfer (ML-SAT) module.

Zhang, Wang, Hu, Gao, Lei & Fang, "Scenario-Adaptive and Self-Supervised Model for
Multi-Scenario Personalized Recommendation", CIKM 2022 (arXiv 2208.11457). No public code.

Follows the paper (abstract and introduction; the method section's equations were not available
to us): two symmetric towers (users, items) so that an item has one representation per
scenario; embeddings shared by all scenarios; a global network over all scenarios and one
network per scenario; a multi-layer transfer from the global to each scenario network through
gate units; a scenario bias network; retrieval by the similarity of the two towers' outputs.
Talk summaries name the two gates "adaptive gate" and "update gate".

Our inference [INF] (each is a config key where it is a number): per layer ``l`` and scenario
``s``, with input ``x`` (entity embedding + the mean embedding of the entity's scenario-``s``
behaviour, labelled and unlabelled; see :mod:`.data`) and scenario embedding ``e_s``::

    g_l  = relu(G_l g_{l-1})                      global network (g_0 = x)
    h~_l = relu(S_l^s h_{l-1})                    scenario network (h_0 = x)
    a_l  = sigmoid(A_l^s [g_l; h~_l; e_s])        adaptive gate: what to take from global
    u_l  = sigmoid(U_l^s [h~_l; a_l * g_l])       update gate: how much of it to write
    h_l  = u_l * (a_l * g_l) + (1 - u_l) * h~_l
    r_s  = normalize(O^s h_L + Bias([e_s; x]))    output with the scenario bias network

Baselines under the same protocol (``variant``): ``single`` (one model per scenario: its own
embeddings and scenario network, nothing shared, so joint training equals separate models),
``mixed`` (one scenario-blind global network on all scenarios' data), ``shared_bottom`` (shared
embeddings and global network, one output layer per scenario), ``sass_base`` (SASS without
pre-training; the trainer skips that stage).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fedrec.baselines.sass.losses import RETRIEVAL_LOSSES

VARIANTS = ("sass", "sass_base", "single", "mixed", "shared_bottom")


def _stack(n: int, d_in: int, d_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """``n`` Xavier-uniform ``[d_in, d_out]`` weights and zero biases (one per scenario)."""
    w = torch.empty(n, d_in, d_out)
    for k in range(n):
        nn.init.xavier_uniform_(w[k].T)
    return nn.Parameter(w), nn.Parameter(torch.zeros(n, d_out))


def _apply(params: nn.ParameterList, k: int, s: int, x: torch.Tensor) -> torch.Tensor:
    """Layer ``k`` of scenario ``s`` of a stacked parameter list: ``x W + b``."""
    return x @ params[2 * k][s] + params[2 * k + 1][s]


class Tower(nn.Module):
    """One side (users or items) of SASS or of a baseline ``variant`` (module docstring)."""

    def __init__(self, n_ids: int, n_scen: int, dim: int, layers: int, scen_dim: int,
                 variant: str) -> None:
        super().__init__()
        self.variant, self.layers = variant, layers
        self.glob_on = variant != "single"
        self.spec_on = variant in ("sass", "sass_base", "single")
        self.gated = variant in ("sass", "sass_base")
        n_tables = n_scen if variant == "single" else 1
        self.emb = nn.Parameter(torch.randn(n_tables, n_ids, dim) * 0.1)
        self.scen = nn.Parameter(torch.randn(n_scen, scen_dim) * 0.1)
        def mk(n: int, d_in: int, d_out: int) -> nn.ParameterList:  # [W_1, b_1, W_2, b_2, ...]
            return nn.ParameterList([p for _ in range(layers) for p in _stack(n, d_in, d_out)])

        if self.glob_on:
            self.glob = mk(1, dim, dim)
        if self.spec_on:
            self.spec = mk(n_scen, dim, dim)
        if self.gated:
            self.adapt, self.update = mk(n_scen, 2 * dim + scen_dim, dim), mk(n_scen, 2 * dim, dim)
            self.bias = nn.Sequential(nn.Linear(scen_dim + dim, dim), nn.Tanh(),
                                      nn.Linear(dim, dim))
        self.out_w, self.out_b = _stack(1 if variant == "mixed" else n_scen, dim, dim)
        #: test hook: a fixed adaptive gate value (0 cuts the global-to-scenario path)
        self.fixed_adaptive_gate: float | None = None
        self.gates: list[tuple[torch.Tensor, torch.Tensor]] = []  # last forward's (a_l, u_l)

    def forward(self, ids: torch.Tensor, s: int,
                behaviour: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, dim]`` L2-normalised representations of ``ids`` in scenario ``s``."""
        x = self.emb[s if self.variant == "single" else 0][ids]
        if behaviour is not None:
            x = x + behaviour
        e_s = self.scen[s].expand(len(ids), -1)
        g = h = x
        self.gates = []
        for k in range(self.layers):
            if self.glob_on:
                g = F.relu(_apply(self.glob, k, 0, g))
            if self.spec_on:
                h = F.relu(_apply(self.spec, k, s, h))
            if self.gated:
                a = (torch.sigmoid(_apply(self.adapt, k, s, torch.cat([g, h, e_s], 1)))
                     if self.fixed_adaptive_gate is None
                     else torch.full_like(g, self.fixed_adaptive_gate))
                t = a * g
                u = torch.sigmoid(_apply(self.update, k, s, torch.cat([h, t], 1)))
                h = u * t + (1 - u) * h
                self.gates.append((a, u))
        o = 0 if self.variant == "mixed" else s
        r = (h if self.spec_on else g) @ self.out_w[o] + self.out_b[o]
        if self.gated:
            r = r + self.bias(torch.cat([e_s, x], 1))
        return F.normalize(r, dim=-1)


class SASS(nn.Module):
    """SASS or one of its baselines (``variant``); built by ``fedrec run`` with
    ``model.name: sass``. The towers are created by :meth:`attach` once the scenario data is
    known (``n_items`` of the sequence split is not used). Every keyword is a config key:
    ``model.hidden``, ``model.layers``, ``model.n_neg``, ``model.loss`` (``ce`` = sampled
    softmax, ``bce``) and ``model.params.<key>`` for the rest.
    """

    max_len = 1  # unused; the run context reads it

    def __init__(self, n_items: int = 0, variant: str = "sass", hidden: int = 32, layers: int = 2,
                 scen_dim: int = 8, temperature: float = 0.1, loss_type: str = "ce",
                 n_neg: int = 100, pretrain_epochs: int = 3, pretrain_temperature: float = 0.2,
                 pretrain_user_weight: float = 1.0, pretrain_item_weight: float = 1.0,
                 pretrain_symmetric: bool = True, pretrain_lr: float = 0.001,
                 use_behaviour: bool = True, unlabeled: bool = True,
                 domains: dict[str, Any] | None = None) -> None:
        super().__init__()
        checks = {"variant": (variant in VARIANTS, f"one of {', '.join(VARIANTS)}"),
                  "hidden": (hidden >= 1, ">= 1"), "layers": (layers >= 1, ">= 1"),
                  "params.scen_dim": (scen_dim >= 1, ">= 1"),
                  "params.temperature": (temperature > 0, "> 0"),
                  "loss": (loss_type in ("ce", "bce"), "'ce' (sampled softmax) or 'bce'"),
                  "n_neg": (n_neg >= 1, ">= 1"),
                  "params.pretrain_epochs": (pretrain_epochs >= 0, ">= 0"),
                  "params.pretrain_temperature": (pretrain_temperature > 0, "> 0"),
                  "params.pretrain_user_weight": (pretrain_user_weight >= 0, ">= 0"),
                  "params.pretrain_item_weight": (pretrain_item_weight >= 0, ">= 0"),
                  "params.pretrain_lr": (pretrain_lr > 0, "> 0")}
        for key, (ok, expected) in checks.items():
            if not ok:
                value = {"loss": loss_type, "variant": variant}.get(
                    key, locals().get(key.split(".")[-1]))
                raise ValueError(f"model.{key}={value!r}: expected {expected}")
        self.variant, self.hidden, self.layers, self.scen_dim = variant, hidden, layers, scen_dim
        self.temperature, self.loss_type, self.n_neg = temperature, loss_type, n_neg
        self.pretrain_epochs = pretrain_epochs if variant == "sass" else 0
        self.pretrain_temperature = pretrain_temperature
        self.pretrain_symmetric = pretrain_symmetric
        self.pretrain_weights = (pretrain_user_weight, pretrain_item_weight)
        self.pretrain_lr, self.use_behaviour, self.unlabeled = pretrain_lr, use_behaviour, unlabeled
        self.domains = dict(domains or {})
        self.user_tower: Tower | None = None
        self.item_tower: Tower | None = None
        self.behaviour: Any = None  # per scenario (user->item, item->user) row-normalised matrices

    def attach(self, n_users: int, n_items: int, n_scen: int, behaviour: Any = None) -> None:
        """Create the towers for the scenario data (and keep its behaviour matrices)."""
        args = (n_scen, self.hidden, self.layers, self.scen_dim, self.variant)
        self.user_tower, self.item_tower = Tower(n_users, *args), Tower(n_items, *args)
        self.behaviour = behaviour if self.use_behaviour else None

    def _side(self, tower: Tower, other: Tower, ids: torch.Tensor, s: int, k: int) -> torch.Tensor:
        beh = None
        if self.behaviour is not None:
            table = other.emb[s if other.variant == "single" else 0]
            beh = torch.sparse.mm(self.behaviour[s][k], table)[ids]
        return tower(ids, s, beh)

    def users(self, ids: torch.Tensor, s: int) -> torch.Tensor:
        """User representations in scenario ``s``."""
        return self._side(self.user_tower, self.item_tower, ids, s, 0)

    def items(self, ids: torch.Tensor, s: int) -> torch.Tensor:
        """Item representations in scenario ``s``."""
        return self._side(self.item_tower, self.user_tower, ids, s, 1)

    def retrieval_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                       s: int) -> torch.Tensor:
        """Fine-tuning loss of one scenario batch (``model.loss``)."""
        fn = RETRIEVAL_LOSSES["sampled_softmax" if self.loss_type == "ce" else "bce"]
        return fn(self.users(users, s), self.items(pos, s), self.items(neg, s),
                  self.temperature, pos, neg)

    def make_trainer(self, ctx: Any) -> Any:
        """The two-stage trainer (:class:`fedrec.baselines.sass.trainer.SASSTrainer`)."""
        from fedrec.baselines.sass.trainer import SASSTrainer

        return SASSTrainer(ctx)
