"""Multi-task binary recommendation tables: MovieLens-100K tasks and a synthetic generator.

Used to exercise GradCraft (Bai et al., KDD 2024, arXiv:2407.19682) and other multi-objective
combiners on tasks with very different positive rates, the regime the paper targets (dense
"viewing" tasks next to sparse "engagement" tasks).

* :func:`load_ml100k_multitask` turns MovieLens-100K (F. M. Harper, J. A. Konstan, ACM TiiS
  2015) into rows ``(user, item, side features)`` made of every observed rating plus
  ``neg_ratio`` sampled unobserved items per observed one, labelled with several nested binary
  tasks (``watched`` ⊃ ``liked`` ⊃ ``loved``, plus the optional ``disliked``).
* :func:`synthetic_multitask` generates a CTR-style table with partially shared and partially
  conflicting task logits and calibrated base rates.

A table is a :class:`MultiTaskTable`: categorical ids ``cat [N, F]`` (column 0 is always
``user_id``, used for GAUC), optional dense features ``dense [N, D]`` and labels ``labels [N, T]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.movielens_meta import AGE_EDGES as _AGE_EDGES
from fedrec.data.movielens_meta import N_GENRES as _N_GENRES
from fedrec.data.movielens_meta import YEAR_EDGES as _YEAR_EDGES
from fedrec.data.movielens_meta import read_items as _read_items
from fedrec.data.movielens_meta import read_ratings as _read_ratings
from fedrec.data.movielens_meta import read_users as _read_users
from fedrec.data.movielens_meta import resolve_ml100k_dir
from fedrec.errors import ConfigError, DataFormatError

__all__ = [
    "ML100K_TASKS",
    "MultiTaskData",
    "MultiTaskTable",
    "load_ml100k_multitask",
    "resolve_ml100k_dir",
    "split_random",
    "synthetic_multitask",
]


@dataclass(frozen=True)
class MultiTaskTable:
    """Rows of a multi-task binary dataset.

    Attributes
    ----------
    cat : np.ndarray
        ``int64 [N, F]`` categorical ids; column 0 is ``user_id``.
    dense : np.ndarray
        ``float32 [N, D]`` dense features (``D`` may be 0).
    labels : np.ndarray
        ``float32 [N, T]`` binary labels.
    field_names, vocab_sizes : tuple
        Name and vocabulary size (max id + 1) of each categorical field.
    dense_names, task_names : tuple
        Names of the dense columns and of the tasks.
    """

    cat: np.ndarray
    dense: np.ndarray
    labels: np.ndarray
    field_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    dense_names: tuple[str, ...]
    task_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.cat.shape[0]
        if self.dense.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError("MultiTaskTable: cat, dense and labels must have the same row count")
        if self.cat.shape[1] != len(self.field_names) or len(self.field_names) != len(
            self.vocab_sizes
        ):
            raise ValueError("MultiTaskTable: field_names/vocab_sizes must match cat's columns")
        if self.labels.shape[1] != len(self.task_names):
            raise ValueError("MultiTaskTable: task_names must match labels' columns")

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    @property
    def users(self) -> np.ndarray:
        """User id of every row (column 0 of ``cat``)."""
        return self.cat[:, 0]

    def subset(self, idx: np.ndarray) -> MultiTaskTable:
        """Rows ``idx`` (index array or boolean mask) as a new table."""
        return MultiTaskTable(
            self.cat[idx],
            self.dense[idx],
            self.labels[idx],
            self.field_names,
            self.vocab_sizes,
            self.dense_names,
            self.task_names,
        )

    def positive_rates(self) -> dict[str, float]:
        """Share of positive labels per task."""
        if len(self) == 0:
            return {t: float("nan") for t in self.task_names}
        rates = self.labels.mean(axis=0)
        return {t: float(r) for t, r in zip(self.task_names, rates, strict=True)}


@dataclass(frozen=True)
class MultiTaskData:
    """Train/valid/test tables plus a description of how they were built."""

    train: MultiTaskTable
    valid: MultiTaskTable
    test: MultiTaskTable
    info: dict[str, Any] = field(default_factory=dict)


def split_random(
    table: MultiTaskTable,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
    info: dict[str, Any] | None = None,
) -> MultiTaskData:
    """Split rows uniformly at random into train/valid/test.

    Parameters
    ----------
    table : MultiTaskTable
        All rows.
    valid_frac, test_frac : float
        Fractions of rows for validation and test (each in ``[0, 1)``, sum ``< 1``).
    seed : int
        Seed of the permutation.
    info : dict or None
        Extra description stored in the result.

    Returns
    -------
    MultiTaskData
        The three splits.

    Raises
    ------
    ConfigError
        If the fractions are out of range.
    """
    _check_fracs(valid_frac, test_frac)
    perm = np.random.default_rng(seed).permutation(len(table))
    n_test = int(round(test_frac * len(table)))
    n_valid = int(round(valid_frac * len(table)))
    test, valid, train = np.split(perm, [n_test, n_test + n_valid])
    meta = dict(info or {})
    meta["split"] = f"random rows (valid {valid_frac}, test {test_frac}, seed {seed})"
    parts = [table.subset(np.sort(rows)) for rows in (train, valid, test)]
    return MultiTaskData(parts[0], parts[1], parts[2], meta)


def _check_fracs(valid_frac: float, test_frac: float) -> None:
    if not 0.0 <= valid_frac < 1.0:
        raise ConfigError(f"valid_frac: expected a number in [0, 1), got {valid_frac}")
    if not 0.0 <= test_frac < 1.0:
        raise ConfigError(f"test_frac: expected a number in [0, 1), got {test_frac}")
    if valid_frac + test_frac >= 1.0:
        raise ConfigError(
            f"valid_frac + test_frac: expected a sum < 1, got {valid_frac + test_frac}"
        )


# --------------------------------------------------------------------------------------------
# synthetic generator
# --------------------------------------------------------------------------------------------
def _calibrate_intercept(z: np.ndarray, rate: float) -> float:
    """Intercept ``b`` with ``mean(sigmoid(z + b)) == rate`` (bisection; the map is monotone)."""
    lo, hi = -60.0, 60.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if (1.0 / (1.0 + np.exp(-(z + mid)))).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def synthetic_multitask(
    n_rows: int = 20_000,
    n_users: int = 500,
    n_items: int = 1_000,
    base_rates: Sequence[float] = (0.3, 0.1, 0.02),
    shared_weights: Sequence[float] | None = None,
    n_context_fields: int = 2,
    side_vocab: int = 20,
    latent_dim: int = 8,
    signal: float = 2.0,
    seed: int = 0,
) -> MultiTaskTable:
    """Deterministic synthetic multi-task CTR table with very different base rates.

    Fields: ``user_id`` (``n_users``), ``item_id`` (``n_items``, Zipf-like popularity with
    exponent 0.8), ``user_group`` and ``item_cat`` (user/item attributes, ``side_vocab`` values
    each) and ``n_context_fields`` per-row context fields ``ctx_k`` (``side_vocab`` values).

    Labels. ``T + 1`` independent latent score components are drawn: a *shared* one ``c_0`` and
    one *private* ``c_t`` per task. Each component is
    ``⟨U_u, V_i⟩ + a_u + b_i + s_group + s_cat + Σ_k s_ctx_k`` with its own Gaussian factors
    (``latent_dim``-dimensional user/item vectors), standardised to zero mean and unit variance
    over the rows. Task ``t`` has logit
    ``signal · (ρ_t c_0 + sqrt(1 − ρ_t²) c_t) + β_t`` where ``ρ_t`` (``shared_weights``) sets how
    much it shares with the others: same-sign ``ρ`` means partially shared, opposite signs mean
    partially conflicting tasks (the pairwise logit correlation is ``ρ_s ρ_t``). The default is
    ``ρ = (0.8, 0.6, -0.6, 0.6, -0.6, ...)``: tasks 0 and 1 agree, task 2 conflicts with both.
    The intercept ``β_t`` is calibrated by bisection so that the mean probability over the rows
    equals ``base_rates[t]`` exactly; labels are Bernoulli draws, so the empirical positive rate
    is ``base_rates[t]`` up to binomial noise.

    Parameters
    ----------
    n_rows, n_users, n_items : int
        Table size and id ranges (ids are ``0..n-1``).
    base_rates : Sequence[float]
        Target positive rate of each task, in ``(0, 1)``; ``T = len(base_rates)``.
    shared_weights : Sequence[float] or None
        ``ρ_t`` in ``[-1, 1]`` per task (default described above).
    n_context_fields : int
        Number of per-row context fields.
    side_vocab : int
        Vocabulary size of the side/context fields.
    latent_dim : int
        Dimension of the user/item factors.
    signal : float
        Logit scale (higher = more learnable).
    seed : int
        Seed; the same arguments give identical tables.

    Returns
    -------
    MultiTaskTable
        ``n_rows`` rows, no dense features.

    Raises
    ------
    ConfigError
        If a size or rate is out of range.
    """
    for name, value in (("n_rows", n_rows), ("n_users", n_users), ("n_items", n_items)):
        if int(value) < 1:
            raise ConfigError(f"{name}: expected an integer >= 1, got {value}")
    if side_vocab < 1 or latent_dim < 1 or n_context_fields < 0:
        raise ConfigError(
            "side_vocab/latent_dim/n_context_fields: expected >= 1/>= 1/>= 0, "
            f"got {side_vocab}/{latent_dim}/{n_context_fields}"
        )
    rates = [float(r) for r in base_rates]
    if not rates or any(not 0.0 < r < 1.0 for r in rates):
        raise ConfigError(f"base_rates: expected one or more rates in (0, 1), got {rates}")
    n_tasks = len(rates)
    if shared_weights is None:
        rho = [0.8] + [0.6 if t % 2 == 1 else -0.6 for t in range(1, n_tasks)]
    else:
        rho = [float(r) for r in shared_weights]
        if len(rho) != n_tasks or any(abs(r) > 1.0 for r in rho):
            raise ConfigError(
                f"shared_weights: expected {n_tasks} values in [-1, 1], got {list(shared_weights)}"
            )
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, size=n_rows)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.permutation(n_items)[rng.choice(n_items, size=n_rows, p=pop / pop.sum())]
    user_group = rng.integers(0, side_vocab, size=n_users)
    item_cat = rng.integers(0, side_vocab, size=n_items)
    ctx = rng.integers(0, side_vocab, size=(n_rows, n_context_fields))
    cat = np.column_stack([users, items, user_group[users], item_cat[items], ctx]).astype(np.int64)

    def component() -> np.ndarray:
        u = rng.normal(size=(n_users, latent_dim)) / math.sqrt(latent_dim)
        v = rng.normal(size=(n_items, latent_dim))
        score = (u[users] * v[items]).sum(axis=1)
        score += rng.normal(size=n_users)[users] * 0.5 + rng.normal(size=n_items)[items] * 0.5
        for k in range(2, cat.shape[1]):
            score += rng.normal(size=side_vocab)[cat[:, k]] * 0.3
        return (score - score.mean()) / (score.std() + 1e-12)

    shared = component()
    labels = np.empty((n_rows, n_tasks), dtype=np.float32)
    for t in range(n_tasks):
        z = signal * (rho[t] * shared + math.sqrt(1.0 - rho[t] ** 2) * component())
        p = 1.0 / (1.0 + np.exp(-(z + _calibrate_intercept(z, rates[t]))))
        labels[:, t] = rng.random(n_rows) < p
    names = ("user_id", "item_id", "user_group", "item_cat") + tuple(
        f"ctx_{k}" for k in range(n_context_fields)
    )
    vocab = (n_users, n_items, side_vocab, side_vocab) + (side_vocab,) * n_context_fields
    return MultiTaskTable(
        cat,
        np.zeros((n_rows, 0), dtype=np.float32),
        labels,
        names,
        vocab,
        (),
        tuple(f"task{t}" for t in range(n_tasks)),
    )


# --------------------------------------------------------------------------------------------
# MovieLens-100K
# --------------------------------------------------------------------------------------------
ML100K_TASKS: dict[str, str] = {
    "watched": "the pair is an observed rating (vs. a sampled unobserved item)",
    "liked": "observed and rating >= 4",
    "loved": "observed and rating == 5",
    "disliked": "observed and rating <= 2",
}
def load_ml100k_multitask(
    data_dir: str | Path,
    tasks: Sequence[str] = ("watched", "liked", "loved"),
    neg_ratio: int = 2,
    split: str = "user_time",
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
) -> MultiTaskData:
    """MovieLens-100K as a multi-task binary table with very different positive rates.

    Rows are all observed ``(user, item)`` ratings plus, per user, ``neg_ratio`` times as many
    distinct unobserved items drawn uniformly from the items that user never rated. Tasks (see
    :data:`ML100K_TASKS`): ``watched`` (observed), ``liked`` (rating >= 4), ``loved`` (rating =
    5), ``disliked`` (rating <= 2); all are 0 for sampled rows. With ``neg_ratio=2`` the positive
    rates are about 33% / 18% / 7% (watched / liked / loved).

    Features: categorical ``user_id``, ``item_id``, ``age`` (7 MovieLens age groups), ``gender``,
    ``occupation`` (21), ``year`` (release-year bucket, 0 = unknown); dense: the 19 genre flags
    (multi-hot).

    Splits. ``"user_time"`` (default): per user, observed ratings sorted by (timestamp, item id);
    the last ``ceil(test_frac·n_u)`` go to test, the ``ceil(valid_frac·n_u)`` before them to
    validation, the rest to train. Each user's sampled negatives are shuffled and divided so that
    every split keeps the same ``neg_ratio`` (they carry no time). Every user appears in every
    split, which keeps GAUC defined. ``"random"``: rows split uniformly at random.

    Parameters
    ----------
    data_dir : str or Path
        ``FEDREC_DATA``-style root containing ``ml-100k/`` (or the ml-100k folder). Reads
        ``ratings.csv`` (else ``raw/u.data``), ``raw/u.user`` and ``raw/u.item`` (latin-1).
    tasks : Sequence[str]
        Task names, a subset of :data:`ML100K_TASKS`, in output order.
    neg_ratio : int
        Sampled unobserved items per observed rating (>= 1).
    split : {"user_time", "random"}
        Split protocol (above).
    valid_frac, test_frac : float
        Split fractions.
    seed : int
        Seed for negative sampling and splitting.

    Returns
    -------
    MultiTaskData
        Splits; ``info`` holds the files read, the split description and positive rates.

    Raises
    ------
    DataFormatError
        If a file is missing or malformed (the message names the file and line).
    ConfigError
        If a parameter is out of range or a task name is unknown.
    """
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in ML100K_TASKS]
    if not tasks or unknown:
        raise ConfigError(f"tasks: expected names from {sorted(ML100K_TASKS)}, got {tasks}")
    if int(neg_ratio) < 1:
        raise ConfigError(f"neg_ratio: expected an integer >= 1, got {neg_ratio}")
    if split not in ("user_time", "random"):
        raise ConfigError(f"split: expected 'user_time' or 'random', got {split!r}")
    _check_fracs(valid_frac, test_frac)

    folder = resolve_ml100k_dir(data_dir)
    ratings = _read_ratings(folder)
    users = _read_users(folder / "raw" / "u.user")
    items = _read_items(folder / "raw" / "u.item")
    missing_u = sorted(set(ratings["user"].unique()) - set(users))
    if missing_u:
        raise DataFormatError(f"{folder / 'raw' / 'u.user'}: no row for user id {missing_u[0]}")
    missing_i = sorted(set(ratings["item"].unique()) - set(items))
    if missing_i:
        raise DataFormatError(f"{folder / 'raw' / 'u.item'}: no row for item id {missing_i[0]}")

    rng = np.random.default_rng(seed)
    ratings = ratings.sort_values(["user", "timestamp", "item"], kind="stable")
    all_items = np.array(sorted(items), dtype=np.int64)
    # split code per row: 0 train, 1 valid, 2 test
    u_list, i_list, r_list, s_list = [], [], [], []
    for uid, grp in ratings.groupby("user", sort=True):
        its = grp["item"].to_numpy()
        n = len(its)
        n_test = min(math.ceil(test_frac * n), n)
        n_valid = min(math.ceil(valid_frac * n), n - n_test)
        n_train = n - n_test - n_valid
        pos_split = np.repeat([0, 1, 2], [n_train, n_valid, n_test])
        cand = np.setdiff1d(all_items, its, assume_unique=True)
        n_neg = min(int(neg_ratio) * n, len(cand))
        negs = rng.choice(cand, size=n_neg, replace=False)
        # negatives: same per-split proportions as the user's observed rows
        cuts = np.floor(np.cumsum([n_train, n_valid, n_test]) / n * n_neg).astype(int)
        cuts[-1] = n_neg
        neg_split = np.repeat([0, 1, 2], np.diff(np.concatenate([[0], cuts])))
        u_list.append(np.full(n + n_neg, uid, dtype=np.int64))
        i_list.append(np.concatenate([its, negs]))
        r_list.append(np.concatenate([grp["rating"].to_numpy(), np.zeros(n_neg, dtype=np.int64)]))
        s_list.append(np.concatenate([pos_split, neg_split]))
    u_arr, i_arr = np.concatenate(u_list), np.concatenate(i_list)
    r_arr, s_arr = np.concatenate(r_list), np.concatenate(s_list)

    occupations = sorted({occ for _, _, occ in users.values()})
    occ_id = {o: k for k, o in enumerate(occupations)}
    max_u, max_i = max(users), max(items)
    age_t = np.zeros(max_u + 1, dtype=np.int64)
    gen_t = np.zeros(max_u + 1, dtype=np.int64)
    occ_t = np.zeros(max_u + 1, dtype=np.int64)
    for uid, (age_b, gen, occ) in users.items():
        age_t[uid], gen_t[uid], occ_t[uid] = age_b, gen, occ_id[occ]
    year_t = np.zeros(max_i + 1, dtype=np.int64)
    genre_t = np.zeros((max_i + 1, _N_GENRES), dtype=np.float32)
    for iid, (year_b, flags) in items.items():
        year_t[iid], genre_t[iid] = year_b, flags

    cat = np.column_stack([u_arr, i_arr, age_t[u_arr], gen_t[u_arr], occ_t[u_arr], year_t[i_arr]])
    label_fns = {
        "watched": r_arr > 0,
        "liked": r_arr >= 4,
        "loved": r_arr == 5,
        "disliked": (r_arr > 0) & (r_arr <= 2),
    }
    labels = np.column_stack([label_fns[t] for t in tasks]).astype(np.float32)
    table = MultiTaskTable(
        cat.astype(np.int64),
        genre_t[i_arr],
        labels,
        ("user_id", "item_id", "age", "gender", "occupation", "year"),
        (max_u + 1, max_i + 1, len(_AGE_EDGES) + 1, 2, len(occupations), len(_YEAR_EDGES) + 2),
        tuple(f"genre_{k}" for k in range(_N_GENRES)),
        tuple(tasks),
    )
    ratings_file = "ratings.csv" if (folder / "ratings.csv").is_file() else "raw/u.data"
    info: dict[str, Any] = {
        "dataset": "ml-100k",
        "files": [str(folder / f) for f in (ratings_file, "raw/u.user", "raw/u.item")],
        "neg_ratio": int(neg_ratio),
        "tasks": {t: ML100K_TASKS[t] for t in tasks},
    }
    if split == "random":
        data = split_random(table, valid_frac, test_frac, seed, info)
    else:
        info["split"] = (
            f"per-user time split: last {test_frac:.0%} of each user's ratings -> test, "
            f"previous {valid_frac:.0%} -> valid; negatives divided in the same proportions"
        )
        data = MultiTaskData(
            table.subset(s_arr == 0), table.subset(s_arr == 1), table.subset(s_arr == 2), info
        )
    data.info["positive_rates"] = {
        "train": data.train.positive_rates(),
        "valid": data.valid.positive_rates(),
        "test": data.test.positive_rates(),
    }
    data.info["rows"] = {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)}
    return data
