"""Which clients take part in which round.

An *epoch* shuffles all participating clients (benign and malicious alike, so malicious
clients take part at the same rate) with a seed derived from ``(seed, epoch)`` and cuts the
order into rounds of ``clients_per_round`` (DV-FSR: every client once per epoch, rounds of
256). Each round's client ids are returned sorted, which is also the order in which the server
aggregates them in both engines.
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

    def epoch_of(self, round_idx: int) -> int:
        """Epoch of a round."""
        return round_idx // self.rounds_per_epoch

    def is_epoch_end(self, round_idx: int) -> bool:
        """Whether the round is the last of its epoch."""
        return (round_idx + 1) % self.rounds_per_epoch == 0

    def clients(self, round_idx: int) -> np.ndarray:
        """Sorted client ids of round ``round_idx``."""
        epoch = self.epoch_of(round_idx)
        order = np.random.default_rng([self.seed, epoch, 11]).permutation(self.participants)
        k = round_idx % self.rounds_per_epoch
        return np.sort(order[k * self.size:(k + 1) * self.size])
