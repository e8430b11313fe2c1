"""Fake-user data poisoning: Random (RA), Popular and Bandwagon profiles.

The classic shilling baselines (Lam & Riedl, WWW 2004; Mobasher et al., ACM TOIT 2007) as used
against federated recommenders by FedRecAttack (Rong, Zhang, He, Li, Chen, Yin; ICDE 2022,
arXiv 2204.01499; ``Random``/``Popular``/``Bandwagon``) and PoisonFedDLRS (Rong et al., IJCAI
2022, arXiv 2204.13594; ``RA``). A malicious client fabricates a fake profile that contains the
target items and then behaves exactly like a benign client on it (the benign update function,
so FedSGD gradient or FedAvg delta with the benign loss, negatives and masks).

Adaptation to sequential models:

* A profile is an ordered sequence. Its **length** is ``items_limit`` when given, else a draw
  from the length distribution of the benign training sequences (clipped to
  ``[2, max_len + 1]``), so fake users look like real ones in size.
* **Target position**: ``target_position: last`` (default) puts the target(s) at the end, where
  the next-item loss directly teaches "after such a history comes the target" (the position
  a recommendation is scored at); ``random`` inserts them at uniformly random slots.
* **random** (RA): the other items are uniform without replacement over all non-target items,
  in random order.
* **popular**: the other items are the most popular non-target items (training counts; needs
  ``attack.knowledge.popularity``), in a random order per fake user.
* **bandwagon**: a ``popular_share`` of the other items comes from the ``popular_pool`` most
  popular fraction of items (FedRecAttack: 10 % of the profile from the top 10 % of items), the
  rest uniform over the remaining items; random order. Needs popularity.
* A fake user keeps its profile for the whole run (drawn from ``(seed, client_id)``), as the
  reference fake users do; the attack object stays stateless.

The reported ``num_examples`` is the benign count of the fabricated sequence (``len − 1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attacks.base import DataPoisoningAttack
from attacks.common import (
    place_target,
    profile_rng,
    require_popularity,
    sample_items_outside,
    sample_lengths,
    targets_of,
)
from clients.update import RoundConfig

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

#: Tag of the fake-profile random stream.
PROFILE_TAG = 0xFA4E


def popularity_order(counts: np.ndarray, n_items: int, exclude: np.ndarray) -> np.ndarray:
    """Items ``1..n_items`` minus ``exclude``, most popular first (ties by id)."""
    items = np.arange(1, n_items + 1)
    pop = np.asarray(counts, dtype=np.float64)[1: n_items + 1]
    order = items[np.lexsort((items, -pop))]
    return order[~np.isin(order, exclude)]


def random_profile(rng: np.random.Generator, n_items: int, targets: np.ndarray, n_fill: int) -> np.ndarray:
    """``n_fill`` distinct random non-target items (RA filler)."""
    n_fill = min(n_fill, n_items - len(targets))
    return sample_items_outside(rng, n_items, targets, n_fill, replace=False)


def popular_profile(rng: np.random.Generator, counts: np.ndarray, n_items: int,
                    targets: np.ndarray, n_fill: int) -> np.ndarray:
    """The ``n_fill`` most popular non-target items, in a random order."""
    top = popularity_order(counts, n_items, targets)[:n_fill]
    return rng.permutation(top)


def bandwagon_profile(rng: np.random.Generator, counts: np.ndarray, n_items: int, targets: np.ndarray,
                      n_fill: int, popular_share: float, popular_pool: float) -> np.ndarray:
    """``popular_share`` of ``n_fill`` from the top ``popular_pool`` items, the rest random."""
    ranked = popularity_order(counts, n_items, targets)
    pool = ranked[: max(1, int(np.ceil(popular_pool * n_items)))]
    n_fill = min(n_fill, len(ranked))
    n_pop = min(len(pool), int(round(popular_share * n_fill)))
    pop = rng.choice(pool, size=n_pop, replace=False) if n_pop else np.zeros(0, np.int64)
    rest_pool = ranked[~np.isin(ranked, pop)]
    rest = rng.choice(rest_pool, size=min(n_fill - n_pop, len(rest_pool)), replace=False)
    return rng.permutation(np.concatenate([pop, rest]).astype(np.int64))


class FakeProfileAttack(DataPoisoningAttack):
    """Base of the fabricated-profile baselines (length and target placement).

    Parameters
    ----------
    items_limit : int or None
        Profile length (targets included); None draws it from the benign length distribution.
    target_position : str
        ``"last"`` or ``"random"``.
    scale : float
        Multiplies the update.
    """

    def __init__(self, items_limit: int | None = None, target_position: str = "last",
                 scale: float = 1.0) -> None:
        super().__init__(scale)
        if items_limit is not None and int(items_limit) < 2:
            raise ValueError(f"items_limit={items_limit}: expected >= 2")
        if target_position not in ("last", "random"):
            raise ValueError(f"target_position={target_position!r}: expected 'last' or 'random'")
        self.items_limit = None if items_limit is None else int(items_limit)
        self.target_position = target_position

    def filler(self, rng: np.random.Generator, threat: ThreatModel, n_items: int,
               targets: np.ndarray, n_fill: int) -> np.ndarray:
        """The non-target items of the profile (subclasses)."""
        raise NotImplementedError

    def fabricate(self, client_id: int, threat: ThreatModel, rc: RoundConfig, n_items: int,
                  max_len: int | None = None) -> np.ndarray:
        """The fake user's profile (fixed across rounds)."""
        targets = targets_of(threat)
        rng = profile_rng(rc.seed, client_id, PROFILE_TAG)
        cap = max_len if max_len is not None else (self.items_limit or 200)
        length = int(sample_lengths(threat, rng, 1, self.items_limit, cap)[0])
        n_fill = max(0, length - len(targets))
        prefix = self.filler(rng, threat, n_items, targets, n_fill)
        return place_target(prefix, targets, self.target_position, rng)


