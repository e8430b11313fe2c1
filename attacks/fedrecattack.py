"""FedRecAttack: model poisoning with a small share of public interactions.

Rong, Zhang, He, Li, Chen & Yin, "FedRecAttack: Model Poisoning Attack to Federated
Recommendation", ICDE 2022 (arXiv 2204.01499). The attacker knows a fraction ξ of other users'
interactions (``attack.knowledge.public_fraction``; ``threat.public``), uses them to approximate
the users' representations under the current global model, and for every approximated user
that does not hold the target pushes the target above a competitor from that user's current
top-K, with ``L = Σ_u Σ_t g(s_u(competitor) − s_u(t))``, ``g(x) = x`` for ``x ≥ 0`` and
``e^x − 1`` otherwise (keeps pushing, ever more gently, once the target is ahead).

Adaptation to sequential models: there are no user embeddings; a user's representation is the
hidden state the *global* model computes from the user's public sub-sequence (its public items
in their original order, last ``max_len``). "Not holding the target" and the top-K exclusions use
the public items only (all the attacker knows). The competitor is the K-th item of the user's
current top-K (public history and targets excluded; the reference pops the last of its top-10).
The gradient reaches every shared parameter (item table *and* encoder: a sequential model has
no private user part); ``max_users`` approximated users are sampled per round.

Upload shaping as in the reference: the item rows of the upload are limited to ``items_limit``
items, the targets plus the rows with the largest poisoning gradient — split among the
attackers (the k-th of m attackers takes ranks k, k+m, k+2m, …, so together they cover the
poisoning gradient instead of repeating it, statelessly); each item row is clipped to L2 ≤
``grad_limit`` (the reference's per-row clip, 1.0), the encoder part (all non-item parameters
together, which MF does not have) is clipped to the same L2 bound, and optionally the whole
upload to ``max_norm``. ``num_examples`` is the account history's benign count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from attacks.base import Attack
from attacks.common import (
    account_examples,
    as_input,
    attack_rng,
    clip_rows,
    clip_total,
    loss_update,
    next_logits,
    require_public,
    restrict_item_rows,
    targets_of,
)
from clients.update import RoundConfig, Update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

#: Tag of FedRecAttack's random stream (which approximated users are used).
STREAM_TAG = 0xFEDA


def soft_hinge(x: torch.Tensor) -> torch.Tensor:
    """FedRecAttack's ``g(x) = x`` for ``x ≥ 0``, ``e^x − 1`` for ``x < 0``."""
    return torch.where(x >= 0, x, torch.expm1(torch.clamp(x, max=0.0)))


def competitors(logits: torch.Tensor, histories: list[np.ndarray], targets: torch.Tensor, k: int) -> torch.Tensor:
    """The K-th best item per row, excluding the row's known history and the targets."""
    scores = logits.detach().clone()
    scores[:, targets] = float("-inf")
    for r, h in enumerate(histories):
        scores[r, torch.as_tensor(np.asarray(h, dtype=np.int64))] = float("-inf")
    k = min(k, scores.shape[1] - 1)
    return torch.topk(scores, k, dim=1).indices[:, -1]


def fedrecattack_loss(model: SequentialRecommender, seqs: torch.Tensor, histories: list[np.ndarray],
                      targets: torch.Tensor, top_k: int) -> torch.Tensor:
    """``Σ_u Σ_t g(s_u(competitor_u) − s_u(t))`` with user representations from ``seqs``."""
    logits = next_logits(model, seqs)
    comp = competitors(logits, histories, targets, top_k)
    s_comp = logits.gather(1, comp.unsqueeze(1))  # [U, 1]
    s_t = logits[:, targets]  # [U, T]
    return soft_hinge(s_comp - s_t).sum()


def upload_rows(update: Mapping[str, torch.Tensor], item_names: tuple[str, ...], targets: np.ndarray,
                items_limit: int, share: int, n_shares: int) -> np.ndarray:
    """Item rows of one attacker's upload: targets + its share of the largest-gradient rows."""
    norms = None
    for name in item_names:
        if name not in update:
            continue
        v = update[name].detach()
        r = v.reshape(v.shape[0], -1).pow(2).sum(1) if v.dim() > 1 else v.pow(2)
        norms = r if norms is None else norms[: len(r)] + r[: len(norms)]
    if norms is None:
        return np.asarray(targets, dtype=np.int64)
    norms = norms.clone()
    norms[0] = -1.0  # padding row
    norms[torch.as_tensor(targets)] = -1.0
    order = torch.argsort(-norms, stable=True).cpu().numpy()
    order = order[norms.cpu().numpy()[order] > 0]
    mine = order[share::max(1, n_shares)][: max(0, items_limit - len(targets))]
    return np.concatenate([np.asarray(targets, dtype=np.int64), mine.astype(np.int64)])


