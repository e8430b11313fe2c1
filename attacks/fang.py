"""Fang et al.'s local model poisoning attacks on Krum and on trimmed mean / median.

Fang, Cao, Jia & Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning",
USENIX Security 2020 (arXiv 1911.11815). No public code is used. The attacker deviates the
global update against the direction it would take without attack, ``s = sign(μ)``, with ``μ``
the benign mean update. We implement the paper's **partial-knowledge** attacks: the attackers
know only their own benign updates (:mod:`attacks.coalition`), not the other clients'.

* ``fang_krum`` (against Krum / Multi-Krum): every attacker uploads ``−λ s``. ``λ`` starts at
  the paper's upper bound (here in update space, the reference point being the zero update):
  ``λ₀ = (1/√d) · (min_i mean_{l ∈ Γ_i} ‖b_l − b_i‖ + max_i ‖b_i‖)`` with ``Γ_i`` the nearest
  benign neighbours Krum scores, and is halved until Krum, run on the attackers' benign
  estimates plus ``copies`` crafted uploads with the assumed ``f``, selects a crafted upload,
  or ``λ`` falls below ``tol · λ₀`` (then the last, smallest ``λ`` is sent).
* ``fang_trmean`` (against trimmed mean, and the paper's attack on the median, which is the
  same): per coordinate ``j``, each attacker draws its value uniformly from
  ``[μ_j + 3σ_j, μ_j + 4σ_j]`` when ``s_j < 0`` and from ``[μ_j − 4σ_j, μ_j − 3σ_j]`` when
  ``s_j > 0`` (``μ``, ``σ``: mean and standard deviation of the attackers' benign updates);
  ``s_j = 0`` leaves ``μ_j``.

The paper works on local models ``w``; we work on updates (FedSGD gradients or FedAvg deltas),
where "against the benign direction" is the same rule for both, since the server moves along
the aggregate's sign in either convention. Adapted to recommendation: the vectors are the
whole model (every parameter, item-embedding rows included); coordinates of item rows that no
attacker's account touches have ``μ_j = σ_j = 0`` and stay 0. Krum's round size is unknown to
the attackers and with few attackers ``2f + 2 < n`` may fail on their estimates, so the
simulated Krum keeps at least one neighbour per score (our choice). The reported loss is the
crafting account's benign loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from attacks.base import Attack
from attacks.coalition import CoalitionPool, benign_mean_std, pairwise_sq_dists, unflatten_like
from attacks.common import account_examples, attack_rng
from clients.update import RoundConfig, Update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

#: Tag of the trimmed-mean attack's random stream.
STREAM_TAG = 0xFA26


def krum_scores_k(sq_dists: torch.Tensor, f: int) -> torch.Tensor:
    """Krum scores with ``k = max(1, n − f − 2)`` nearest neighbours (self excluded)."""
    n = sq_dists.shape[0]
    k = max(1, min(n - 1, n - f - 2))
    d = sq_dists.clone()
    d.fill_diagonal_(float("inf"))
    return d.topk(k, dim=1, largest=False).values.sum(dim=1)


def krum_picks_crafted(benign: torch.Tensor, crafted: torch.Tensor, copies: int, f: int) -> bool:
    """Does Krum (assumed ``f``) select a crafted upload among ``benign`` + ``copies`` crafted?

    Ties go to the benign update (it comes first), as :func:`defenses.distance.krum_select`
    breaks ties by index.
    """
    stack = torch.cat([benign, crafted.unsqueeze(0).expand(copies, -1)])
    scores = krum_scores_k(torch.cdist(stack, stack) ** 2, f)
    return int(torch.sort(scores, stable=True).indices[0]) >= benign.shape[0]


def fang_krum_lambda_bound(benign: torch.Tensor, f: int,
                           sq_dists: torch.Tensor | None = None) -> float:
    """The paper's upper bound on ``λ`` (update space; see module docstring).

    ``sq_dists``: the benign rows' squared pairwise distances, when the caller has them.
    """
    m, d = benign.shape
    if m < 2:
        return float(torch.linalg.vector_norm(benign[0])) / math.sqrt(d)
    dist = torch.cdist(benign, benign) if sq_dists is None else sq_dists.clamp_min(0).sqrt()
    dist = dist.clone()
    dist.fill_diagonal_(float("inf"))
    k = max(1, min(m - 1, m - f - 2))
    near = dist.topk(k, dim=1, largest=False).values.mean(dim=1).min()
    far = torch.linalg.vector_norm(benign, dim=1).max()
    return float(near + far) / math.sqrt(d)


def _krum_picks_on_line(bb: torch.Tensor, b_sq: torch.Tensor, b_dot_s: torch.Tensor,
                        s_sq: float, lam: float, copies: int, f: int) -> bool:
    """:func:`krum_picks_crafted` for the upload ``−λ s`` from precomputed inner products:
    ``‖b_i + λ s‖² = ‖b_i‖² + 2λ b_i·s + λ² ‖s‖²``, so each ``λ`` costs ``O(m²)`` instead of a
    new ``O(m² D)`` distance matrix."""
    m = bb.shape[0]
    cross = (b_sq + 2.0 * lam * b_dot_s + lam * lam * s_sq).clamp_min(0)
    sq = bb.new_zeros((m + copies, m + copies))
    sq[:m, :m] = bb
    sq[:m, m:] = cross[:, None]
    sq[m:, :m] = cross[None, :]
    scores = krum_scores_k(sq, f)
    return int(torch.sort(scores, stable=True).indices[0]) >= m


def fang_krum_update(benign: torch.Tensor, copies: int, f: int, tol: float = 1e-5
                     ) -> tuple[torch.Tensor, float, bool]:
    """``(−λ s, λ, selected)``: the crafted upload, its ``λ``, and whether the simulated Krum
    picks it.

    The benign rows' distances and inner products with ``s`` are computed once; each halving of
    ``λ`` then re-scores Krum in ``O(m²)`` (:func:`_krum_picks_on_line`).
    """
    s = torch.sign(benign.mean(dim=0))
    bb = pairwise_sq_dists(benign)
    b_sq = torch.linalg.vector_norm(benign, dim=1) ** 2
    b_dot_s, s_sq = benign @ s, float(s @ s)
    lam0 = fang_krum_lambda_bound(benign, f, bb)
    lam = lam0
    while True:
        if _krum_picks_on_line(bb, b_sq, b_dot_s, s_sq, lam, copies, f):
            return -lam * s, lam, True
        if lam < tol * lam0 or lam0 == 0:
            return -lam * s, lam, False
        lam /= 2


def fang_trmean_update(benign: torch.Tensor, uniform: torch.Tensor,
                       mean_std: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Fang's partial-knowledge attack on trimmed mean/median for one attacker.

    ``uniform`` ``[D]`` holds the attacker's ``U(0, 1)`` draws; the value of coordinate ``j`` is
    ``μ_j + (3 + u_j) σ_j`` when ``μ_j < 0``, ``μ_j − (3 + u_j) σ_j`` when ``μ_j > 0``.
    ``mean_std``: ``benign_mean_std(benign)`` when the caller has it already.
    """
    mu, sigma = mean_std if mean_std is not None else benign_mean_std(benign)
    return mu - torch.sign(mu) * (3.0 + uniform) * sigma


