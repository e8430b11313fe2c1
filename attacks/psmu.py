"""PSMU: poisoning with synthetic users that accounts for the target's alternative products.

Yuan, Nguyen, He, Chen & Yin, "Manipulating Federated Recommender Systems: Poisoning with
Synthetic Users and Its Countermeasures", SIGIR 2023 (arXiv 2304.03054). Only the abstract
could be read; it states that malicious clients are *synthetic users* needing *no prior
knowledge* (no popularity, no benign data), and that their poisoned gradients take the target
items' *alternative products* into account — promoting a target is hard while the products
users would pick instead of it still outrank it.

Our reading, adapted to sequential models:

* **synthetic users**: ``n_users`` random histories per round (uniform non-target items, lengths
  from the benign length distribution or ``seq_len``), fed to the global model as ordinary item
  sequences (so, like a benign client, the upload also touches the embeddings of the items in
  those histories);
* **alternative products** of a target ``t``: the ``n_alternatives`` items whose current global
  embeddings are closest to ``e_t`` in cosine similarity (targets excluded) — the items the
  model treats as substitutes of ``t``;
* **loss**: ``mean_{u,t} −log σ(z_u(t)) + alternative_weight · mean_{u,t,a} −log σ(z_u(t) − z_u(a))``:
  raise the target for the synthetic users and rank it above each of its alternatives;
* upload = ``∇θ L`` (FedSGD) or the FedAvg delta of local SGD on ``L`` (eval mode).

``num_examples`` is the controlled account's benign count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from attacks.base import Attack
from attacks.common import (
    account_examples,
    attack_rng,
    history_window,
    loss_update,
    next_logits,
    promotion_loss,
    random_histories,
    targets_of,
)
from clients.update import RoundConfig, Update
from fedrec.data.batching import pad_left, to_tensor
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

#: Tag of PSMU's random stream (synthetic users).
STREAM_TAG = 0x9504


def alternative_products(item_table: torch.Tensor, targets: torch.Tensor, n_alternatives: int) -> torch.Tensor:
    """The ``n_alternatives`` items most cosine-similar to each target ``[T, n_alternatives]``.

    ``item_table`` is ``[n_items + 1, d]`` (row 0 = padding, never chosen); targets are never
    alternatives.
    """
    table = F.normalize(item_table.detach(), dim=-1)
    sim = table[targets] @ table.T  # [T, V]
    sim[:, 0] = float("-inf")
    sim[:, targets] = float("-inf")
    k = min(int(n_alternatives), item_table.shape[0] - 1 - len(targets))
    return torch.topk(sim, k, dim=1).indices


def psmu_loss(model: SequentialRecommender, seqs: torch.Tensor, targets: torch.Tensor,
              alternatives: torch.Tensor, alternative_weight: float) -> torch.Tensor:
    """Promotion of the targets plus their margin over their alternatives (see module docstring)."""
    logits = next_logits(model, seqs)
    loss = promotion_loss(logits, targets)
    if alternative_weight > 0 and alternatives.numel():
        z_t = logits[:, targets].unsqueeze(-1)  # [U, T, 1]
        z_a = logits[:, alternatives]  # [U, T, A]
        loss = loss + alternative_weight * F.softplus(z_a - z_t).mean()
    return loss


class PSMU(Attack):
    """PSMU (see module docstring).

    Parameters
    ----------
    n_users : int
        Synthetic users per round.
    n_alternatives : int
        Alternative products per target.
    alternative_weight : float
        Weight of the margin-over-alternatives term.
    seq_len : int or None
        Synthetic history length (None: benign length distribution).
    scale : float
        Multiplies the update.
    """

    name = "psmu"

    def __init__(self, n_users: int = 10, n_alternatives: int = 10, alternative_weight: float = 1.0,
                 seq_len: int | None = None, scale: float = 1.0) -> None:
        super().__init__(scale)
        if int(n_users) < 1 or int(n_alternatives) < 0 or float(alternative_weight) < 0:
            raise ValueError("n_users >= 1, n_alternatives >= 0, alternative_weight >= 0 expected")
        if seq_len is not None and int(seq_len) < 1:
            raise ValueError(f"seq_len={seq_len}: expected >= 1")
        self.n_users = int(n_users)
        self.n_alternatives = int(n_alternatives)
        self.alternative_weight = float(alternative_weight)
        self.seq_len = None if seq_len is None else int(seq_len)

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        targets_np = targets_of(threat)
        targets = torch.as_tensor(targets_np)
        rng = attack_rng(rc, client_id, STREAM_TAG)
        hist = random_histories(rng, threat, self.n_users, model.n_items, targets_np,
                                history_window(model), self.seq_len)
        seqs = to_tensor(pad_left(hist, history_window(model)))
        alts = alternative_products(global_params["item_emb.weight"][: model.n_items + 1], targets,
                                    self.n_alternatives)

        def loss_fn(m: SequentialRecommender, step: int) -> torch.Tensor:
            m.eval()
            return psmu_loss(m, seqs, targets, alts, self.alternative_weight)

        params, loss = loss_update(model, global_params, loss_fn, rc)
        return Update(params, account_examples(threat, client_id), {"loss": loss})
