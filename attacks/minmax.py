"""Min-Max and Min-Sum: the largest perturbation of the benign mean that stays among benign updates.

Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
Defenses for Federated Learning", NDSS 2021 (public code: vrt1shjwlkr/NDSS21-Model-Poisoning,
not used). The aggregation-rule-agnostic attacks of the paper's Section IV-B:

* the malicious update is ``m = μ − γ · p`` with ``μ`` the mean of benign updates and a
  perturbation direction ``p``: the unit vector ``μ/‖μ‖`` (``"unit"``), the coordinate-wise
  standard deviation ``σ`` (``"std"``) or ``sign(μ)`` (``"sign"``);
* **Min-Max**: the largest ``γ`` with ``max_i ‖m − b_i‖ ≤ max_{i,j} ‖b_i − b_j‖`` (the
  malicious update is no farther from any benign update than benign updates are from each
  other);
* **Min-Sum**: the largest ``γ`` with ``Σ_i ‖m − b_i‖² ≤ max_i Σ_j ‖b_i − b_j‖²``;
* ``γ`` by the paper's search (Algorithm 1): start at ``γ_init``, step ``γ_init / 2``, move up
  after a success and down after a failure, halving the step, until the step is below ``τ``;
* every attacker uploads the same ``m``.

What is adapted to recommendation: the benign updates ``b_i`` are the coalition's own
benign-like updates of the account histories it controls (the paper's partial-knowledge
setting, :mod:`attacks.coalition`), and the vectors are the whole model (every parameter,
item-embedding rows included). The reported loss is the crafting account's benign loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from attacks.base import Attack
from attacks.coalition import CoalitionPool, benign_mean_std, pairwise_sq_dists, unflatten_like
from attacks.common import account_examples
from clients.update import RoundConfig, Update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

DIRECTIONS = ("unit", "std", "sign")


def perturbation(benign: torch.Tensor, kind: str) -> torch.Tensor:
    """The direction ``p`` of ``m = μ − γ p``.

    Raises
    ------
    ValueError
        Unknown ``kind``.
    """
    mu, sigma = benign_mean_std(benign)
    if kind == "unit":
        return mu / torch.linalg.vector_norm(mu).clamp_min(1e-30)
    if kind == "std":
        return sigma
    if kind == "sign":
        return torch.sign(mu)
    raise ValueError(f"direction={kind!r}: expected one of {', '.join(DIRECTIONS)}")


def min_max_ok(benign: torch.Tensor) -> Callable[[torch.Tensor], bool]:
    """Min-Max's condition: ``max_i ‖m − b_i‖ ≤ max_{i,j} ‖b_i − b_j‖``."""
    bound = torch.cdist(benign, benign).max()

    def ok(m: torch.Tensor) -> bool:
        return bool(torch.linalg.vector_norm(benign - m, dim=1).max() <= bound)

    return ok


def min_sum_ok(benign: torch.Tensor) -> Callable[[torch.Tensor], bool]:
    """Min-Sum's condition: ``Σ_i ‖m − b_i‖² ≤ max_i Σ_j ‖b_i − b_j‖²``."""
    bound = (torch.cdist(benign, benign) ** 2).sum(dim=1).max()

    def ok(m: torch.Tensor) -> bool:
        return bool(((benign - m) ** 2).sum() <= bound)

    return ok


