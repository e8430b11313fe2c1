"""Adaptive (defense-aware) DV-FSR and PipAttack: the upload is constrained to pass the checks of
the rule the attacker assumes, estimated only from the attackers' own benign-like updates.

The attacker knows which aggregation rule the server runs (``attack.knowledge.defense``, the
threat model's "the defense in use" knowledge) but never the server's state or other clients'
updates. It estimates what the rule accepts from the coalition's benign-like updates ``b_i``
(the benign updates of the account histories it controls, :mod:`attacks.coalition`) and
projects its malicious update ``u`` (DV-FSR's or PipAttack's) onto that set. Each check bounds
a deviation statistic by ``budget ×`` its benign ``quantile`` (``attack.knowledge.budget`` /
``.quantile``):

* **norm** (norm bounding, centered clipping, FLAME's clipping, FLTrust's rescaling, item-wise
  norm bound): ``‖u‖ ≤ budget · Q_q(‖b_i‖)``; ``u`` is rescaled;
* **distance** (Krum, Multi-Krum, Bulyan, geometric median, DV-FSR's hybrid):
  ``‖u − μ‖ ≤ budget · Q_q(‖b_i − μ_{−i}‖)`` with ``μ`` the benign mean and ``μ_{−i}`` the mean
  without ``b_i`` (how far a fresh benign update lies from the estimate); ``u`` is projected
  onto the ball;
* **angle** (FLAME's cosine clustering, FoolsGold, FLTrust):
  ``1 − cos(u, μ) ≤ budget · Q_q(1 − cos(b_i, μ_{−i}))``; ``u`` is blended toward
  ``μ · ‖u‖/‖μ‖`` by the smallest weight (bisection) that passes;
* **coordinate** (median, trimmed mean, Bulyan): each coordinate clipped into
  ``μ_j ± budget · σ_j`` (the ALIE box; ``quantile`` is not used);
* **rows** (item-wise rules, HiCS): the item-table rows ``u`` touches are restricted to those
  the attacker's own benign update touches plus the targets (the sparsity pattern of a benign
  client with that history), and each row's norm is bounded by ``budget · Q_q`` of the nonzero
  benign row norms.

Checks apply in the order rows, coordinate, angle, distance, norm, so the norm bound, the last,
always holds. A rule with no check (mean, sum) leaves the attack unchanged. The mapping from
rule names to checks is :data:`DEFENSE_CHECKS`, our reading of what each rule tests.

This is our construction in the spirit of the adaptive attacks of the robust-FL literature
(e.g. Bhagoji et al., ICML 2019, stealth by distance constraints; Baruch et al., NeurIPS 2019,
the coordinate box), applied to the two targeted recommendation attacks; the attacked
parameters are the whole model, item rows included. ``scale`` multiplies the constrained update
afterwards (keep it 1 for an attacker that means to pass the checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from attacks.coalition import CoalitionPool, flatten_update, unflatten_like
from attacks.common import targets_of
from attacks.dvfsr import DVFSR
from attacks.pipattack import PipAttack
from clients.update import RoundConfig, Update
from fedrec.errors import ConfigError
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

CHECKS = ("rows", "coordinate", "angle", "distance", "norm")

#: registered defense name → the checks an adaptive attacker assumes it applies
DEFENSE_CHECKS: dict[str, tuple[str, ...]] = {
    "mean": (), "unweighted_mean": (), "sum": (),
    "median": ("coordinate",), "trimmed_mean": ("coordinate",),
    "krum": ("distance",), "multi_krum": ("distance",), "bulyan": ("coordinate", "distance"),
    "geometric_median": ("distance",), "dvfsr_hybrid": ("distance",),
    "norm_bound": ("norm",), "centered_clipping": ("norm",),
    "flame": ("angle", "norm"), "foolsgold": ("angle",), "fltrust": ("angle", "norm"),
    "itemwise_median": ("rows",), "itemwise_trimmed_mean": ("rows",), "itemwise_krum": ("rows",),
    "itemwise_norm_bound": ("rows", "norm"), "hics": ("rows",),
}


def checks_for(defense: str) -> tuple[str, ...]:
    """The checks assumed for rule ``defense`` (in application order).

    Raises
    ------
    ConfigError
        A rule with no entry in :data:`DEFENSE_CHECKS`.
    """
    if defense not in DEFENSE_CHECKS:
        raise ConfigError(f"attack.knowledge.defense={defense!r}: no adaptive checks known for "
                          f"this rule (known: {', '.join(sorted(DEFENSE_CHECKS))})")
    wanted = DEFENSE_CHECKS[defense]
    return tuple(c for c in CHECKS if c in wanted)


def leave_one_out_means(benign: torch.Tensor) -> torch.Tensor:
    """``[m, D]``: the mean of the other rows for each row (the row itself when ``m = 1``)."""
    m = benign.shape[0]
    if m < 2:
        return benign.clone()
    return (benign.sum(dim=0, keepdim=True) - benign) / (m - 1)


def _quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of ``a`` and ``b`` along the last dimension (0 for a zero vector)."""
    na = torch.linalg.vector_norm(a, dim=-1)
    nb = torch.linalg.vector_norm(b, dim=-1)
    return (a * b).sum(-1) / (na * nb).clamp_min(1e-30)


