"""IPM, inner-product manipulation: upload a negative multiple of the benign mean.

Xie, Koyejo & Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
Manipulation", UAI 2019 (PMLR 115, published 2020; arXiv 1903.03936). No public code is used.

What follows the paper: every attacker uploads ``−ε · μ``, with ``μ`` the mean of benign
updates, so that the aggregate's inner product with the true descent direction turns negative
(mean) or small (median, Krum: a small ``ε`` keeps the crafted vectors close to the benign ones).
The paper's attacker knows the benign mean; ours **estimates** it from the coalition's own
benign-like updates (:mod:`attacks.coalition`), the non-omniscient variant.

What is adapted to recommendation: ``μ`` and the upload cover the whole model (every parameter
of the update layout, item-embedding rows included); the benign updates are those of the account
histories the attackers control. The reported loss is the crafting account's benign loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from attacks.base import Attack
from attacks.coalition import CoalitionPool, unflatten_like
from attacks.common import account_examples
from clients.update import RoundConfig, Update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel


def ipm_update(benign: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``−ε · mean(benign)`` for benign updates ``[m, D]``."""
    return -float(epsilon) * benign.mean(dim=0)


class IPM(Attack):
    """Inner-product manipulation (see module docstring).

    Parameters
    ----------
    epsilon : float
        ``ε > 0`` (the paper: small, e.g. 0.1, against Krum; large against the median/mean).
    scale : float
        Multiplies the update.
    """

    name = "ipm"

    def __init__(self, epsilon: float = 0.5, scale: float = 1.0) -> None:
        super().__init__(scale)
        if float(epsilon) <= 0:
            raise ValueError(f"epsilon={epsilon}: expected > 0")
        self.epsilon = float(epsilon)
        self.pool = CoalitionPool()

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        self.pool.stack(model, global_params, threat, rc)
        vec = self.pool.derived("ipm", lambda benign: ipm_update(benign, self.epsilon))
        params = unflatten_like(vec, global_params)
        return Update(params, account_examples(threat, client_id),
                      {"loss": self.pool.loss_of(client_id)})


__all__ = ["IPM", "ipm_update"]
