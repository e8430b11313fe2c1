"""Downstream interaction splits and item features of MG-BERT/PMGT's top-N recommendation.

* ``protocol: random80`` — the official code's split (``data_process.py``): a random 80/20
  split of all (user, item) interactions into train/test (seeded). The code has no validation
  set; we hold out a random 1/8 of its train part for early stopping [INF] (70/10/20 overall).
* ``protocol: loo`` — fedrec's leave-one-out: per user the last item of ``sequences.txt`` is
  the test item, the one before it the validation item, the rest train.

Items (nodes) are ``0..n_items-1`` (file id − 1). Raw node features are
``[MiniLM text embedding (384); metadata]`` from :mod:`fedrec.data.item_text` (the image
modality of the paper is replaced by the metadata vector; a dataset without metadata has the
text modality only). "Sparse" items are those with at most ``sparse_max`` training interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.formats import read_sequences
from fedrec.errors import ConfigError, DataFormatError

PROTOCOLS = ("random80", "loo")


@dataclass
class RecData:
    """Train / valid / test (user, item) pairs, item features and their modality sizes."""

    name: str
    n_users: int
    n_items: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: np.ndarray
    dims: tuple[int, ...]

    def item_counts(self) -> np.ndarray:
        """Training interactions per item."""
        return np.bincount(self.train[:, 1], minlength=self.n_items)


def split_pairs(users: list[int], seqs: list[np.ndarray], protocol: str,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item) train/valid/test pairs (0-based) under ``protocol`` (module docstring)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"model.params.protocol={protocol!r}: expected one of "
                          f"{', '.join(PROTOCOLS)}")
    if protocol == "loo":
        tr, va, te = [], [], []
        for u, s in zip(users, seqs, strict=True):
            s = list(dict.fromkeys(int(i) - 1 for i in s))  # first occurrence of each item
            if len(s) < 3:
                tr += [(u - 1, i) for i in s]
                continue
            tr += [(u - 1, i) for i in s[:-2]]
            va.append((u - 1, s[-2]))
            te.append((u - 1, s[-1]))
        return tuple(np.array(x, dtype=np.int64).reshape(-1, 2) for x in (tr, va, te))
    rows = [np.stack([np.full(len(s), u - 1), s - 1], 1) for u, s in zip(users, seqs, strict=True)]
    pairs = np.unique(np.concatenate(rows).astype(np.int64), axis=0)
    r = np.random.default_rng([seed, 31]).random(len(pairs))
    return pairs[r < 0.7], pairs[(r >= 0.7) & (r < 0.8)], pairs[r >= 0.8]


def load_rec_data(dataset: str, root: Path, cache: Path, protocol: str, seed: int) -> RecData:
    """Interactions of ``<root>/<dataset>/sequences.txt`` and the items' raw features."""
    from fedrec.data.item_text import load_side_info, text_embeddings

    path = root / dataset / "sequences.txt"
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected the normalised sequences")
    users, seqs = read_sequences(path)
    train, valid, test = split_pairs(users, seqs, protocol, seed)
    info = load_side_info(dataset, root)
    text = text_embeddings(info, cache)[1:]
    n_items = info.n_items
    n_users = int(max(users))
    dims = (text.shape[1],) + ((info.meta.shape[1],) if info.meta.shape[1] else ())
    feats = np.concatenate([text, info.meta[1:]], 1) if len(dims) > 1 else text
    return RecData(dataset, n_users, n_items, train, valid, test, feats.astype(np.float32), dims)


def synthetic_rec_data(n_users: int, n_items: int, per_user: int, seed: int) -> RecData:
    """A small clustered stand-in for tests and the synthetic config: items in 8 clusters with
    two noisy modalities sharing the cluster signal (64-d, 32-d); users prefer 1–2 clusters."""
    rng = np.random.default_rng([seed, 41])
    n_c = 8
    cluster = rng.integers(n_c, size=n_items)
    centres = [rng.normal(size=(n_c, d)) for d in (64, 32)]
    feats = np.concatenate([c[cluster] + 0.5 * rng.normal(size=(n_items, c.shape[1]))
                            for c in centres], 1).astype(np.float32)
    users, seqs = [], []
    for u in range(n_users):
        fav = rng.choice(n_c, size=2, replace=False)
        pool = np.flatnonzero(np.isin(cluster, fav))
        k = min(per_user, len(pool))
        seqs.append(rng.choice(pool, size=k, replace=False) + 1)
        users.append(u + 1)
    train, valid, test = split_pairs(users, seqs, "random80", seed)
    return RecData("synthetic", n_users, n_items, train, valid, test, feats, (64, 32))