class RandomAttack(FakeProfileAttack):
    """RA: random items + target (see module docstring)."""

    name = "random"

    def filler(self, rng, threat, n_items, targets, n_fill):  # noqa: D102
        return random_profile(rng, n_items, targets, n_fill)


class PopularAttack(FakeProfileAttack):
    """Popular items + target (needs ``attack.knowledge.popularity``)."""

    name = "popular"
    requires = ("popularity",)

    def filler(self, rng, threat, n_items, targets, n_fill):  # noqa: D102
        return popular_profile(rng, require_popularity(threat, self.name), n_items, targets, n_fill)


class BandwagonAttack(FakeProfileAttack):
    """Target + a share of popular items + random fillers (needs popularity).

    Parameters
    ----------
    popular_share : float
        Share of the non-target items taken from the popular pool (FedRecAttack: 0.1).
    popular_pool : float
        The popular pool is this top fraction of items by popularity (FedRecAttack: 0.1).
    items_limit, target_position, scale
        See :class:`FakeProfileAttack`.
    """

    name = "bandwagon"
    requires = ("popularity",)

    def __init__(self, popular_share: float = 0.1, popular_pool: float = 0.1,
                 items_limit: int | None = None, target_position: str = "last",
                 scale: float = 1.0) -> None:
        super().__init__(items_limit, target_position, scale)
        if not 0 <= float(popular_share) <= 1:
            raise ValueError(f"popular_share={popular_share}: expected in [0, 1]")
        if not 0 < float(popular_pool) <= 1:
            raise ValueError(f"popular_pool={popular_pool}: expected in (0, 1]")
        self.popular_share = float(popular_share)
        self.popular_pool = float(popular_pool)

    def filler(self, rng, threat, n_items, targets, n_fill):  # noqa: D102
        counts = require_popularity(threat, self.name)
        return bandwagon_profile(rng, counts, n_items, targets, n_fill, self.popular_share, self.popular_pool)