def eligible_public_users(public: list[np.ndarray], benign: np.ndarray,
                          targets: np.ndarray) -> np.ndarray:
    """Benign users whose public sub-sequence is non-empty and holds no target (sorted ids).

    One pass over all public interactions (no per-user Python work beyond collecting the
    lengths), so 10^6 users cost a fraction of a second.
    """
    n = len(public)
    lengths = np.fromiter((len(s) for s in public), dtype=np.int64, count=n)
    flat = np.concatenate(public) if n else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(n), lengths)
    has_target = np.bincount(owner[np.isin(flat, targets)], minlength=n) > 0
    ok = np.zeros(n, dtype=bool)
    ok[np.asarray(benign, dtype=np.int64)] = True
    return np.flatnonzero(ok & (lengths > 0) & ~has_target)


class FedRecAttack(Attack):
    """FedRecAttack (see module docstring).

    Parameters
    ----------
    top_k : int
        K of the competitor (reference 10).
    max_users : int
        Approximated users per round (sampled among the public users without the target).
    items_limit : int
        Item rows per upload, targets included (reference command: 60).
    grad_limit : float
        L2 clip of each item row and of the encoder block (reference per-row clip: 1.0).
    max_norm : float or None
        Optional L2 clip of the whole upload.
    scale : float
        Multiplies the update.
    """

    name = "fedrecattack"
    requires = ("public",)

    def __init__(self, top_k: int = 10, max_users: int = 256, items_limit: int = 60,
                 grad_limit: float = 1.0, max_norm: float | None = None, scale: float = 1.0) -> None:
        super().__init__(scale)
        if int(top_k) < 1 or int(max_users) < 1 or int(items_limit) < 1:
            raise ValueError("top_k/max_users/items_limit: expected >= 1")
        if float(grad_limit) <= 0 or (max_norm is not None and float(max_norm) <= 0):
            raise ValueError("grad_limit/max_norm: expected > 0")
        self.top_k = int(top_k)
        self.max_users = int(max_users)
        self.items_limit = int(items_limit)
        self.grad_limit = float(grad_limit)
        self.max_norm = None if max_norm is None else float(max_norm)
        self._eligible: tuple[ThreatModel, tuple, np.ndarray] | None = None  # see below

    def approximated_users(self, threat: ThreatModel, targets: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Public sub-sequences of up to ``max_users`` users without a target in them."""
        public = require_public(threat, self.name)
        key = tuple(np.asarray(targets).tolist())
        cached = self._eligible  # the same for the whole run: computed once per threat model
        if cached is None or cached[0] is not threat or cached[1] != key:
            cached = (threat, key, eligible_public_users(public, threat.benign_users(), targets))
            self._eligible = cached
        ok = cached[2]
        if len(ok) > self.max_users:
            ok = np.sort(rng.choice(ok, size=self.max_users, replace=False))
        return [np.asarray(public[u], dtype=np.int64) for u in ok.tolist()]

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        targets_np = targets_of(threat)
        targets = torch.as_tensor(targets_np)
        users = self.approximated_users(threat, targets_np, attack_rng(rc, client_id, STREAM_TAG))
        if not users:
            zeros = {n: torch.zeros_like(v) for n, v in global_params.items()}
            return Update(zeros, account_examples(threat, client_id), {"loss": 0.0, "users": 0.0})
        seqs = as_input(model, users)

        def loss_fn(m: SequentialRecommender, step: int) -> torch.Tensor:
            m.eval()
            return fedrecattack_loss(m, seqs, users, targets, self.top_k)

        params, loss = loss_update(model, global_params, loss_fn, rc)
        item_names = tuple(n for n in model.item_param_names if n in params)
        mal = np.sort(np.asarray(threat.malicious_ids))
        share = int(np.searchsorted(mal, client_id))
        rows = upload_rows(params, item_names, targets_np, self.items_limit, share, len(mal))
        special = np.arange(model.n_items + 1, model.item_emb.weight.shape[0])  # e.g. BERT4Rec's mask
        rows = np.concatenate([rows, special])
        params = restrict_item_rows(params, item_names, rows)
        params = {n: (clip_rows(v, self.grad_limit) if n in item_names else v) for n, v in params.items()}
        params = clip_total(params, self.grad_limit, [n for n in params if n not in item_names])
        if self.max_norm is not None:
            params = clip_total(params, self.max_norm)
        return Update(params, account_examples(threat, client_id),
                      {"loss": loss, "users": float(len(users)), "rows": float(len(rows) - len(special))})
