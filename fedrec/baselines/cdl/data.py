"""CDL's two settings as (user, item) interactions plus item content, split into warm and cold.

* ``setting: movielens`` — content-based recommendation on a MovieLens set (``dataset``:
  ml-100k; ml-1m works but only 218 of its items have content, :mod:`fedrec.data.item_text`).
  Item content = [MiniLM title+genre embedding (384), genre multi-hot, year one-hot]; the
  interactions are every (user, item) of ``<dataset>/sequences.txt`` (implicit feedback).
* ``setting: digits`` — image recommendation on scikit-learn's 8×8 digits (1,797 images, 10
  classes; shipped with scikit-learn, no download). Synthetic users [INF]: user ``u`` draws a
  taste ``π_u ~ Dirichlet(taste_concentration · 1_10)`` and likes ``per_user`` distinct images,
  each drawn by first a class from ``π_u`` and then a uniform image of that class; all draws are
  seeded by ``(seed, u)``.

Split (both settings, seeded): a share ``cold_fraction`` of the items is removed from training
altogether — half are the cold-valid items, half the cold-test items — and every user's
interactions with the remaining (warm) items are split 80/10/10 into train / valid / test. Warm
evaluation ranks all warm items a user has not trained on; cold evaluation ranks all cold items
of that split (no cold item is ever seen in training, not even as a negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.formats import read_sequences
from fedrec.errors import ConfigError, DataFormatError

SETTINGS = ("movielens", "digits")


@dataclass
class CDLData:
    """Interactions, item content and the warm/cold split (module docstring).

    Attributes
    ----------
    name : str
        Dataset name for the run summary.
    n_users, n_items : int
        Users ``0..n_users-1``, items ``0..n_items-1``.
    content : ndarray [n_items, ...], float32
        Item content (vectors, or ``[1, 8, 8]`` images).
    train, valid, test : ndarray [n, 2], int64
        Warm (user, item) pairs.
    cold_valid_items, cold_test_items : ndarray, int64
        Items never seen in training.
    cold_valid, cold_test : ndarray [n, 2], int64
        (user, item) pairs of those items.
    """

    name: str
    n_users: int
    n_items: int
    content: np.ndarray
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    cold_valid_items: np.ndarray
    cold_test_items: np.ndarray
    cold_valid: np.ndarray
    cold_test: np.ndarray

    @property
    def warm_items(self) -> np.ndarray:
        """Items that may appear in training."""
        cold = np.concatenate([self.cold_valid_items, self.cold_test_items])
        return np.setdiff1d(np.arange(self.n_items), cold)


def split_warm_cold(name: str, pairs: np.ndarray, n_users: int, content: np.ndarray,
                    cold_fraction: float, seed: int) -> CDLData:
    """Split ``pairs`` (unique (user, item) rows) into warm train/valid/test and cold sets."""
    if not 0 < cold_fraction < 1:
        raise ConfigError(f"model.params.cold_fraction={cold_fraction}: expected in (0, 1)")
    n_items = len(content)
    rng = np.random.default_rng([seed, 17])
    perm = rng.permutation(n_items)
    n_cold = max(2, int(round(cold_fraction * n_items)))
    cv, ct = np.sort(perm[:n_cold // 2]), np.sort(perm[n_cold // 2:n_cold])
    is_cv, is_ct = np.isin(pairs[:, 1], cv), np.isin(pairs[:, 1], ct)
    warm = pairs[~(is_cv | is_ct)]
    r = np.random.default_rng([seed, 18]).random(len(warm))
    order = np.lexsort((r, warm[:, 0]))
    warm, r = warm[order], r[order]
    # per-user 80/10/10 by the rank of a uniform draw inside the user
    starts = np.r_[0, np.flatnonzero(np.diff(warm[:, 0])) + 1]
    counts = np.diff(np.r_[starts, len(warm)])
    rank = np.arange(len(warm)) - np.repeat(starts, counts)
    frac = rank / np.repeat(counts, counts)
    part = np.where(frac < 0.8, 0, np.where(frac < 0.9, 1, 2))
    part[np.repeat(counts, counts) < 3] = 0  # too few warm items: all train
    return CDLData(name, n_users, n_items, content.astype(np.float32), warm[part == 0],
                   warm[part == 1], warm[part == 2], cv, ct, pairs[is_cv], pairs[is_ct])


def movielens_pairs(folder: Path) -> tuple[np.ndarray, int, int]:
    """Unique (user, item) pairs of ``sequences.txt`` with 0-based ids; n_users, n_items."""
    path = folder / "sequences.txt"
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected the normalised sequences")
    users, seqs = read_sequences(path)
    rows = [np.stack([np.full(len(s), u - 1), s - 1], 1) for u, s in zip(users, seqs, strict=True)]
    pairs = np.unique(np.concatenate(rows).astype(np.int64), axis=0)
    return pairs, int(pairs[:, 0].max()) + 1, int(pairs[:, 1].max()) + 1


def load_movielens(dataset: str, root: Path, cache: Path, cold_fraction: float,
                   seed: int) -> CDLData:
    """The ``movielens`` setting (module docstring)."""
    from fedrec.data.item_text import load_side_info, text_embeddings

    info = load_side_info(dataset, root)
    text = text_embeddings(info, cache)
    pairs, n_users, n_items = movielens_pairs(root / dataset)
    if n_items > info.n_items:
        raise DataFormatError(f"{root / dataset / 'sequences.txt'}: item {n_items} has no side "
                              "information row")
    content = np.concatenate([text[1:n_items + 1], info.meta[1:n_items + 1]], 1)
    return split_warm_cold(dataset, pairs, n_users, content, cold_fraction, seed)


def digit_users(labels: np.ndarray, n_users: int, per_user: int, concentration: float,
                seed: int) -> np.ndarray:
    """Synthetic users' liked images (module docstring): unique (user, image) pairs."""
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    rows = []
    for u in range(n_users):
        rng = np.random.default_rng([seed, 29, u])
        taste = rng.dirichlet(np.full(len(classes), concentration))
        liked: set[int] = set()
        while len(liked) < per_user:
            c = rng.choice(len(classes), p=taste)
            liked.add(int(rng.choice(by_class[c])))
        rows += [(u, i) for i in sorted(liked)]
    return np.array(rows, dtype=np.int64)


def load_digits_setting(n_users: int, per_user: int, concentration: float, cold_fraction: float,
                        seed: int) -> CDLData:
    """The ``digits`` setting (module docstring); pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    for key, value in (("n_users", n_users), ("per_user", per_user)):
        if value < 1:
            raise ConfigError(f"model.params.{key}={value}: expected >= 1")
    if concentration <= 0:
        raise ConfigError(f"model.params.taste_concentration={concentration}: expected > 0")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    if per_user > len(images) // 20:
        raise ConfigError(f"model.params.per_user={per_user}: expected <= {len(images) // 20}")
    pairs = digit_users(digits.target, n_users, per_user, concentration, seed)
    return split_warm_cold("digits", pairs, n_users, images, cold_fraction, seed)
