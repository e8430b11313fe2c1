"""PipAttack: promoting target items by exploiting popularity bias.

Zhang, Yin, Chen, Huang, Nguyen & Cui, "PipAttack: Poisoning Federated Recommender Systems for
Manipulating Item Promotion", WSDM 2022 (arXiv 2110.10926). The attacker, who knows item
popularity (``attack.knowledge.popularity``), makes the target's embedding look like those of
popular items, so that a recommender with popularity bias ranks it high.

Loss of a malicious client (model poisoning, upload = ``∇θ L`` or the FedAvg delta on ``L``):

* **explicit promotion**: ``−log σ(z_target)`` at the last position of the history of the account
  the client controls (sequential adaptation: the account's history plays the role of the
  malicious user's embedding in the MF/NCF original; the DV-FSR authors' sequential PipAttack
  port uses exactly this term);
* **popularity enhancement**: a popularity estimator (an MLP ``d → hidden → n_levels``) is trained
  by the attacker on the *current* global item embeddings with labels from its popularity
  knowledge (``n_levels`` equal-size levels of the training counts, ties by id), then
  ``popularity_weight · CE(estimator(e_target), most-popular level)`` pulls the target's
  embedding toward the popular region. The estimator is the attacker's own model (trained
  ``estimator_steps`` full-batch Adam steps from a seeded initialisation each round, never
  uploaded); only the target's embedding receives this gradient;
* **distance constraint** (optional, ``distance``): the paper constrains the poisoned update for
  stealth; here the upload ``u`` is projected into the ball of radius
  ``distance · ‖u_benign‖`` around ``u_benign``, the benign update the same account would have
  sent (our reading of the constraint; off by default).

``num_examples`` is the account history's benign count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import Attack
from attacks.common import (
    account_examples,
    account_history,
    as_input,
    loss_update,
    next_logits,
    promotion_loss,
    require_popularity,
    targets_of,
)
from clients.update import RoundConfig, Update, client_update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel


def popularity_levels(counts: np.ndarray, n_items: int, n_levels: int) -> np.ndarray:
    """Level of each item ``0..n_items`` (0 = least popular … ``n_levels − 1`` = most popular).

    Items are ranked by training count (ties by id) and cut into ``n_levels`` equal-size
    groups; index 0 (padding) gets level 0.
    """
    items = np.arange(1, n_items + 1)
    pop = np.asarray(counts, dtype=np.float64)[1: n_items + 1]
    order = items[np.lexsort((items, pop))]  # least popular first
    levels = np.zeros(n_items + 1, dtype=np.int64)
    levels[order] = (np.arange(n_items) * n_levels) // n_items
    return levels


def train_popularity_estimator(embeddings: torch.Tensor, levels: torch.Tensor, n_levels: int,
                               hidden: int = 32, steps: int = 100, lr: float = 0.01) -> nn.Module:
    """Fit an MLP ``embedding → popularity level`` (full-batch Adam on CE); returns it frozen.

    Initialisation uses torch's current random stream (seeded per round by ``Attack.craft``).
    """
    net = nn.Sequential(nn.Linear(embeddings.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, n_levels))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x = embeddings.detach()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), levels).backward()
        opt.step()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def project_to_ball(update: Mapping[str, torch.Tensor], center: Mapping[str, torch.Tensor],
                    radius_factor: float) -> dict[str, torch.Tensor]:
    """Project ``update`` into the L2 ball of radius ``radius_factor · ‖center‖`` around ``center``."""
    diff = {n: update[n] - center[n] for n in update}
    dist = float(torch.sqrt(sum((d.double() ** 2).sum() for d in diff.values())))
    radius = radius_factor * float(torch.sqrt(sum((c.double() ** 2).sum() for c in center.values())))
    if dist <= radius or dist == 0:
        return dict(update)
    f = radius / dist
    return {n: center[n] + diff[n] * f for n in update}


class PipAttack(Attack):
    """PipAttack (see module docstring).

    Parameters
    ----------
    popularity_weight : float
        Weight of the popularity-enhancement term.
    n_levels : int
        Popularity levels of the estimator.
    estimator_hidden : int
        Hidden width of the estimator MLP.
    estimator_steps : int
        Adam steps fitting the estimator each round.
    estimator_lr : float
        Adam step size.
    distance : float or None
        Radius factor of the distance constraint (None: off).
    scale : float
        Multiplies the update.
    """

    name = "pipattack"
    requires = ("popularity",)

    def __init__(self, popularity_weight: float = 1.0, n_levels: int = 3, estimator_hidden: int = 32,
                 estimator_steps: int = 100, estimator_lr: float = 0.01,
                 distance: float | None = None, scale: float = 1.0) -> None:
        super().__init__(scale)
        if float(popularity_weight) < 0:
            raise ValueError(f"popularity_weight={popularity_weight}: expected >= 0")
        if int(n_levels) < 2:
            raise ValueError(f"n_levels={n_levels}: expected >= 2")
        if int(estimator_hidden) < 1 or int(estimator_steps) < 0 or float(estimator_lr) <= 0:
            raise ValueError("estimator_hidden/estimator_steps/estimator_lr: expected positive values")
        if distance is not None and float(distance) < 0:
            raise ValueError(f"distance={distance}: expected >= 0")
        self.popularity_weight = float(popularity_weight)
        self.n_levels = int(n_levels)
        self.estimator_hidden = int(estimator_hidden)
        self.estimator_steps = int(estimator_steps)
        self.estimator_lr = float(estimator_lr)
        self.distance = None if distance is None else float(distance)

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        counts = require_popularity(threat, self.name)
        history = account_history(threat, client_id)
        targets = torch.as_tensor(targets_of(threat))
        n = model.n_items
        levels = torch.as_tensor(popularity_levels(counts, n, self.n_levels))
        table = global_params["item_emb.weight"][1: n + 1]
        estimator = None
        if self.popularity_weight > 0:
            estimator = train_popularity_estimator(table, levels[1:], self.n_levels, self.estimator_hidden,
                                                   self.estimator_steps, self.estimator_lr)
        top = torch.full((len(targets),), self.n_levels - 1, dtype=torch.long)
        seq = as_input(model, [history])

        def loss_fn(m: SequentialRecommender, step: int) -> torch.Tensor:
            m.eval()
            loss = promotion_loss(next_logits(m, seq), targets)
            if estimator is not None:
                loss = loss + self.popularity_weight * F.cross_entropy(estimator(m.item_emb.weight[targets]), top)
            return loss

        params, loss = loss_update(model, global_params, loss_fn, rc)
        metrics = {"loss": loss}
        if self.distance is not None:
            benign = client_update(model, global_params, history, client_id, rc).params
            params = project_to_ball(params, benign, self.distance)
        return Update(params, account_examples(threat, client_id), metrics)
