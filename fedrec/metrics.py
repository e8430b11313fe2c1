"""Ranking metrics for next-item recommendation and target-item exposure.

* **Full ranking**: the held-out item is ranked against every item (optionally with the user's
  history items removed).
* **Sampled candidates**: the held-out item is ranked against ``N`` sampled negatives, drawn
  uniformly or by popularity from the items not in the user's history (the protocol of the
  SASRec paper with N = 100, and of DV-FSR's reference code with N = 1,000 plus the target).
* **ER@K** (exposure rate, the attack-success metric of the federated-recommendation poisoning
  literature, e.g. Rong et al., IJCAI 2022): the share of eligible users (none of the target
  items in their history) whose top-K list contains a target item.

A rank is the number of candidates scored strictly higher than the item (0 = top). All
functions are vectorised over users.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.errors import ConfigError

NEG_INF = float("-inf")


def hit_rate(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """``1[rank < k]`` per user."""
    return (ranks < k).to(torch.float64)


def ndcg(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """``1/log2(rank + 2)`` if ``rank < k`` else 0, per user (one relevant item)."""
    r = ranks.to(torch.float64)
    return torch.where(ranks < k, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r))


def reciprocal_rank(ranks: torch.Tensor) -> torch.Tensor:
    """``1/(rank + 1)`` per user."""
    return 1.0 / (ranks.to(torch.float64) + 1.0)


def history_mask(histories: list[torch.Tensor] | list[np.ndarray] | torch.Tensor,
                 n_cols: int) -> torch.Tensor:
    """Boolean ``[B, n_cols]`` with True at each user's history items (padding 0 ignored).

    A list of histories (tensors or numpy arrays) is padded in numpy and becomes one tensor on
    torch's default device (:func:`fedrec.device.device_scope`).
    """
    if isinstance(histories, torch.Tensor):
        rows = histories
    else:
        width = max((len(h) for h in histories), default=0)
        padded = np.zeros((len(histories), max(width, 1)), dtype=np.int64)
        for i, h in enumerate(histories):
            if len(h):
                padded[i, : len(h)] = h.cpu().numpy() if isinstance(h, torch.Tensor) else h
        rows = torch.as_tensor(padded)  # on the default device (fedrec.device.device_scope)
    mask = torch.zeros(rows.shape[0], n_cols, dtype=torch.bool)
    mask.scatter_(1, rows.clamp(0, n_cols - 1), True)
    mask[:, 0] = True
    return mask


def count_above(candidates: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Rank of each ``own[b, t]`` among ``candidates[b]``: how many score strictly higher.

    An item whose own score is NaN or ``-inf`` gets the worst rank (the number of candidate
    columns), so a broken score can never rank an item first (``NaN > x`` is False for every
    ``x``, which would otherwise give rank 0).

    Parameters
    ----------
    candidates : Tensor [B, C]
        Candidate scores (excluded candidates already at ``-inf``).
    own : Tensor [B, T]
        Scores of the ranked items.

    Returns
    -------
    Tensor [B, T]
        Integer ranks (0 = top).
    """
    ranks = (candidates.unsqueeze(1) > own.unsqueeze(2)).sum(-1)
    broken = torch.isnan(own) | torch.isneginf(own)
    return torch.where(broken, torch.full_like(ranks, candidates.shape[1]), ranks)


def full_ranks(scores: torch.Tensor, items: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of ``items[b]`` among all columns of ``scores[b]``.

    Parameters
    ----------
    scores : Tensor [B, V]
        Item scores (column 0 = padding, ignored).
    items : Tensor [B] or [B, T]
        Items to rank (several per user for multiple targets).
    exclude : Tensor [B, V] bool, optional
        Columns removed from the ranking (e.g. history items); the ranked items themselves are
        never removed.

    Returns
    -------
    Tensor
        Ranks with the shape of ``items``.
    """
    squeeze = items.dim() == 1
    items = items.view(items.shape[0], -1)
    s = scores.clone()
    s[:, 0] = NEG_INF
    if exclude is not None:
        s = s.masked_fill(exclude, NEG_INF)
    own = scores.gather(1, items)
    ranks = count_above(s, own)
    return ranks[:, 0] if squeeze else ranks


def sample_negatives(
    n: int,
    forbidden: torch.Tensor,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample ``n`` distinct items per user, avoiding ``forbidden`` items.

    Uses the Gumbel-top-k trick: ``argtopk(log w + Gumbel)`` draws without replacement with
    probability proportional to ``w`` (uniform when ``weights`` is None).

    Parameters
    ----------
    n : int
        Negatives per user.
    forbidden : Tensor [B, V] bool
        Items that may not be drawn (history, the held-out item, targets, padding column 0).
    generator : torch.Generator
        Source of randomness.
    weights : Tensor [V], optional
        Sampling weights (e.g. item popularity).

    Returns
    -------
    Tensor [B, n]
        Item ids.
    """
    b, v = forbidden.shape
    available = (~forbidden).sum(1).min().item() if b else v
    if n > available:
        raise ConfigError(f"eval.n_negatives={n}: a user has only {available} items outside their "
                          "history; lower eval.n_negatives")
    u = torch.rand(b, v, generator=generator, dtype=torch.float64, device=generator.device)
    u = u.to(forbidden.device).clamp_min(1e-300)
    key = -torch.log(-torch.log(u))
    if weights is not None:
        key = key + torch.log(weights.to(torch.float64).clamp_min(1e-300))
    key = key.masked_fill(forbidden, NEG_INF)
    return key.topk(n, dim=1).indices


def sampled_ranks(scores: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Rank of ``items[b]`` (shape [B] or [B, T]) among ``negatives[b]`` ∪ the other ranked items.

    When several items are ranked per user (test item + targets), each is ranked against the
    negatives and the other ranked items, as in a candidate list that holds all of them.
    """
    squeeze = items.dim() == 1
    items = items.view(items.shape[0], -1)
    cand = torch.cat([items, negatives], dim=1)
    cs = scores.gather(1, cand)
    own = cs[:, : items.shape[1]]
    ranks = count_above(cs, own)
    return ranks[:, 0] if squeeze else ranks


def exposure(target_ranks: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """ER@K: share of eligible users with any target ranked in the top ``k``.

    Parameters
    ----------
    target_ranks : Tensor [B, T]
        Rank of each target item for each user.
    eligible : Tensor [B] bool
        Users counted (no target in their history).
    """
    hit = (target_ranks < k).any(dim=1) & eligible
    return hit.sum().to(torch.float64) / eligible.sum().clamp_min(1)
