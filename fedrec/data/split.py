"""Leave-one-out split and per-user client data.

For every user the last item is the test target, the second-to-last the validation target, and
the rest is training data (Kang & McAuley, ICDM 2018; the protocol of SASRec, BERT4Rec and the
federated-attack literature). Validation scores the model on the training prefix; test scores
it on training prefix + validation item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.dataset import SequenceDataset
from fedrec.errors import DataFormatError


@dataclass
class LeaveOneOut:
    """A leave-one-out split of a :class:`SequenceDataset`.

    Attributes
    ----------
    train : list of numpy.ndarray
        Training items of each user (all but the last two).
    valid : numpy.ndarray
        Validation target of each user.
    test : numpy.ndarray
        Test target of each user.
    n_items : int
        Item vocabulary size.
    """

    train: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray
    n_items: int
    name: str = "dataset"

    @property
    def n_users(self) -> int:
        """Number of users."""
        return len(self.train)

    def valid_inputs(self, users: np.ndarray | None = None) -> list[np.ndarray]:
        """Histories used to predict the validation item (of ``users``; default all)."""
        if users is None:
            return self.train
        return [self.train[u] for u in np.asarray(users).tolist()]

    def test_inputs(self, users: np.ndarray | None = None) -> list[np.ndarray]:
        """Histories used to predict the test item (train + validation item) of ``users``
        (default all); only the asked users' histories are built."""
        if users is None:
            return [np.append(t, v) for t, v in zip(self.train, self.valid)]
        return [np.append(self.train[u], self.valid[u]) for u in np.asarray(users).tolist()]

    def full_histories(self) -> list[np.ndarray]:
        """Complete sequences (train + valid + test)."""
        return [np.append(t, [v, s]) for t, v, s in zip(self.train, self.valid, self.test)]

    def train_item_counts(self) -> np.ndarray:
        """Interaction count of each item in the training part (index 0 is 0)."""
        return np.bincount(np.concatenate(self.train), minlength=self.n_items + 1)


def leave_one_out(ds: SequenceDataset) -> LeaveOneOut:
    """Split every user's sequence into train / validation item / test item.

    Raises
    ------
    DataFormatError
        If a user has fewer than 3 items (nothing would be left to train on).
    """
    lens = ds.lengths()
    short = np.flatnonzero(lens < 3)
    if len(short):
        raise DataFormatError(
            f"{ds.name}: user row {int(short[0])} has {int(lens[short[0]])} items; "
            "leave-one-out needs >= 3 (set data.min_len >= 3)"
        )
    train = [s[:-2] for s in ds.sequences]
    valid = np.fromiter((s[-2] for s in ds.sequences), dtype=np.int64, count=ds.n_users)
    test = np.fromiter((s[-1] for s in ds.sequences), dtype=np.int64, count=ds.n_users)
    return LeaveOneOut(train, valid, test, ds.n_items, ds.name)
