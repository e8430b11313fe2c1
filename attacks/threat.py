"""Threat model: who the malicious clients are, what they control and know, what they promote.

Conventions of the literature, both available:

* ``mode: add`` (DV-FSR, Qin et al., arXiv 2409.07500; PoisonFedDLRS, Rong et al., IJCAI 2022):
  ``m = floor(ρ · n_users)`` malicious clients (at least 1 when ρ > 0) are added *on top of*
  the benign users, with client ids ``n_users .. n_users + m − 1``. Each controls the account
  history of a randomly chosen real user (that user stays in the federation as a benign
  client).
* ``mode: replace`` (FedRecAttack, Rong et al., ICDE 2022): ``m`` randomly chosen users become
  malicious; their histories are the accounts they control and they no longer count as benign
  (they are excluded from evaluation).

Targets are chosen from training-split popularity: the least popular items (ties by id), ``n``
random items from a popularity quantile bucket, or explicit ids. They are also used to report
ER@K for runs without an attack, so that "no attack" is a comparable baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.config import AttackConfig, TargetConfig
from fedrec.data.dataset import split_flat
from fedrec.data.split import LeaveOneOut
from fedrec.errors import ConfigError


@dataclass
class ThreatModel:
    """The resolved threat model of a run.

    Attributes
    ----------
    n_users : int
        Users in the dataset (benign ids are a subset of ``0..n_users-1``).
    malicious_ids : numpy.ndarray
        Client ids of the malicious clients.
    accounts : dict
        Malicious client id → the training history of the account it controls.
    targets : numpy.ndarray
        Target item ids.
    popularity : numpy.ndarray or None
        Training item counts, when the attacker is assumed to know them.
    public : list of numpy.ndarray or None
        The attacker's public share of other users' interactions (FedRecAttack's ξ).
    replaced : numpy.ndarray
        Users taken over by attackers (``mode: replace``).
    lengths : numpy.ndarray or None
        Training-sequence lengths of the benign users: the length distribution fabricated
        profiles are drawn from (public summary statistics, not anyone's items).
    assumed_defense : str
        The rule an adaptive attacker assumes (``attack.knowledge.defense``; "none": none).
    quantile, budget : float
        Which benign quantile bounds each checked statistic, and the multiplier of it the
        adaptive attacker allows itself (``attack.knowledge.quantile`` / ``.budget``).
    """

    n_users: int
    malicious_ids: np.ndarray
    accounts: dict[int, np.ndarray]
    targets: np.ndarray
    popularity: np.ndarray | None = None
    public: list[np.ndarray] | None = None
    replaced: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lengths: np.ndarray | None = None
    assumed_defense: str = "none"
    quantile: float = 0.5
    budget: float = 1.0

    @property
    def n_malicious(self) -> int:
        """Number of malicious clients."""
        return len(self.malicious_ids)

    @property
    def n_clients(self) -> int:
        """Number of client ids (benign users, replaced users and added attackers)."""
        return self.n_users + (self.n_malicious - len(self.replaced))

    def benign_users(self) -> np.ndarray:
        """Ids of the benign clients (= users not replaced by attackers)."""
        mask = np.ones(self.n_users, dtype=bool)
        mask[self.replaced] = False
        return np.flatnonzero(mask)

    def participants(self) -> np.ndarray:
        """All client ids that take part in training, sorted."""
        return np.sort(np.concatenate([self.benign_users(), self.malicious_ids]))

    def is_malicious(self, client_id: int) -> bool:
        """Whether ``client_id`` is malicious."""
        return bool(np.isin(client_id, self.malicious_ids))


def select_targets(cfg: TargetConfig, counts: np.ndarray, n_items: int) -> np.ndarray:
    """Pick target items from training popularity ``counts`` (index 0 = padding).

    Raises
    ------
    ConfigError
        Ids outside ``1..n_items`` or a bucket with too few items.
    """
    if cfg.select == "none":
        return np.zeros(0, dtype=np.int64)
    items = np.arange(1, n_items + 1)
    pop = counts[1:n_items + 1]
    if cfg.select == "ids":
        ids = np.asarray(cfg.ids, dtype=np.int64)
        if len(ids) == 0:
            raise ConfigError("attack.targets.ids: expected at least one item id when select: ids")
        bad = ids[(ids < 1) | (ids > n_items)]
        if len(bad):
            raise ConfigError(f"attack.targets.ids: item {int(bad[0])} is outside 1..{n_items}")
        return ids
    if cfg.n > n_items:
        raise ConfigError(f"attack.targets.n={cfg.n}: only {n_items} items exist")
    order = np.lexsort((items, pop))  # ascending popularity, ties by id
    if cfg.select == "least_popular":
        return items[order[: cfg.n]]
    lo, hi = cfg.bucket
    if not 0 <= lo < hi <= 1:
        raise ConfigError(f"attack.targets.bucket={list(cfg.bucket)}: expected 0 <= lo < hi <= 1")
    ranked = items[order[::-1]]  # most popular first
    bucket = ranked[int(np.floor(lo * n_items)): int(np.ceil(hi * n_items))]
    if len(bucket) < cfg.n:
        raise ConfigError(f"attack.targets.bucket={list(cfg.bucket)}: holds {len(bucket)} items, "
                          f"fewer than targets.n={cfg.n}")
    rng = np.random.default_rng([cfg.seed, 7])
    return np.sort(rng.choice(bucket, size=cfg.n, replace=False))


def n_malicious(fraction: float, n_users: int) -> int:
    """``floor(ρ · n_users)``, at least 1 when ρ > 0 (DV-FSR's count)."""
    if fraction <= 0:
        return 0
    return max(1, int(fraction * n_users))


def check_knowledge(cfg: AttackConfig) -> None:
    """Fail early when the attack assumes knowledge the threat model does not grant.

    Raises
    ------
    ConfigError
        E.g. ``popular`` without ``attack.knowledge.popularity: true``.
    """
    from attacks.registry import required_knowledge  # late: the registry imports attack modules

    for key in required_knowledge(cfg.name):
        if key == "popularity" and not cfg.knowledge.popularity:
            raise ConfigError(f"attack.knowledge.popularity: attack {cfg.name!r} needs item "
                              "popularity (set attack.knowledge.popularity: true)")
        if key == "public" and cfg.knowledge.public_fraction <= 0:
            raise ConfigError(f"attack.knowledge.public_fraction: attack {cfg.name!r} needs "
                              "public interactions (set attack.knowledge.public_fraction > 0)")
        if key == "defense" and cfg.knowledge.defense == "none":
            raise ConfigError(f"attack.knowledge.defense: attack {cfg.name!r} adapts to a defense "
                              "(set attack.knowledge.defense to the rule it assumes)")


def build_threat_model(cfg: AttackConfig, split: LeaveOneOut, seed: int) -> ThreatModel:
    """Resolve the threat model of a run (deterministic in ``seed``).

    Raises
    ------
    ConfigError
        Bad targets or fraction, or knowledge the attack needs but the config does not grant.
    """
    check_knowledge(cfg)
    n_users = split.n_users
    counts = split.train_item_counts()
    targets = select_targets(cfg.targets, counts, split.n_items)
    m = n_malicious(cfg.fraction, n_users) if cfg.name != "none" else 0
    if m >= n_users:
        raise ConfigError(f"attack.fraction={cfg.fraction}: {m} malicious clients for {n_users} users")
    rng = np.random.default_rng([seed, 20000000])
    owners = np.sort(rng.choice(n_users, size=m, replace=False)) if m else np.zeros(0, np.int64)
    if cfg.mode == "add":
        mal_ids = np.arange(n_users, n_users + m, dtype=np.int64)
        replaced = np.zeros(0, dtype=np.int64)
    else:
        mal_ids = owners.astype(np.int64)
        replaced = owners.astype(np.int64)
    accounts = {int(c): split.train[int(u)] for c, u in zip(mal_ids, owners)}
    popularity = counts if cfg.knowledge.popularity else None
    public = None
    lengths = np.fromiter((len(s) for s in split.train), dtype=np.int64, count=n_users)
    if cfg.knowledge.public_fraction > 0:
        # one draw per training interaction, user after user (= one call per user, in order)
        prng = np.random.default_rng([seed, 31])
        flat = np.concatenate(split.train) if n_users else np.zeros(0, np.int64)
        keep = prng.random(len(flat)) < cfg.knowledge.public_fraction
        kept = np.concatenate([[0], np.cumsum(keep)])[np.concatenate([[0], np.cumsum(lengths)])]
        public = split_flat(flat[keep], kept)
    k = cfg.knowledge
    return ThreatModel(n_users, mal_ids, accounts, targets, popularity, public, replaced, lengths,
                       assumed_defense=k.defense, quantile=k.quantile, budget=k.budget)