def norm_limit(benign: torch.Tensor, q: float, budget: float) -> float:
    """``budget · Q_q(‖b_i‖)``."""
    return budget * _quantile(torch.linalg.vector_norm(benign, dim=1), q)


def constrain_norm(u: torch.Tensor, benign: torch.Tensor, q: float, budget: float) -> torch.Tensor:
    """Rescale ``u`` to norm ``≤ budget · Q_q(‖b_i‖)``."""
    limit = norm_limit(benign, q, budget)
    n = float(torch.linalg.vector_norm(u))
    return u * (limit / n) if n > limit else u


def distance_radius(benign: torch.Tensor, q: float, budget: float) -> float:
    """``budget · Q_q(‖b_i − μ_{−i}‖)``."""
    dists = torch.linalg.vector_norm(benign - leave_one_out_means(benign), dim=1)
    return budget * _quantile(dists, q)


def constrain_distance(u: torch.Tensor, benign: torch.Tensor, q: float, budget: float
                       ) -> torch.Tensor:
    """Project ``u`` onto the ball of radius :func:`distance_radius` around the benign mean."""
    mu = benign.mean(dim=0)
    radius = distance_radius(benign, q, budget)
    diff = u - mu
    d = float(torch.linalg.vector_norm(diff))
    return mu + diff * (radius / d) if d > radius else u


def angle_limit(benign: torch.Tensor, q: float, budget: float) -> float:
    """``budget · Q_q(1 − cos(b_i, μ_{−i}))``."""
    return budget * _quantile(1.0 - cosine(benign, leave_one_out_means(benign)), q)


def constrain_angle(u: torch.Tensor, benign: torch.Tensor, q: float, budget: float,
                    iters: int = 40) -> torch.Tensor:
    """Blend ``u`` toward ``μ‖u‖/‖μ‖`` by the smallest weight with ``1 − cos(·, μ) ≤`` the limit."""
    mu = benign.mean(dim=0)
    limit = angle_limit(benign, q, budget)
    if float(1.0 - cosine(u, mu)) <= limit:
        return u
    anchor = mu * (torch.linalg.vector_norm(u) / torch.linalg.vector_norm(mu).clamp_min(1e-30))
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if float(1.0 - cosine((1 - mid) * u + mid * anchor, mu)) <= limit:
            hi = mid
        else:
            lo = mid
    return (1 - hi) * u + hi * anchor


def constrain_coordinate(u: torch.Tensor, benign: torch.Tensor, budget: float) -> torch.Tensor:
    """Clip ``u`` coordinate-wise into ``μ ± budget · σ``."""
    mu, sigma = benign.mean(dim=0), benign.std(dim=0, unbiased=False)
    return torch.minimum(torch.maximum(u, mu - budget * sigma), mu + budget * sigma)


