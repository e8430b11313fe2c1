"""EB: explicit boosting with a fake profile whose positives are the target items.

The "EB" baseline of Rong, Zhang, He, Li, Chen & Yin, "Poisoning Deep Learning Based
Recommender Model in Federated Learning Scenarios", IJCAI 2022 (arXiv 2204.13594): a malicious
client trains like a benign client, but on a profile in which the target items are its positive
interactions, so its honest-looking update explicitly boosts the targets.

Adaptation to sequential models (where a profile is an ordered sequence and the loss is
next-item prediction), two profile choices:

* ``profile: append`` (default): the history of the account the client controls followed by the
  target(s) — the only new "positive" is the target, placed where the next recommendation is
  scored, after a realistic history (truncated so that the profile fits ``max_len + 1``);
* ``profile: repeat``: the targets repeated to the profile length (``items_limit``, or a draw from
  the benign length distribution): every next-item example has a target as its positive, the
  literal sequence analogue of "a profile whose positives are the targets".

The update is the benign update function on that profile (FedSGD gradient or FedAvg delta);
``num_examples`` is the profile's benign count (``len − 1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attacks.base import DataPoisoningAttack
from attacks.common import account_history, profile_rng, sample_lengths, targets_of
from clients.update import RoundConfig

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

#: Tag of EB's profile stream (lengths of ``repeat`` profiles).
PROFILE_TAG = 0xEB


def boosted_profile(history: np.ndarray, targets: np.ndarray, profile: str, length: int,
                    max_len: int) -> np.ndarray:
    """EB's profile: ``history + targets`` (``append``) or targets cycled to ``length`` (``repeat``).

    Raises
    ------
    ValueError
        Unknown ``profile``.
    """
    if profile == "append":
        keep = max(0, max_len + 1 - len(targets))
        return np.concatenate([history[len(history) - min(keep, len(history)):], targets]).astype(np.int64)
    if profile == "repeat":
        return np.resize(targets, max(2, length)).astype(np.int64)
    raise ValueError(f"profile={profile!r}: expected 'append' or 'repeat'")


class ExplicitBoosting(DataPoisoningAttack):
    """EB (see module docstring).

    Parameters
    ----------
    profile : str
        ``"append"`` (account history + targets) or ``"repeat"`` (targets only).
    items_limit : int or None
        Length of ``repeat`` profiles (None: benign length distribution).
    scale : float
        Multiplies the update.
    """

    name = "eb"

    def __init__(self, profile: str = "append", items_limit: int | None = None, scale: float = 1.0) -> None:
        super().__init__(scale)
        if profile not in ("append", "repeat"):
            raise ValueError(f"profile={profile!r}: expected 'append' or 'repeat'")
        if items_limit is not None and int(items_limit) < 2:
            raise ValueError(f"items_limit={items_limit}: expected >= 2")
        self.profile = profile
        self.items_limit = None if items_limit is None else int(items_limit)

    def fabricate(self, client_id: int, threat: ThreatModel, rc: RoundConfig, n_items: int,
                  max_len: int | None = None) -> np.ndarray:
        """The boosted profile of ``client_id``."""
        targets = targets_of(threat)
        cap = max_len if max_len is not None else 200
        length = 0
        if self.profile == "repeat":
            length = int(sample_lengths(threat, profile_rng(rc.seed, client_id, PROFILE_TAG), 1,
                                        self.items_limit, cap)[0])
        history = account_history(threat, client_id) if self.profile == "append" else np.zeros(0, np.int64)
        return boosted_profile(history, targets, self.profile, length, cap)
