"""Label flipping on recommendation data: train benignly on a relabelled account history.

Tolpegin, Truex, Gursoy & Liu, "Data Poisoning Attacks Against Federated Learning Systems",
ESORICS 2020 (arXiv 2007.08432): malicious clients flip the labels of their training data
(class ``c`` → a chosen other class) and otherwise train like honest clients. No public code
is used.

Adapted to next-item recommendation, where the "labels" are the next items of the client's own
sequence (and also its inputs): the attacker takes the history of the account it controls, maps
every item through a fixed permutation of the catalogue, and sends the benign update (loss,
negatives, protocol) of the mapped sequence, so it teaches the model wrong transitions with a
benign-looking update:

* ``mapping: mirror``: item ``i`` → ``n_items + 1 − i`` (no knowledge needed; ids carry no
  meaning, so this is a random-looking relabelling);
* ``mapping: popularity``: the ``r``-th most popular item → the ``r``-th least popular
  (popular ↔ cold; needs ``attack.knowledge.popularity``), the recommendation analogue of
  flipping a frequent class into a rare one.

Untargeted: no target item is involved (ER is reported on the run's targets as for every run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attacks.base import DataPoisoningAttack
from attacks.common import account_history, require_popularity
from clients.update import RoundConfig

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

MAPPINGS = ("mirror", "popularity")


def mirror_map(n_items: int) -> np.ndarray:
    """``map[i] = n_items + 1 − i`` for ``i`` in ``1..n_items`` (``map[0] = 0``, padding)."""
    out = np.zeros(n_items + 1, dtype=np.int64)
    out[1:] = np.arange(n_items, 0, -1)
    return out


def popularity_map(counts: np.ndarray, n_items: int) -> np.ndarray:
    """The ``r``-th most popular item maps to the ``r``-th least popular (ties by id)."""
    items = np.arange(1, n_items + 1)
    pop = np.asarray(counts, dtype=np.float64)[1: n_items + 1]
    desc = items[np.lexsort((items, -pop))]  # most popular first
    out = np.zeros(n_items + 1, dtype=np.int64)
    out[desc] = desc[::-1]
    return out


class LabelFlip(DataPoisoningAttack):
    """Label flipping (see module docstring).

    Parameters
    ----------
    mapping : str
        ``"mirror"`` or ``"popularity"``.
    scale : float
        Multiplies the update.
    """

    name = "label_flip"

    def __init__(self, mapping: str = "mirror", scale: float = 1.0) -> None:
        super().__init__(scale)
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping={mapping!r}: expected one of {', '.join(MAPPINGS)}")
        self.mapping = mapping

    def fabricate(self, client_id: int, threat: ThreatModel, rc: RoundConfig, n_items: int,
                  max_len: int | None = None) -> np.ndarray:
        """The account's history with every item relabelled."""
        history = account_history(threat, client_id)
        if self.mapping == "mirror":
            table = mirror_map(n_items)
        else:
            table = popularity_map(require_popularity(threat, self.name), n_items)
        return table[history]


__all__ = ["LabelFlip", "mirror_map", "popularity_map"]