def _line_terms(benign: torch.Tensor, mu: torch.Tensor, p: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(‖b_i − μ‖², (b_i − μ)·p, ‖p‖²)`` from inner products of the rows (no ``[m, D]``
    temporary)."""
    b_mu = benign @ mu
    cc = (torch.linalg.vector_norm(benign, dim=1) ** 2 - 2.0 * b_mu + mu @ mu).clamp_min(0)
    return cc, benign @ p - mu @ p, float(p @ p)


def min_max_line(benign: torch.Tensor, mu: torch.Tensor, p: torch.Tensor
                 ) -> Callable[[float], bool]:
    """:func:`min_max_ok` along the search line ``m = μ − γ p``, in ``O(m)`` per ``γ``:
    ``‖b_i − m‖² = ‖b_i − μ‖² + 2γ (b_i − μ)·p + γ² ‖p‖²`` against the largest squared benign
    distance."""
    cc, cp, pp = _line_terms(benign, mu, p)
    bound = float(pairwise_sq_dists(benign).max())

    def ok(gamma: float) -> bool:
        return float((cc + 2.0 * gamma * cp + gamma * gamma * pp).max()) <= bound

    return ok


def min_sum_line(benign: torch.Tensor, mu: torch.Tensor, p: torch.Tensor
                 ) -> Callable[[float], bool]:
    """:func:`min_sum_ok` along ``m = μ − γ p``, in ``O(1)`` per ``γ`` (sums of the terms of
    :func:`min_max_line`)."""
    terms = _line_terms(benign, mu, p)
    cc, cp, pp = float(terms[0].sum()), float(terms[1].sum()), terms[2]
    m = benign.shape[0]
    bound = float(pairwise_sq_dists(benign).sum(dim=1).max())

    def ok(gamma: float) -> bool:
        return cc + 2.0 * gamma * cp + m * gamma * gamma * pp <= bound

    return ok


def search_gamma_line(ok: Callable[[float], bool], gamma_init: float = 10.0,
                      tau: float = 1e-5) -> float:
    """The paper's search for the largest ``γ`` with ``ok(γ)`` (0 when none succeeds)."""
    gamma, step, best = float(gamma_init), float(gamma_init) / 2, 0.0
    while step > tau:
        if ok(gamma):
            best = max(best, gamma)
            gamma += step
        else:
            gamma -= step
        step /= 2
    return best


def search_gamma(ok: Callable[[torch.Tensor], bool], mu: torch.Tensor, p: torch.Tensor,
                 gamma_init: float = 10.0, tau: float = 1e-5) -> float:
    """The paper's search for the largest ``γ`` with ``ok(μ − γ p)`` (0 when none succeeds)."""
    return search_gamma_line(lambda gamma: ok(mu - gamma * p), gamma_init, tau)


class _AgrAgnostic(Attack):
    """Min-Max / Min-Sum (see module docstring).

    Parameters
    ----------
    direction : str
        ``"unit"``, ``"std"`` or ``"sign"`` (the paper's ``p``).
    gamma_init : float
        Start of the ``γ`` search.
    tau : float
        Step at which the search stops.
    scale : float
        Multiplies the update.
    """

    #: ``(benign, μ, p) -> ok(γ)``: the condition along the search line
    line_condition: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Callable[[float], bool]]

    def __init__(self, direction: str = "std", gamma_init: float = 10.0, tau: float = 1e-5,
                 scale: float = 1.0) -> None:
        super().__init__(scale)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r}: expected one of {', '.join(DIRECTIONS)}")
        if float(gamma_init) <= 0 or float(tau) <= 0:
            raise ValueError("gamma_init/tau: expected > 0")
        self.direction = direction
        self.gamma_init = float(gamma_init)
        self.tau = float(tau)
        self.pool = CoalitionPool()

    def malicious_vector(self, benign: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(μ − γ p, γ)`` for benign updates ``[m, D]``."""
        mu = benign.mean(dim=0)
        p = perturbation(benign, self.direction)
        ok = type(self).line_condition(benign, mu, p)
        gamma = search_gamma_line(ok, self.gamma_init, self.tau)
        return mu - gamma * p, gamma

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        self.pool.stack(model, global_params, threat, rc)
        vec, gamma = self.pool.derived("malicious_vector", self.malicious_vector)
        return Update(unflatten_like(vec, global_params), account_examples(threat, client_id),
                      {"loss": self.pool.loss_of(client_id), "gamma": gamma})


class MinMax(_AgrAgnostic):
    """Min-Max (see module docstring)."""

    name = "min_max"
    line_condition = staticmethod(min_max_line)


class MinSum(_AgrAgnostic):
    """Min-Sum (see module docstring)."""

    name = "min_sum"
    line_condition = staticmethod(min_sum_line)


__all__ = ["MinMax", "MinSum", "min_max_line", "min_max_ok", "min_sum_line", "min_sum_ok",
           "perturbation", "search_gamma", "search_gamma_line"]