def row_norms(table: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row (dim 0) of a table."""
    return torch.linalg.vector_norm(table.reshape(table.shape[0], -1), dim=1)


def constrain_rows(update: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                   benign_tables: Mapping[str, torch.Tensor], item_names: tuple[str, ...],
                   targets: np.ndarray, q: float, budget: float) -> dict[str, torch.Tensor]:
    """Restrict item-table rows to ``own``'s touched rows plus ``targets``; bound row norms.

    Parameters
    ----------
    update, own : mapping
        The malicious update and the attacker's own benign update (same layout).
    benign_tables : mapping
        Item table name → the coalition's benign tables ``[m, n_rows, ...]``.
    item_names : tuple of str
        Item-indexed parameters.
    targets : numpy.ndarray
        Target item ids (rows kept even when the benign update does not touch them).
    q, budget : float
        Row norms are bounded by ``budget · Q_q`` of the coalition's nonzero benign row norms.
    """
    out = dict(update)
    for name in item_names:
        if name not in out:
            continue
        table = out[name]
        keep = row_norms(own[name]) > 0
        t = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        keep[t[t < table.shape[0]]] = True
        table = table * keep.view((-1,) + (1,) * (table.dim() - 1)).to(table.dtype)
        bt = benign_tables[name]
        norms = row_norms(bt.reshape(-1, *bt.shape[2:]))
        norms = norms[norms > 0]
        if len(norms):
            limit = budget * _quantile(norms, q)
            rn = row_norms(table).double()
            factor = (limit / rn.clamp_min(1e-30)).clamp(max=1.0).to(table.dtype)
            table = table * factor.view((-1,) + (1,) * (table.dim() - 1))
        out[name] = table
    return out


def adapt(update: Mapping[str, torch.Tensor], benign: torch.Tensor, own_index: int,
          like: Mapping[str, torch.Tensor], item_names: tuple[str, ...], targets: np.ndarray,
          checks: tuple[str, ...], q: float, budget: float) -> dict[str, torch.Tensor]:
    """Apply ``checks`` (in :data:`CHECKS` order) to a malicious ``update``.

    ``benign`` ``[m, D]`` are the coalition's flattened benign-like updates in ``like``'s key
    order and ``own_index`` the crafting attacker's row among them.
    """
    out = {n: update[n] for n in like}
    if "rows" in checks:
        own = unflatten_like(benign[own_index], like)
        tables = {n: torch.stack([unflatten_like(b, like)[n] for b in benign]) for n in item_names
                  if n in like}
        out = constrain_rows(out, own, tables, item_names, targets, q, budget)
    u = flatten_update(out)
    if "coordinate" in checks:
        u = constrain_coordinate(u, benign, budget)
    if "angle" in checks:
        u = constrain_angle(u, benign, q, budget)
    if "distance" in checks:
        u = constrain_distance(u, benign, q, budget)
    if "norm" in checks:
        u = constrain_norm(u, benign, q, budget)
    return unflatten_like(u, like)


class AdaptiveMixin:
    """Constrains the base attack's ``_craft`` result with :func:`adapt` (see module docstring)."""

    requires: ClassVar[tuple[str, ...]] = ("defense",)
    pool: CoalitionPool

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        if threat.assumed_defense == "none":
            raise ConfigError(f"attack.knowledge.defense: attack {self.name!r} adapts to a "  # type: ignore[attr-defined]
                              "defense (set attack.knowledge.defense to the rule it assumes)")
        checks = checks_for(threat.assumed_defense)
        upd = super()._craft(model, global_params, client_id, threat, rc)  # type: ignore[misc]
        if not checks:
            return upd
        if not hasattr(self, "pool"):
            self.pool = CoalitionPool()
        benign = self.pool.stack(model, global_params, threat, rc)
        own = sorted(int(c) for c in threat.accounts).index(int(client_id))
        before = float(torch.linalg.vector_norm(flatten_update(upd.params)))
        params = adapt(upd.params, benign, own, global_params, tuple(model.item_param_names),
                       targets_of(threat), checks, threat.quantile, threat.budget)
        after = float(torch.linalg.vector_norm(flatten_update(params)))
        metrics = {**upd.metrics, "norm_before_adapt": before, "norm_after_adapt": after}
        return Update(params, upd.num_examples, metrics)


class AdaptiveDVFSR(AdaptiveMixin, DVFSR):
    """DV-FSR constrained to the assumed defense's checks (see module docstring)."""

    name = "dvfsr_adaptive"
    requires = ("defense",)


class AdaptivePipAttack(AdaptiveMixin, PipAttack):
    """PipAttack constrained to the assumed defense's checks (see module docstring)."""

    name = "pipattack_adaptive"
    requires = ("popularity", "defense")


__all__ = ["CHECKS", "DEFENSE_CHECKS", "AdaptiveDVFSR", "AdaptivePipAttack", "adapt",
           "angle_limit", "checks_for", "constrain_angle", "constrain_coordinate",
           "constrain_distance", "constrain_norm", "constrain_rows", "distance_radius",
           "leave_one_out_means", "norm_limit"]
