"""Synthetic sequential-recommendation data: the embedded default dataset.

Generative model (all draws from ``numpy.random.Generator(PCG64(seed))``):

1. **Interests.** Items are split into ``n_interests`` groups of near-equal size.
2. **Popularity.** Item ``i``'s base popularity is Zipf-like, ``p_i ∝ (rank_i)^-zipf_a`` over a
   random global ranking, so a few head items collect a large share of interactions and most
   items are in a long tail. Because a user rarely repeats an item, the head's share is capped
   by the number of users; with the defaults the top 1 % of items get about 6x their uniform
   share (``SequenceDataset.stats()["top1pct_share"]`` reports it).
3. **Transitions.** Every item gets ``n_successors`` successor items drawn from its own
   interest group with probability ∝ popularity, with decreasing weights
   ``w_j ∝ 1/(j+1)``. They encode the sequential (Markov) structure.
4. **Users.** Each user draws interest weights from a Dirichlet(``interest_alpha``) prior (small
   alpha: one or two dominant interests) and a length ``min_len + Poisson-lognormal`` so the
   length distribution is right-skewed.
5. **Sequences.** The first item is drawn from a user interest, by popularity. Each next item
   follows the Markov chain (a successor of the previous item, by transition weight) with
   probability ``markov``; otherwise, with probability ``switch`` the user moves to a new
   interest drawn from its weights, and an item of the current interest is drawn by popularity.
   Items already in the user's history are re-drawn (up to a few tries) so that, as in the real
   datasets, a user rarely repeats an item.

With the defaults the next item is largely predictable from the previous one, so a sequential
model (SASRec) beats a most-popular recommender by a wide margin, while popularity alone is a
meaningful baseline. Output is a :class:`~fedrec.data.dataset.SequenceDataset`; it is
deterministic in ``seed`` and the size parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fedrec.data.dataset import SequenceDataset
from fedrec.errors import ConfigError


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic generator (see module docstring)."""

    n_users: int = 1000
    n_items: int = 500
    n_interests: int = 10
    mean_len: float = 20.0
    min_len: int = 5
    max_len: int = 200
    zipf_a: float = 1.1
    n_successors: int = 4
    markov: float = 0.7
    switch: float = 0.3
    interest_alpha: float = 0.3
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first out-of-range parameter."""
        checks = [
            ("n_users", self.n_users >= 1, ">= 1"),
            ("n_items", self.n_items >= 10, ">= 10"),
            ("n_interests", 1 <= self.n_interests <= self.n_items, "in 1..n_items"),
            ("min_len", self.min_len >= 3, ">= 3"),
            ("min_len", self.min_len <= self.max_len,
             f"<= data.synthetic.max_len={self.max_len}"),
            ("mean_len", self.mean_len >= self.min_len,
             f">= data.synthetic.min_len={self.min_len}"),
            ("zipf_a", self.zipf_a >= 0, ">= 0"),
            ("n_successors", self.n_successors >= 1, ">= 1"),
            ("markov", 0 <= self.markov <= 1, "in [0, 1]"),
            ("switch", 0 <= self.switch <= 1, "in [0, 1]"),
            ("interest_alpha", self.interest_alpha > 0, "> 0"),
        ]
        for name, ok, expect in checks:
            if not ok:
                raise ConfigError(
                    f"data.synthetic.{name}={getattr(self, name)!r}: expected {expect}"
                )


def generate(spec: SyntheticSpec | None = None, **overrides: object) -> SequenceDataset:
    """Generate a synthetic dataset.

    Parameters
    ----------
    spec : SyntheticSpec, optional
        Generator parameters (defaults if omitted).
    **overrides
        Field overrides applied on top of ``spec``.

    Returns
    -------
    SequenceDataset
        ``n_users`` sequences over items ``1..n_items`` (the name is ``"synthetic"``).
    """
    spec = spec or SyntheticSpec()
    if overrides:
        spec = SyntheticSpec(**{**asdict(spec), **overrides})
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    n, g = spec.n_items, spec.n_interests

    group = rng.permutation(np.arange(n) % g)  # interest of each item (0-based item index)
    ranks = rng.permutation(n) + 1
    pop = ranks.astype(np.float64) ** (-spec.zipf_a)
    members = [np.flatnonzero(group == k) for k in range(g)]
    member_p = [pop[m] / pop[m].sum() for m in members]

    n_succ = min(spec.n_successors, max(1, min(len(m) for m in members) - 1))
    succ = np.empty((n, n_succ), dtype=np.int64)
    for i in range(n):
        cand = members[group[i]]
        p = pop[cand].copy()
        p[cand == i] = 0.0
        if p.sum() == 0:
            p = np.ones_like(p)
            p[cand == i] = 0.0
        succ[i] = rng.choice(cand, size=n_succ, replace=False, p=p / p.sum())
    succ_w = 1.0 / np.arange(1, n_succ + 1)
    succ_w /= succ_w.sum()

    extra = max(spec.mean_len - spec.min_len, 0.0)
    sigma = 0.8
    mu = np.log(max(extra, 1e-6)) - sigma**2 / 2
    lengths = spec.min_len + rng.poisson(rng.lognormal(mu, sigma, spec.n_users))
    lengths = np.minimum(lengths, min(spec.max_len, n))
    weights = rng.dirichlet(np.full(g, spec.interest_alpha), size=spec.n_users)

    seqs: list[np.ndarray] = []
    for u in range(spec.n_users):
        seen: set[int] = set()
        out: list[int] = []
        interest = rng.choice(g, p=weights[u])
        prev = -1
        for _ in range(int(lengths[u])):
            item = -1
            for _attempt in range(8):
                if prev >= 0 and rng.random() < spec.markov:
                    cand = int(succ[prev, rng.choice(n_succ, p=succ_w)])
                else:
                    if prev >= 0 and rng.random() < spec.switch:
                        interest = rng.choice(g, p=weights[u])
                    cand = int(rng.choice(members[interest], p=member_p[interest]))
                if cand not in seen:
                    item = cand
                    break
            if item < 0:  # fall back to any unseen item (rare: tiny vocabularies)
                unseen = np.setdiff1d(np.arange(n), np.fromiter(seen, dtype=np.int64))
                item = int(rng.choice(unseen))
            seen.add(item)
            out.append(item)
            prev = item
        seqs.append(np.asarray(out, dtype=np.int64) + 1)
    ds = SequenceDataset(seqs, n, "synthetic", user_ids=np.arange(1, spec.n_users + 1))
    ds.meta["synthetic"] = asdict(spec)
    return ds
