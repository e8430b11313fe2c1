"""A-ra / A-hum: promote the target for approximated benign users.

Rong, Zhang, He, Li, Chen & Yin, "Poisoning Deep Learning Based Recommender Model in Federated
Learning Scenarios", IJCAI 2022 (arXiv 2204.13594). Without access to benign users' data, the
attacker approximates benign users and crafts the gradient that makes the (global) model
recommend the target to them: **A-ra** uses random user representations; **A-hum** mines
*hard* users — random users optimised for a few gradient steps to *dislike* the target — so the
poisoned gradient also covers users the model currently steers away from the target. The upload
minimises ``mean_u −log σ(z_u(target))`` over the approximated users (reference: 10 users,
re-drawn every round).

Adaptation to sequential models (where a user is represented by its history, not by a free
embedding vector):

* an approximated user is a **random history**: uniform random non-target items, its length
  drawn from the benign length distribution (or ``seq_len``), truncated to the model's input
  window; its representation is the sequence of *input embeddings* fed to the encoder through
  the model's ``encode(inputs, input_embeddings)`` hook;
* **A-ra** (``mining_steps: 0``, registry alias ``a_ra``) uses the random histories' embeddings
  as they are;
* **A-hum** mines hard users in input-embedding space: ``mining_steps`` SGD steps of size
  ``mining_lr`` on the input embeddings (padding kept at zero) minimising the BCE of "does not
  like the target", ``softplus(z_target)``, at the global parameters (reference: 30 steps);
* the approximated users' input embeddings are then fixed inputs (like the reference's user
  embeddings, which are not uploaded), so the upload is the gradient of the promotion loss
  w.r.t. the encoder and the output embeddings (FedSGD) or the FedAvg delta of local SGD on it.
  All passes run in eval mode.

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
    input_embeddings,
    load_params,
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

#: Tag of the approximated users' random stream.
STREAM_TAG = 0xA4A


def mine_hard_users(model: SequentialRecommender, seqs: torch.Tensor, emb: torch.Tensor,
                    targets: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """A-hum's mining: ``steps`` SGD steps on input embeddings minimising ``softplus(z_target)``.

    Parameters
    ----------
    model : SequentialRecommender
        Model at the global parameters (eval mode is set).
    seqs : Tensor
        Left-padded ids ``[U, L]`` (they define padding).
    emb : Tensor
        Initial input embeddings ``[U, L, d]``.
    targets : Tensor
        Target ids.
    steps, lr : int, float
        Mining steps and step size.

    Returns
    -------
    Tensor
        Mined input embeddings (detached); padding rows stay zero.
    """
    model.eval()
    keep = (seqs > 0).unsqueeze(-1).to(emb.dtype)
    x = emb.detach().clone()
    for _ in range(int(steps)):
        x.requires_grad_(True)
        dislike = F.softplus(next_logits(model, seqs, x)[:, targets]).sum()
        (g,) = torch.autograd.grad(dislike, x)
        x = (x - lr * g * keep).detach()
    return x


class ApproximatedUsersAttack(Attack):
    """A-hum (``mining_steps > 0``) / A-ra (``mining_steps = 0``); see module docstring.

    Parameters
    ----------
    n_users : int
        Approximated users per round (reference 10).
    mining_steps : int
        Hard-user mining steps (reference 30; 0 = A-ra).
    mining_lr : float
        Mining step size on the input embeddings.
    seq_len : int or None
        Length of the random histories (None: benign length distribution).
    scale : float
        Multiplies the update.
    """

    name = "a_hum"

    def __init__(self, n_users: int = 10, mining_steps: int = 30, mining_lr: float = 0.1,
                 seq_len: int | None = None, scale: float = 1.0) -> None:
        super().__init__(scale)
        if int(n_users) < 1 or int(mining_steps) < 0:
            raise ValueError("n_users >= 1 and mining_steps >= 0 expected")
        if float(mining_lr) <= 0:
            raise ValueError(f"mining_lr={mining_lr}: expected > 0")
        if seq_len is not None and int(seq_len) < 1:
            raise ValueError(f"seq_len={seq_len}: expected >= 1")
        self.n_users = int(n_users)
        self.mining_steps = int(mining_steps)
        self.mining_lr = float(mining_lr)
        self.seq_len = None if seq_len is None else int(seq_len)

    def users(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
              client_id: int, threat: ThreatModel, rc: RoundConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The approximated users of this round: ids ``[U, L]`` and input embeddings ``[U, L, d]``."""
        targets_np = targets_of(threat)
        rng = attack_rng(rc, client_id, STREAM_TAG)
        hist = random_histories(rng, threat, self.n_users, model.n_items, targets_np,
                                history_window(model), self.seq_len)
        seqs = to_tensor(pad_left(hist, history_window(model)))
        load_params(model, global_params)
        with torch.no_grad():
            emb = input_embeddings(model, seqs)
        if self.mining_steps:
            emb = mine_hard_users(model, seqs, emb, torch.as_tensor(targets_np), self.mining_steps,
                                  self.mining_lr)
        return seqs, emb.detach()

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        targets = torch.as_tensor(targets_of(threat))
        seqs, emb = self.users(model, global_params, client_id, threat, rc)

        def loss_fn(m: SequentialRecommender, step: int) -> torch.Tensor:
            m.eval()
            return promotion_loss(next_logits(m, seqs, emb), targets)

        params, loss = loss_update(model, global_params, loss_fn, rc)
        return Update(params, account_examples(threat, client_id), {"loss": loss})
