"""Full-ranking top-N metrics with several held-out positives per user (Recall@K, NDCG@K, AUC).

Shared by the centralized baselines evaluated on interaction splits rather than leave-one-out
sequences (MG-BERT's downstream NCF, CDL). Every candidate item of a user is scored ("full
ranking" over the candidate pool); the user's training items are excluded; the held-out items
are the positives:

* Recall@K = |top-K ∩ P| / |P|;
* NDCG@K = Σ_{r < K, item_r ∈ P} 1/log2(r + 2) / Σ_{r < min(K, |P|)} 1/log2(r + 2);
* AUC = share of (positive, negative candidate) pairs ordered correctly, ties counting 1/2.

Users without a positive are skipped; the metrics are means over the others. A non-finite score
raises :class:`~fedrec.errors.NonFiniteError` (a number printed is true or absent).
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.errors import NonFiniteError


def topn_metrics(scores: torch.Tensor, positives: torch.Tensor, excluded: torch.Tensor,
                 ks: list[int]) -> dict[str, np.ndarray]:
    """Per-user Recall@K, NDCG@K and AUC of one block of users.

    Parameters
    ----------
    scores : Tensor [U, C]
        Scores of the candidates (higher = recommended first).
    positives, excluded : Tensor [U, C], bool
        Held-out positives; candidates removed from the ranking (training items). A positive
        must not be excluded.
    ks : list of int
        Cut-offs.

    Returns
    -------
    dict
        ``Recall@K``, ``NDCG@K``, ``AUC``: float64 arrays over the users with a positive.

    Raises
    ------
    NonFiniteError
        A non-finite score.
    ValueError
        A positive that is also excluded.
    """
    if not bool(torch.isfinite(scores).all()):
        raise NonFiniteError("the model's scores are not finite")
    if bool((positives & excluded).any()):
        raise ValueError("a held-out positive is also excluded from the ranking")
    keep = positives.any(1)
    s, pos, exc = scores[keep].double(), positives[keep], excluded[keep]
    n_pos = pos.sum(1).double()
    out: dict[str, np.ndarray] = {}
    ranked = s.masked_fill(exc, float("-inf"))
    kmax = min(max(ks), s.shape[1])
    top = ranked.topk(kmax, dim=1).indices
    hit = pos.gather(1, top).double()
    disc = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float64) + 2.0)
    for k in ks:
        kk = min(k, kmax)
        out[f"Recall@{k}"] = (hit[:, :kk].sum(1) / n_pos).numpy()
        ideal = torch.cumsum(disc, 0)[(n_pos.clamp(max=kk) - 1).long()]
        out[f"NDCG@{k}"] = ((hit[:, :kk] * disc[:kk]).sum(1) / ideal).numpy()
    neg = ~(pos | exc)
    neg_sorted = s.masked_fill(~neg, float("inf")).sort(1).values
    below = torch.searchsorted(neg_sorted, s.contiguous(), side="left").double()
    upto = torch.searchsorted(neg_sorted, s.contiguous(), side="right").double()
    correct = ((below + upto) / 2 * pos).sum(1)
    n_neg = neg.sum(1).double()
    out["AUC"] = (correct / (n_pos * n_neg).clamp_min(1)).numpy()
    return out


def mean_metrics(blocks: list[dict[str, np.ndarray]], prefix: str) -> dict[str, float]:
    """Means over the users of several :func:`topn_metrics` blocks, keys ``<prefix>/<name>``."""
    if not blocks:
        return {}
    out = {}
    for key in blocks[0]:
        vals = np.concatenate([b[key] for b in blocks])
        if len(vals):
            out[f"{prefix}/{key}"] = float(vals.mean())
    return out
