"""ALIE, "A Little Is Enough": a perturbation within the benign coordinate-wise spread.

Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
Learning", NeurIPS 2019 (arXiv 1902.06156). No public code is used.

What follows the paper:

* the attackers estimate the coordinate-wise mean ``μ`` and standard deviation ``σ`` of benign
  updates from their **own** benign updates (non-omniscient: the corrupted workers' honest
  gradients), and every attacker uploads the same vector ``μ − z·σ``;
* ``z`` is the paper's ``z_max``: with ``n`` clients in a round and ``f`` of them corrupted,
  ``s = ⌊n/2 + 1⌋ − f`` benign clients must be "won over", and ``z = Φ⁻¹((n − s)/n)``
  (:func:`alie_z`). ``z`` may also be set directly;
* the targeted (backdoor) form: the attacker computes an update for its own objective and keeps
  it inside the box ``[μ − z·σ, μ + z·σ]`` coordinate-wise (the paper trains the backdoor with a
  penalty on leaving this range; we project onto it, the penalty's limit).

What is adapted to recommendation:

* the attacked parameters are the **whole model** (every parameter of the update layout,
  item-embedding rows included), flattened into one vector as the paper does for a network;
* "own benign updates" are the benign updates of the account histories the attackers control
  (:mod:`attacks.coalition`), so ``μ``, ``σ`` come from ``m`` real-user-like histories;
* ``n`` is the round size (``n_clients``, the deployment's ``clients_per_round``, public in
  FedSGD) and ``f`` defaults to the number of malicious clients expected in a round,
  ``round(n · m / (n_users + m))`` (at least 1), since in FedRec only a few of the ``m``
  attackers are sampled per round;
* the targeted objective is the target-promotion loss ``−log σ(z_target)`` after the account's
  history (the explicit term shared with PipAttack/DV-FSR), the gradient or FedAvg delta of
  which is projected onto the box.

The paper's sign: it shifts each coordinate by ``z·σ_j`` away from the mean; we subtract
(``μ − z·σ``), against the benign descent direction, as most reimplementations do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import TYPE_CHECKING

import torch

from attacks.base import Attack
from attacks.coalition import CoalitionPool, benign_mean_std, flatten_update, unflatten_like
from attacks.common import (
    account_examples,
    account_history,
    as_input,
    loss_update,
    next_logits,
    promotion_loss,
    targets_of,
)
from clients.update import RoundConfig, Update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel


def alie_z(n: int, f: int) -> float:
    """The paper's ``z_max`` for ``n`` clients of which ``f`` are corrupted.

    ``s = ⌊n/2 + 1⌋ − f`` and ``z = Φ⁻¹((n − s)/n)``.

    Raises
    ------
    ValueError
        ``f`` outside ``1..n−1`` or a quantile outside ``(0, 1)`` (``f`` too large for ``n``).
    """
    if not 1 <= f < n:
        raise ValueError(f"alie_z: expected 1 <= f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(f"alie_z: (n - s)/n = {p:.4g} is not in (0, 1) for n={n}, f={f}")
    return NormalDist().inv_cdf(p)


def expected_per_round(n_clients: int, threat: ThreatModel) -> int:
    """Malicious clients expected in a round of ``n_clients``: ``round(n · m / N)``, at least 1."""
    total = threat.n_clients
    return max(1, round(n_clients * threat.n_malicious / max(1, total)))


def alie_update(mu: torch.Tensor, sigma: torch.Tensor, z: float) -> torch.Tensor:
    """The untargeted ALIE vector ``μ − z·σ``."""
    return mu - z * sigma


def project_box(update: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                z: float) -> torch.Tensor:
    """``update`` clipped coordinate-wise into ``[μ − z·σ, μ + z·σ]`` (the targeted form)."""
    lo, hi = mu - abs(z) * sigma, mu + abs(z) * sigma
    return torch.minimum(torch.maximum(update, lo), hi)


class ALIE(Attack):
    """ALIE (see module docstring).

    Parameters
    ----------
    n_clients : int
        Clients per round ``n`` of the paper's formula.
    n_byzantine : int or None
        Corrupted clients per round ``f`` (None: the expected number in a round).
    z : float or None
        Perturbation size; None computes the paper's ``z_max`` from ``n`` and ``f``.
    targeted : bool
        Promote the target items inside the box instead of the untargeted ``μ − z·σ``.
    scale : float
        Multiplies the update.
    """

    name = "alie"

    def __init__(self, n_clients: int = 256, n_byzantine: int | None = None, z: float | None = None,
                 targeted: bool = False, scale: float = 1.0) -> None:
        super().__init__(scale)
        if int(n_clients) < 2:
            raise ValueError(f"n_clients={n_clients}: expected >= 2")
        if n_byzantine is not None and not 1 <= int(n_byzantine) < int(n_clients):
            raise ValueError(f"n_byzantine={n_byzantine}: expected 1 <= n_byzantine < n_clients")
        if z is not None and float(z) < 0:
            raise ValueError(f"z={z}: expected >= 0")
        if n_byzantine is not None and z is None:
            alie_z(int(n_clients), int(n_byzantine))  # fails early on an impossible (n, f)
        self.n_clients = int(n_clients)
        self.n_byzantine = None if n_byzantine is None else int(n_byzantine)
        self.z = None if z is None else float(z)
        self.targeted = bool(targeted)
        self.pool = CoalitionPool()

    def z_for(self, threat: ThreatModel) -> float:
        """The ``z`` used against ``threat`` (given, or the paper's ``z_max``)."""
        if self.z is not None:
            return self.z
        f = self.n_byzantine
        if f is None:
            f = expected_per_round(self.n_clients, threat)
        return alie_z(self.n_clients, f)

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        self.pool.stack(model, global_params, threat, rc)
        mu, sigma = self.pool.derived("mean_std", benign_mean_std)
        z = self.z_for(threat)
        metrics = {"z": z}
        if self.targeted:
            history = account_history(threat, client_id)
            targets = torch.as_tensor(targets_of(threat))
            seq = as_input(model, [history])

            def loss_fn(m: SequentialRecommender, step: int) -> torch.Tensor:
                m.eval()
                return promotion_loss(next_logits(m, seq), targets)

            raw, loss = loss_update(model, global_params, loss_fn, rc)
            vec = project_box(flatten_update(raw), mu, sigma, z)
            metrics["loss"] = loss
        else:
            vec = alie_update(mu, sigma, z)
            metrics["loss"] = self.pool.loss_of(client_id)
        params = unflatten_like(vec, global_params)
        return Update(params, account_examples(threat, client_id), metrics)


__all__ = ["ALIE", "alie_update", "alie_z", "expected_per_round", "project_box"]