class FangKrum(Attack):
    """Fang et al.'s attack on Krum (see module docstring).

    Parameters
    ----------
    f : int or None
        Krum's assumed number of Byzantine clients (None: ``copies``).
    copies : int
        Crafted uploads the attackers expect in one round.
    tol : float
        Stop halving ``λ`` below ``tol · λ₀``.
    scale : float
        Multiplies the update.
    """

    name = "fang_krum"

    def __init__(self, f: int | None = None, copies: int = 1, tol: float = 1e-5,
                 scale: float = 1.0) -> None:
        super().__init__(scale)
        if int(copies) < 1:
            raise ValueError(f"copies={copies}: expected >= 1")
        if f is not None and int(f) < 0:
            raise ValueError(f"f={f}: expected >= 0")
        if not 0 < float(tol) < 1:
            raise ValueError(f"tol={tol}: expected in (0, 1)")
        self.copies = int(copies)
        self.f = int(copies) if f is None else int(f)
        self.tol = float(tol)
        self.pool = CoalitionPool()

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        self.pool.stack(model, global_params, threat, rc)
        vec, lam, picked = self.pool.derived(
            "fang_krum", lambda benign: fang_krum_update(benign, self.copies, self.f, self.tol))
        return Update(unflatten_like(vec, global_params), account_examples(threat, client_id),
                      {"loss": self.pool.loss_of(client_id), "lambda": lam,
                       "selected": float(picked)})


class FangTrimmedMean(Attack):
    """Fang et al.'s attack on trimmed mean and median (see module docstring).

    Parameters
    ----------
    scale : float
        Multiplies the update.
    """

    name = "fang_trmean"

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        self.pool = CoalitionPool()

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        benign = self.pool.stack(model, global_params, threat, rc)
        rng = attack_rng(rc, client_id, STREAM_TAG)
        u = torch.from_numpy(rng.random(benign.shape[1])).to(benign.device)
        vec = fang_trmean_update(benign, u, self.pool.derived("mean_std", benign_mean_std))
        return Update(unflatten_like(vec, global_params), account_examples(threat, client_id),
                      {"loss": self.pool.loss_of(client_id)})


__all__ = ["FangKrum", "FangTrimmedMean", "fang_krum_lambda_bound", "fang_krum_update",
           "fang_trmean_update", "krum_picks_crafted", "krum_scores_k"]
