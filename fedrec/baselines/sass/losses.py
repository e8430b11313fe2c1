"""Losses of SASS (:mod:`fedrec.baselines.sass`): the scenario-supervised contrastive loss of the
pre-training stage and the two retrieval losses of the fine-tuning stage.

Zhang et al., "Scenario-Adaptive and Self-Supervised Model for Multi-Scenario Personalized
Recommendation", CIKM 2022 (arXiv 2208.11457). The paper names an InfoNCE-style contrastive
pre-training task and a retrieval fine-tuning task; the exact forms below (one-direction or
symmetric InfoNCE over in-batch negatives, sampled softmax or BCE against shared sampled
negatives, cosine scores divided by a temperature) are our inference.

All inputs are representations already L2-normalised by the towers, so every logit is a
cosine similarity divided by a temperature.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float,
             symmetric: bool = True) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row ``k`` of ``a`` and row ``k`` of ``b`` are positives.

    ``L = mean_k -log softmax_j(a_k . b_j / t)[k]``; with ``symmetric`` the mean of that and the
    same with ``a`` and ``b`` swapped.

    Parameters
    ----------
    a, b : torch.Tensor
        ``[B, d]`` two views (an entity's representations in two scenarios).
    temperature : float
        ``t > 0``.
    symmetric : bool
        Average both directions.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


def _logits(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
            temperature: float, pos_ids: torch.Tensor | None,
            neg_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive logits ``[B]`` and negative logits ``[B, K]`` (a negative equal to the row's
    positive id is masked to ``-inf``)."""
    pos_logit = (user * pos).sum(-1) / temperature
    neg_logit = user @ neg.T / temperature
    if pos_ids is not None and neg_ids is not None:
        neg_logit = neg_logit.masked_fill(pos_ids[:, None] == neg_ids[None, :], float("-inf"))
    return pos_logit, neg_logit


def sampled_softmax(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                    temperature: float, pos_ids: torch.Tensor | None = None,
                    neg_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled-softmax retrieval loss: ``mean_b -log softmax([s_b+, s_b1-, ..., s_bK-])[0]``.

    Parameters
    ----------
    user : torch.Tensor
        ``[B, d]`` user representations.
    pos : torch.Tensor
        ``[B, d]`` their positive items.
    neg : torch.Tensor
        ``[K, d]`` negatives shared by the batch.
    temperature : float
        Divides every cosine score.
    pos_ids, neg_ids : torch.Tensor, optional
        Item ids; a negative that is the row's own positive is left out of that row.
    """
    pos_logit, neg_logit = _logits(user, pos, neg, temperature, pos_ids, neg_ids)
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def bce_with_negatives(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                       temperature: float, pos_ids: torch.Tensor | None = None,
                       neg_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy against sampled negatives:
    ``mean_b [ -log s(s_b+) + mean_k -log(1 - s(s_bk-)) ]`` with ``s`` the sigmoid.

    Same parameters as :func:`sampled_softmax`; a masked negative counts as ``-log(1 - 0) = 0``
    (the mean over ``k`` still divides by ``K``).
    """
    pos_logit, neg_logit = _logits(user, pos, neg, temperature, pos_ids, neg_ids)
    return (F.softplus(-pos_logit) + F.softplus(neg_logit).mean(1)).mean()


RETRIEVAL_LOSSES = {"sampled_softmax": sampled_softmax, "bce": bce_with_negatives}
