"""Cross-domain and multi-scenario settings built from MovieLens genres, and a synthetic twin.

Used by the cross-domain baseline SITN (Sun et al., AAAI 2023, arXiv 2302.14438;
:mod:`fedrec.baselines.sitn`) and the multi-scenario baseline SASS (Zhang et al., CIKM 2022).
Neither paper uses MovieLens; building domains from genre groups is **our** setting [INF]: it
gives domains with shared users whose interests are correlated, as in the papers' industrial
data (a product platform and a micro-video platform with the same users).

Pipeline (:func:`build_domains`, the same for real and synthetic data):

1. **Positives.** Keep ratings ``>= min_rating`` (``None``: every rating is a positive).
2. **Domains.** ``groups`` maps a domain name to genres. Disjoint split (SITN, default): an item
   goes to the domain of its *first listed* genre (ML-100K: first flagged column of ``u.item``;
   ML-1M: first genre of ``movies.dat``) that any group names. ``overlapping`` (SASS's
   scenarios): an item lives in every domain one of its genres belongs to, and each interaction
   with it counts in each of those domains. Items in no group are dropped.
3. **Ids.** Users are indexed ``0..U-1`` (sorted original ids; every user with a positive in some
   domain). Each domain numbers its items ``1..n_d`` (sorted original ids; 0 is padding).
4. **Chronological split per domain.** A user's interactions in a domain sorted by (timestamp,
   item id); with at least ``min_eval_len`` of them the last is *test*, the second-to-last
   *validation* and the rest *train*; with fewer, all are train and the user has no held-out
   item there (``valid``/``test`` hold 0).
5. **Sparse target** (``sparse_target_share > 0``): that share of the target domain's evaluated
   users (seeded draw) keep only their last ``sparse_target_keep`` target-domain train items;
   they are the *cold* users (:attr:`DomainSplit.cold`). Held-out items are untouched.
6. **Negatives for AUC.** Per domain and user, ``n_negatives`` items drawn uniformly (seeded, no
   repeats when enough exist) among the domain's items the user never interacted with.
7. **Cross-domain time cut** (:meth:`DomainSplit.before`, :meth:`DomainSplit.cutoff`). Every
   item keeps its timestamp (``train_time``, ``valid_time``, ``test_time``). Another domain's
   interactions may be read to predict a user's held-out item of domain ``d`` only if they are
   **strictly earlier** than that item: for ``d``'s validation item, those with timestamp
   ``< valid_time[d][u]``; for its test item, ``< test_time[d][u]``; for training, the same cut
   as validation (``< valid_time[d][u]``), so no training input is later than the first
   held-out item. **Ties** (same timestamp as the held-out item) are *excluded*: the order of
   same-second ratings in two domains is unknown. Users without a held-out item in ``d`` have
   no cut. Within one domain the split of step 4 is unchanged (ties there are ordered by item
   id). A cold user's truncation (step 5) does not move its cut.

:func:`domain_stats` gives users per domain, user overlap, items, interactions and density.
Bad files raise a one-line :class:`~fedrec.errors.DataFormatError` naming ``file:line`` (the
readers of :mod:`fedrec.data.movielens_meta`); bad settings a :class:`~fedrec.errors.ConfigError`
naming ``domains.<key>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError

from fedrec.data.movielens_meta import (
    ML1M_GENRES,
    ML100K_GENRES,
    read_items,
    read_ml1m_movies,
    read_ml1m_ratings,
    read_ratings,
    resolve_ml100k_dir,
)
from fedrec.errors import ConfigError, DataFormatError
from fedrec.sections import Section, Seed

__all__ = [
    "DEFAULT_MOVIELENS_GROUPS",
    "DomainConfig",
    "DomainSplit",
    "SyntheticDomainsConfig",
    "build_domains",
    "domain_config",
    "domain_stats",
    "load_domains",
    "synthetic_domain_frame",
]


#: Default genre groups for MovieLens [INF]: "thrill" genres as the source domain, "feel"
#: genres as the target domain (the target is the last group unless ``target`` says otherwise).
DEFAULT_MOVIELENS_GROUPS: dict[str, list[str]] = {
    "thrill": ["Action", "Adventure", "Sci-Fi", "Thriller", "Crime", "Horror", "Mystery",
               "War", "Western", "Film-Noir"],
    "feel": ["Comedy", "Drama", "Romance", "Children's", "Animation", "Musical", "Documentary",
             "Fantasy"],
}


class SyntheticDomainsConfig(Section):
    """Generator of :func:`synthetic_domain_frame` (see there)."""

    n_users: int = Field(400, ge=2)
    n_domains: int = Field(2, ge=2)
    items_per_domain: int = Field(120, ge=4)
    n_clusters: int = Field(6, ge=1)
    mean_len: float = Field(12.0, gt=0)
    min_len: int = Field(3, ge=1)
    correlation: float = Field(0.9, ge=0, le=1)
    noise: float = Field(0.1, ge=0, le=1)
    zipf_a: float = Field(0.8, ge=0)
    seed: Seed = 0


class DomainConfig(Section):
    """The ``domains`` config section (module docstring, steps 1-6)."""

    dataset: Literal["synthetic", "ml-100k", "ml-1m"] = "synthetic"
    #: folder holding ``ml-100k/`` / ``ml-1m/`` (default ``data.root``, then ``FEDREC_DATA``)
    data_dir: str | None = None
    #: domain name -> genres; default :data:`DEFAULT_MOVIELENS_GROUPS` (real data) or one domain
    #: per generated domain (synthetic, where it must stay unset)
    groups: dict[str, list[str]] | None = None
    #: the target domain (default: the last group)
    target: str | None = None
    overlapping: bool = False
    min_rating: int | None = Field(None, ge=1, le=5)
    min_eval_len: int = Field(3, ge=3)
    sparse_target_share: float = Field(0.0, ge=0, le=1)
    sparse_target_keep: int = Field(2, ge=0)
    n_negatives: int = Field(99, ge=1)
    seed: Seed = 0
    synthetic: SyntheticDomainsConfig = Field(default_factory=SyntheticDomainsConfig)


def domain_config(raw: dict[str, Any] | DomainConfig | None,
                  prefix: str = "domains.") -> DomainConfig:
    """Validate a ``domains`` mapping.

    Raises
    ------
    ConfigError
        One line naming the first bad key (``domains.<key>``) and what was expected.
    """
    if isinstance(raw, DomainConfig):
        return raw
    try:
        return DomainConfig.model_validate(dict(raw or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        raise ConfigError(f"{prefix}{key}: {err['msg']}{got}") from None


@dataclass
class DomainSplit:
    """Users' chronological per-domain sequences, split for evaluation.

    Attributes
    ----------
    name : str
        Dataset name (``"ml-100k"``, ``"synthetic"``, ...).
    domains : tuple of str
        Domain names, in config order.
    target : str
        The target domain (the others are sources).
    genre_names : tuple of str
        Every genre; ``item_genre`` indexes into it.
    user_ids : numpy.ndarray
        ``[U]`` original user id of each user index.
    item_ids : dict
        Domain -> ``int64 [n_d + 1]`` original item id of each local id (entry 0 = padding, 0).
    item_genre : dict
        Domain -> ``int64 [n_d + 1]`` genre index of each local item (its first listed genre
        within the domain's group; entry 0 = 0, masked by the padding id).
    train : dict
        Domain -> ``U`` chronological ``int64`` arrays of local item ids (may be empty).
    valid, test : dict
        Domain -> ``int64 [U]`` held-out local item per user (0: none in this domain).
    cold : numpy.ndarray
        ``bool [U]`` users whose target-domain train history was truncated (sparse target).
    negatives : dict
        Domain -> ``int64 [U, n_negatives]`` sampled unseen items (zeros for users without a
        held-out item there) for AUC.
    config : dict
        The settings used (:class:`DomainConfig` as a plain mapping).
    train_time : dict
        Domain -> ``U`` ``int64`` arrays, the timestamp of each ``train`` item.
    valid_time, test_time : dict
        Domain -> ``int64 [U]`` timestamp of the held-out item (0 where there is none).
    """

    name: str
    domains: tuple[str, ...]
    target: str
    genre_names: tuple[str, ...]
    user_ids: np.ndarray
    item_ids: dict[str, np.ndarray]
    item_genre: dict[str, np.ndarray]
    train: dict[str, list[np.ndarray]]
    valid: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    cold: np.ndarray
    negatives: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)
    train_time: dict[str, list[np.ndarray]] = field(default_factory=dict)
    valid_time: dict[str, np.ndarray] = field(default_factory=dict)
    test_time: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        """Number of users."""
        return len(self.user_ids)

    @property
    def sources(self) -> tuple[str, ...]:
        """The domains other than the target."""
        return tuple(d for d in self.domains if d != self.target)

    def n_items(self, domain: str) -> int:
        """Items of ``domain`` (local ids ``1..n``)."""
        return len(self.item_ids[domain]) - 1

    def history(self, domain: str, split: str) -> list[np.ndarray]:
        """Inputs seen before ``split``'s held-out item: train (``"valid"``) or train + valid
        (``"test"``)."""
        if split == "valid":
            return self.train[domain]
        if split != "test":
            raise ValueError(f"split: expected 'valid' or 'test', got {split!r}")
        return [np.append(t, v) if v > 0 else t
                for t, v in zip(self.train[domain], self.valid[domain], strict=True)]

    def held_out(self, domain: str, split: str) -> np.ndarray:
        """``int64 [U]`` held-out item of ``split`` (0: none)."""
        return {"valid": self.valid, "test": self.test}[split][domain]

    def cutoff(self, domain: str, split: str) -> np.ndarray:
        """``int64 [U]`` time before which other domains may be read (module docstring, step 7).

        ``"train"`` and ``"valid"``: the timestamp of the user's validation item in ``domain``;
        ``"test"``: of its test item. Users without that held-out item: no cut (int64 max).
        Use with :meth:`before`, whose comparison is strict (ties excluded).
        """
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split: expected 'train', 'valid' or 'test', got {split!r}")
        key = "test" if split == "test" else "valid"
        item = self.held_out(domain, key)
        when = (self.test_time if key == "test" else self.valid_time)[domain]
        return np.where(item > 0, when, np.iinfo(np.int64).max).astype(np.int64)

    def before(self, domain: str, cutoff: np.ndarray) -> list[np.ndarray]:
        """Per user, the ``train`` items of ``domain`` with timestamp **strictly** below
        ``cutoff[u]`` (chronological; ties with the cut-off are left out)."""
        return [items[times < c] for items, times, c in
                zip(self.train[domain], self.train_time[domain], cutoff, strict=True)]


# ------------------------------------------------------------------------------------ building
def _chronological(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user", "timestamp", "item"], kind="stable")


def build_domains(
    frame: pd.DataFrame,
    item_genres: dict[int, list[int]],
    genre_names: tuple[str, ...],
    groups: dict[str, list[str]],
    cfg: DomainConfig,
    name: str,
) -> DomainSplit:
    """Build a :class:`DomainSplit` from interactions (module docstring, steps 1-6).

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``user, item, rating, timestamp`` (integers).
    item_genres : dict
        Original item id -> its genre indices in listed order.
    genre_names : tuple of str
        Names of the genre indices.
    groups : dict
        Domain name -> genre names (config order is domain order).
    cfg : DomainConfig
        Settings.
    name : str
        Dataset name.

    Raises
    ------
    ConfigError
        An unknown genre or target, a genre in two groups (disjoint split), or an empty domain.
    """
    index = {g: i for i, g in enumerate(genre_names)}
    genre_group: dict[int, list[str]] = {}
    for dom, genres in groups.items():
        if not genres:
            raise ConfigError(f"domains.groups.{dom}: expected a non-empty list of genres")
        for g in genres:
            if g not in index:
                raise ConfigError(f"domains.groups.{dom}: unknown genre {g!r}; expected one of "
                                  f"{', '.join(genre_names)}")
            if genre_group.get(index[g]) and not cfg.overlapping:
                raise ConfigError(f"domains.groups.{dom}: genre {g!r} is also in group "
                                  f"{genre_group[index[g]][0]!r} (groups must be disjoint unless "
                                  "domains.overlapping is true)")
            genre_group.setdefault(index[g], []).append(dom)
    domains = tuple(groups)
    target = cfg.target if cfg.target is not None else domains[-1]
    if target not in domains:
        raise ConfigError(f"domains.target: {target!r} is not a group; expected one of "
                          f"{', '.join(domains)}")
    # item -> [(domain, genre)] : first listed genre (disjoint) or every domain (overlapping)
    placement: dict[int, list[tuple[str, int]]] = {}
    for item, gs in item_genres.items():
        seen: dict[str, int] = {}
        for g in gs:
            for dom in genre_group.get(g, []):
                seen.setdefault(dom, g)
            if seen and not cfg.overlapping:
                break
        placement[item] = list(seen.items())
    if cfg.min_rating is not None:
        frame = frame[frame["rating"] >= cfg.min_rating]
    frame = _chronological(frame[["user", "item", "timestamp"]])
    doms = [[d for d, _ in placement.get(int(i), [])] for i in frame["item"].to_numpy()]
    exploded = frame.assign(domain=doms).explode("domain").dropna(subset=["domain"])
    user_ids = np.unique(exploded["user"].to_numpy()).astype(np.int64)
    uidx = {int(u): k for k, u in enumerate(user_ids)}
    n_users = len(user_ids)
    item_ids, item_genre, train, valid, test, negatives = {}, {}, {}, {}, {}, {}
    train_time: dict[str, list[np.ndarray]] = {}
    valid_time: dict[str, np.ndarray] = {}
    test_time: dict[str, np.ndarray] = {}
    rng_cold = np.random.default_rng([cfg.seed, 7])
    cold = np.zeros(n_users, dtype=bool)
    for k, dom in enumerate(domains):
        part = exploded[exploded["domain"] == dom]
        ids = np.unique(part["item"].to_numpy()).astype(np.int64)
        if len(ids) == 0:
            raise ConfigError(f"domains.groups.{dom}: no positive interaction falls in this "
                              "domain")
        item_ids[dom] = np.concatenate([[0], ids])
        local = {int(i): j + 1 for j, i in enumerate(ids)}
        item_genre[dom] = np.array([0] + [dict(placement[int(i)])[dom] for i in ids],
                                   dtype=np.int64)
        seqs = [np.zeros(0, dtype=np.int64) for _ in range(n_users)]
        times = [np.zeros(0, dtype=np.int64) for _ in range(n_users)]
        for u, rows in part.groupby("user", sort=False):
            seqs[uidx[int(u)]] = np.array([local[int(i)] for i in rows["item"]], dtype=np.int64)
            times[uidx[int(u)]] = rows["timestamp"].to_numpy().astype(np.int64)
        va, te = np.zeros(n_users, dtype=np.int64), np.zeros(n_users, dtype=np.int64)
        va_t, te_t = np.zeros(n_users, dtype=np.int64), np.zeros(n_users, dtype=np.int64)
        tr, tr_t = [], []
        for u, (s, t) in enumerate(zip(seqs, times, strict=True)):
            if len(s) >= cfg.min_eval_len:
                va[u], te[u], va_t[u], te_t[u] = s[-2], s[-1], t[-2], t[-1]
                s, t = s[:-2], t[:-2]
            tr.append(s)
            tr_t.append(t)
        if dom == target and cfg.sparse_target_share > 0:
            eligible = np.flatnonzero(te > 0)
            n_cold = int(round(cfg.sparse_target_share * len(eligible)))
            chosen = np.sort(rng_cold.choice(eligible, size=n_cold, replace=False))
            for u in chosen:
                keep = cfg.sparse_target_keep
                tr[u] = tr[u][len(tr[u]) - min(keep, len(tr[u])):]
                tr_t[u] = tr_t[u][len(tr_t[u]) - min(keep, len(tr_t[u])):]
            cold[chosen] = True
        train[dom], valid[dom], test[dom] = tr, va, te
        train_time[dom], valid_time[dom], test_time[dom] = tr_t, va_t, te_t
        negatives[dom] = _sample_negatives(seqs, te, len(ids), cfg.n_negatives,
                                           np.random.default_rng([cfg.seed, 11, k]))
    return DomainSplit(name=name, domains=domains, target=target, genre_names=tuple(genre_names),
                       user_ids=user_ids, item_ids=item_ids, item_genre=item_genre, train=train,
                       valid=valid, test=test, cold=cold, negatives=negatives,
                       config=cfg.model_dump(mode="json"), train_time=train_time,
                       valid_time=valid_time, test_time=test_time)


def _sample_negatives(seqs: list[np.ndarray], test: np.ndarray, n_items: int, n_neg: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``[U, n_neg]`` unseen items per evaluated user (with repeats only when too few exist)."""
    out = np.zeros((len(seqs), n_neg), dtype=np.int64)
    for u in np.flatnonzero(test > 0):
        mask = np.ones(n_items + 1, dtype=bool)
        mask[0] = False
        mask[seqs[u]] = False
        cand = np.flatnonzero(mask)
        if len(cand) == 0:
            continue
        out[u] = rng.choice(cand, size=n_neg, replace=len(cand) < n_neg)
    return out


# ------------------------------------------------------------------------------------ sources
def synthetic_domain_frame(
    spec: SyntheticDomainsConfig,
) -> tuple[pd.DataFrame, dict[int, list[int]], tuple[str, ...], dict[str, list[str]]]:
    """Interactions of several domains with shared users and correlated interests.

    Each user draws one latent interest cluster ``z_u``; in each domain it keeps ``z_u`` with
    probability ``correlation`` and otherwise draws a random cluster. Domain ``d`` has
    ``items_per_domain`` items; item ``j`` is in cluster ``j mod n_clusters`` (its genre,
    ``"d<d>:c<k>"``), with a Zipf-like popularity inside its cluster. A user's sequence in a
    domain has ``min_len + Poisson(mean_len - min_len)`` distinct items, each from its cluster
    with probability ``1 - noise`` and uniform otherwise, in generation order. All ratings
    are 5. **Timestamps**: each user's interactions in all domains share one clock; a seeded
    random interleaving (its own random stream, so the items drawn do not depend on it) gives
    them the distinct times ``0..n_u - 1`` (``n_u`` = the user's interactions over all
    domains), each domain's items in their generation order. So no two of a user's
    interactions tie, and the cross-domain cut (module docstring, step 7) is well defined.

    Returns
    -------
    tuple
        ``(frame, item_genres, genre_names, groups)`` for :func:`build_domains`.
    """
    rng = np.random.default_rng([spec.seed, 3])
    n_d, n_c, per = spec.n_domains, spec.n_clusters, spec.items_per_domain
    z = rng.integers(n_c, size=spec.n_users)
    genre_names = tuple(f"d{d}:c{c}" for d in range(n_d) for c in range(n_c))
    groups = {f"d{d}": list(genre_names[d * n_c:(d + 1) * n_c]) for d in range(n_d)}
    item_genres: dict[int, list[int]] = {}
    rows = []
    for d in range(n_d):
        cluster = np.arange(per) % n_c
        ids = d * per + 1 + np.arange(per)
        item_genres.update({int(i): [d * n_c + int(c)] for i, c in zip(ids, cluster, strict=True)})
        pop = (1.0 + rng.permutation(per)) ** -spec.zipf_a
        same = rng.random(spec.n_users) < spec.correlation
        zd = np.where(same, z, rng.integers(n_c, size=spec.n_users))
        lens = spec.min_len + rng.poisson(max(spec.mean_len - spec.min_len, 0.0), spec.n_users)
        for u in range(spec.n_users):
            inside = np.where(cluster == zd[u], pop, 0.0)
            p = (1 - spec.noise) * inside / inside.sum() + spec.noise / per
            size = min(int(lens[u]), int((p > 0).sum()))
            items = rng.choice(ids, size=size, replace=False, p=p / p.sum())
            rows += [(u + 1, int(i), 5) for i in items]
    # one clock per user over all domains: a seeded random interleaving of the user's domain
    # sequences (own stream, so the items above do not depend on it), each kept in order
    users = np.array([r[0] for r in rows], dtype=np.int64)
    clock = np.random.default_rng([spec.seed, 4])
    stamps = np.zeros(len(rows), dtype=np.int64)
    for u in range(1, spec.n_users + 1):
        at = np.flatnonzero(users == u)  # the user's rows, domain by domain, each in order
        if len(at):
            owner = [rows[k][1] for k in at]  # which domain each row belongs to
            dom = (np.asarray(owner) - 1) // per
            slots = clock.permutation(len(at))  # times 0..n-1 handed out in random order ...
            for d in np.unique(dom):
                sel = dom == d  # ... and each domain's share sorted, keeping its order
                stamps[at[sel]] = np.sort(slots[sel])
    frame = pd.DataFrame([(*r, int(t)) for r, t in zip(rows, stamps, strict=True)],
                         columns=["user", "item", "rating", "timestamp"])
    return frame, item_genres, genre_names, groups


def _ml100k(root: Path) -> tuple[pd.DataFrame, dict[int, list[int]], tuple[str, ...]]:
    folder = resolve_ml100k_dir(root)
    ratings = read_ratings(folder)
    items = read_items(folder / "raw" / "u.item")
    genres = {i: [int(g) for g in np.flatnonzero(flags)] for i, (_, flags) in items.items()}
    missing = set(ratings["item"].unique().tolist()) - set(genres)
    if missing:
        raise DataFormatError(f"{folder / 'raw' / 'u.item'}: no row for item id {min(missing)}")
    return ratings, genres, ML100K_GENRES


def _ml1m(root: Path) -> tuple[pd.DataFrame, dict[int, list[int]], tuple[str, ...]]:
    folder = root / "ml-1m" if (root / "ml-1m").is_dir() else root
    candidates = [folder / "ratings.dat", folder / "raw" / "ratings.dat"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DataFormatError(
            f"{candidates[1]}: file not found; the ML-1M domains need the official ratings.dat "
            "(MovieIDs and timestamps): the DV-FSR sequences shipped there cannot be mapped to "
            "movies.dat genres")
    ratings = read_ml1m_ratings(path)
    movies = read_ml1m_movies(folder / "raw" / "movies.dat")
    index = {g: i for i, g in enumerate(ML1M_GENRES)}
    genres = {i: [index[g] for g in gs] for i, gs in movies.items()}
    return ratings, genres, ML1M_GENRES


def load_domains(cfg: DomainConfig | dict[str, Any] | None = None,
                 data_root: str | Path | None = None) -> DomainSplit:
    """The :class:`DomainSplit` a ``domains`` config describes.

    Parameters
    ----------
    cfg : DomainConfig or dict, optional
        Settings (validated when a mapping).
    data_root : str or Path, optional
        Folder holding ``ml-100k/`` / ``ml-1m/`` when ``cfg.data_dir`` is unset (falls back
        to ``FEDREC_DATA``).

    Raises
    ------
    ConfigError
        Bad settings, or real data requested without a data folder.
    DataFormatError
        A missing or malformed data file.
    """
    cfg = domain_config(cfg)
    if cfg.dataset == "synthetic":
        if cfg.groups is not None:
            raise ConfigError("domains.groups: not used with dataset 'synthetic' (its domains "
                              "are d0..d{n_domains-1}); remove it")
        frame, genres, names, groups = synthetic_domain_frame(cfg.synthetic)
        return build_domains(frame, genres, names, groups, cfg, "synthetic")
    import os

    root = cfg.data_dir or data_root or os.environ.get("FEDREC_DATA")
    if root is None:
        raise ConfigError(f"domains.data_dir: not set, and neither data.root nor FEDREC_DATA is "
                          f"set; expected the folder holding {cfg.dataset}/")
    reader = _ml100k if cfg.dataset == "ml-100k" else _ml1m
    frame, genres, names = reader(Path(root).expanduser())
    groups = cfg.groups or {k: [g for g in v if g in names]
                            for k, v in DEFAULT_MOVIELENS_GROUPS.items()}
    return build_domains(frame, genres, names, groups, cfg, cfg.dataset)


# --------------------------------------------------------------------------------- statistics
def domain_stats(split: DomainSplit) -> dict[str, float]:
    """Users, items, interactions and density per domain, and the user overlap.

    Returns
    -------
    dict
        ``<domain>/users`` (users with any interaction there), ``<domain>/items``,
        ``<domain>/interactions`` (train + held out), ``<domain>/density`` (interactions /
        (users x items)), ``<domain>/eval_users``; ``overlap/users`` (users active in every
        domain), ``overlap/share`` (of all users), ``users``, ``cold_users``.
    """
    out: dict[str, float] = {"users": float(split.n_users)}
    active = np.ones(split.n_users, dtype=bool)
    for d in split.domains:
        counts = np.array([len(t) for t in split.train[d]]) + 2 * (split.test[d] > 0)
        users = int((counts > 0).sum())
        inter = int(counts.sum())
        out[f"{d}/users"] = float(users)
        out[f"{d}/items"] = float(split.n_items(d))
        out[f"{d}/interactions"] = float(inter)
        out[f"{d}/density"] = inter / max(users * split.n_items(d), 1)
        out[f"{d}/eval_users"] = float((split.test[d] > 0).sum())
        active &= counts > 0
    out["overlap/users"] = float(active.sum())
    out["overlap/share"] = float(active.mean()) if split.n_users else 0.0
    out["cold_users"] = float(split.cold.sum())
    return out
