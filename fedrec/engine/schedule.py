"""Which clients take part in which round.

An *epoch* shuffles all participating clients (benign and malicious alike, so malicious
clients take part at the same rate) with a seed derived from ``(seed, epoch)`` and cuts the
order into rounds of ``clients_per_round`` (DV-FSR: every client once per epoch, rounds of
256); the order is computed once per epoch. Each round's client ids are returned sorted, which
is also the order in which the server aggregates them in both engines.
"""

from __future__ import annotations

import math

import numpy as np


class RoundSchedule:
    """Deterministic client schedule.

    Parameters
    ----------
    participants : numpy.ndarray
        Client ids taking part.
    clients_per_round : int
        Round size (the last round of an epoch may be smaller).
    seed : int
        Experiment seed.
    epochs : int, optional
        Number of epochs; alternatively ``rounds``.
    rounds : int, optional
        Number of rounds (overrides ``epochs`` when both are set).
    """

    def __init__(self, participants: np.ndarray, clients_per_round: int, seed: int,
                 epochs: int | None = None, rounds: int | None = None) -> None:
        self.participants = np.asarray(participants, dtype=np.int64)
        self.size = min(int(clients_per_round), len(self.participants))
        self.seed = seed
        self.rounds_per_epoch = math.ceil(len(self.participants) / self.size)
        self.n_rounds = rounds if rounds is not None else (epochs or 1) * self.rounds_per_epoch
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its shuffled participants)

    def smallest_round(self) -> int:
        """Clients in the smallest round that runs (the last of an epoch when the participants
        do not divide into full rounds and the run reaches it)."""
        if self.n_rounds < self.rounds_per_epoch:
            return self.size
        return len(self.participants) % self.size or self.size

    def epoch_of(self, round_idx: int) -> int:
        """Epoch of a round."""
        return round_idx // self.rounds_per_epoch

    def is_epoch_end(self, round_idx: int) -> bool:
        """Whether the round is the last of its epoch."""
        return (round_idx + 1) % self.rounds_per_epoch == 0

    def clients(self, round_idx: int) -> np.ndarray:
        """Sorted client ids of round ``round_idx``."""
        order = self.epoch_order(self.epoch_of(round_idx))
        k = round_idx % self.rounds_per_epoch
        return np.sort(order[k * self.size:(k + 1) * self.size])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All participants in the shuffled order of ``epoch``.

        Shuffled once per epoch and kept (the last epoch's only): a round costs O(round size),
        not O(participants), which matters at 10^6 clients.
        """
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 11])
            self._order = (epoch, rng.permutation(self.participants))
        return self._order[1]
