"""Evaluation of a recommender on held-out items: utility and target exposure.

Runs the metrics of :mod:`fedrec.metrics` over all users in chunks, under both protocols:
full ranking and sampled candidates (the number of negatives and how they are drawn are part
of :class:`EvalProtocol` and are reported with every result). Metric names are
``"{protocol}/{metric}"``, e.g. ``full/NDCG@10`` and ``sampled/ER@10``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.batching import pad_left, to_tensor
from fedrec.errors import NonFiniteError
from fedrec.metrics import (
    exposure,
    full_ranks,
    history_mask,
    hit_rate,
    ndcg,
    reciprocal_rank,
    sample_negatives,
    sampled_ranks,
)

Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalProtocol:
    """How to evaluate.

    Parameters
    ----------
    ks : tuple of int
        Cut-offs for HR@K, NDCG@K and ER@K.
    full : bool
        Run full ranking over all items.
    sampled : bool
        Run sampled-candidate ranking.
    n_negatives : int
        Negatives per user in the sampled protocol (SASRec paper: 100; DV-FSR code: 1,000).
    negative_sampling : str
        ``"uniform"`` or ``"popularity"`` (∝ training interaction count).
    exclude_history : bool
        Remove history items from the full ranking (sampled negatives never include them).
    seed : int
        Seed of the negative sampler (the same negatives at every evaluation).
    batch_users : int
        Users scored per chunk.
    """

    ks: tuple[int, ...] = (5, 10, 20)
    full: bool = True
    sampled: bool = True
    n_negatives: int = 100
    negative_sampling: str = "uniform"
    exclude_history: bool = True
    seed: int = 0
    batch_users: int = 1024


def popularity_scorer(counts: np.ndarray) -> Scorer:
    """Most-popular recommender: every user gets the item interaction counts as scores."""
    pop = torch.as_tensor(counts, dtype=torch.float32)

    def score(seqs: torch.Tensor) -> torch.Tensor:
        out = pop.expand(seqs.shape[0], -1).clone()
        out[:, 0] = float("-inf")
        return out

    return score


@torch.no_grad()
def evaluate(
    scorer: Scorer,
    histories: Sequence[np.ndarray],
    held_out: np.ndarray,
    protocol: EvalProtocol,
    max_len: int,
    n_items: int,
    targets: Sequence[int] | None = None,
    popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """Evaluate ``scorer`` on every user.

    Parameters
    ----------
    scorer : callable
        Maps left-padded histories ``[B, L]`` to scores ``[B, n_items + 1]`` (e.g.
        ``model.scores``); called under ``torch.no_grad``. A scorer with the attribute
        ``needs_rows = True`` is called as ``scorer(seqs, rows)``, ``rows`` being the indices
        into ``histories`` of the chunk's users (for models with per-user parameters).
    histories : sequence of numpy.ndarray
        Input history of each user.
    held_out : numpy.ndarray
        The item each user should rank high.
    protocol : EvalProtocol
        Protocol settings.
    max_len : int
        History length the scorer reads.
    n_items : int
        Item vocabulary size.
    targets : sequence of int, optional
        Attack target items; adds ER@K and puts the targets into every sampled candidate list.
    popularity : numpy.ndarray, optional
        Item counts for popularity-weighted negative sampling.

    Returns
    -------
    dict
        Metric name → mean over users (ER over eligible users).
    """
    gen = torch.Generator().manual_seed(protocol.seed)
    v = n_items + 1
    tgt = torch.as_tensor(list(targets or []), dtype=torch.long)
    weights = None
    if protocol.negative_sampling == "popularity":
        if popularity is None:
            raise ValueError("eval.negative_sampling='popularity' needs item popularity")
        weights = torch.as_tensor(popularity, dtype=torch.float64) + 1e-3
    sums: dict[str, float] = {}
    n_users = 0
    n_eligible = 0
    # users sorted by history length so each chunk is padded only to its own longest member
    order = np.argsort([min(len(h), max_len) for h in histories], kind="stable")
    held_out = np.asarray(held_out)
    for start in range(0, len(histories), protocol.batch_users):
        rows = order[start:start + protocol.batch_users]
        hist = [histories[i] for i in rows]
        item = torch.as_tensor(held_out[rows], dtype=torch.long)  # on the default device
        seqs = to_tensor(pad_left(hist, max_len))
        scores = (scorer(seqs, rows) if getattr(scorer, "needs_rows", False) else scorer(seqs))
        scores = scores.to(torch.float32)
        check_scores(scores)
        hmask = history_mask(hist, v)
        b = len(hist)
        eligible = torch.ones(b, dtype=torch.bool)
        if len(tgt):
            eligible = ~hmask[:, tgt].any(1) & ~(item.unsqueeze(1) == tgt).any(1)
        n_users += b
        n_eligible += int(eligible.sum())

        def add(name: str, values: torch.Tensor) -> None:
            sums[name] = sums.get(name, 0.0) + float(values.sum())

        if protocol.full:
            excl = hmask if protocol.exclude_history else None
            r = full_ranks(scores, item, excl)
            _accumulate("full", r, protocol.ks, add)
            if len(tgt):
                tr = full_ranks(scores, tgt.expand(b, -1), excl)
                for k in protocol.ks:
                    add(f"full/ER@{k}", exposure(tr, eligible, k) * eligible.sum())
        if protocol.sampled:
            forbidden = hmask.clone()
            forbidden[torch.arange(b), item] = True
            if len(tgt):
                forbidden[:, tgt] = True
            negs = sample_negatives(protocol.n_negatives, forbidden, gen, weights)
            ranked = torch.cat([item.unsqueeze(1), tgt.expand(b, -1)], dim=1)
            r = sampled_ranks(scores, ranked, negs)
            _accumulate("sampled", r[:, 0], protocol.ks, add)
            if len(tgt):
                for k in protocol.ks:
                    add(f"sampled/ER@{k}", exposure(r[:, 1:], eligible, k) * eligible.sum())
    out = {}
    for name, total in sums.items():
        denom = n_eligible if "/ER@" in name else n_users
        out[name] = total / max(denom, 1)
    return dict(sorted(out.items()))


def check_scores(scores: torch.Tensor) -> None:
    """Refuse scores that are not a ranking: NaN or ``+inf`` on an item, or a user whose items
    are all ``-inf``. Column 0 (padding) is ignored.

    Raises
    ------
    NonFiniteError
        Naming how many users' scores are broken.
    """
    items = scores[:, 1:]
    bad = (torch.isnan(items) | torch.isposinf(items)).any(1) | torch.isneginf(items).all(1)
    if bool(bad.any()):
        raise NonFiniteError(f"the model's scores are not finite (NaN/inf) for {int(bad.sum())} "
                             f"of {scores.shape[0]} users in an evaluation batch")


def _accumulate(prefix: str, ranks: torch.Tensor, ks: Sequence[int], add: Callable) -> None:
    for k in ks:
        add(f"{prefix}/HR@{k}", hit_rate(ranks, k))
        add(f"{prefix}/NDCG@{k}", ndcg(ranks, k))
    add(f"{prefix}/MRR", reciprocal_rank(ranks))
