"""The attack contract: a malicious client crafts an update with the benign update layout.

``Attack.craft(model, global_params, client_id, threat, rc)`` returns an
:class:`~clients.update.Update` (a gradient for FedSGD, a delta for FedAvg) for one malicious
client. Attacks must be stateless across rounds (everything they need is derived from the
global parameters, the round config and the threat model), so that they give the same update
in the local engine and in a Flower ClientApp on any Ray actor.

``DataPoisoningAttack`` covers the fabricated-profile attacks: the malicious client fabricates
a sequence and then trains on it exactly like a benign client (the benign update function).

Determinism: :meth:`Attack.craft` runs the attack inside :func:`torch.random.fork_rng` with torch
seeded from ``(seed, round, client_id)``, so dropout and any torch-side initialisation an attack
uses are the same in every engine, and the engine's own torch stream is left untouched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from clients.update import RoundConfig, Update, client_update
from fedrec.data.random import stream_key
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

#: Tag mixed into the torch seed of an attacker's computation.
TORCH_STREAM_TAG = 0x7A77AC


def torch_seed(rc: RoundConfig, client_id: int) -> int:
    """Torch seed of a malicious client's computation in round ``rc.round``."""
    key = stream_key(int(rc.seed), int(rc.round), int(client_id), TORCH_STREAM_TAG)
    return int(key) & ((1 << 63) - 1)


class Attack(ABC):
    """Base class of all attacks.

    Parameters
    ----------
    scale : float
        Multiplies the crafted update (the "boosting" factor of model-replacement attacks).
    """

    name: ClassVar[str]
    #: Knowledge the attack assumes beyond the global model and its accounts:
    #: ``"popularity"`` (``attack.knowledge.popularity``), ``"public"``
    #: (``attack.knowledge.public_fraction > 0``) and/or ``"defense"`` (an adaptive attack:
    #: ``attack.knowledge.defense`` names a rule). Checked when the threat model is built.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    @abstractmethod
    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        """Attack-specific update (before scaling)."""

    def craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
              client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        """The malicious update of ``client_id`` for round ``rc`` (scaled by ``scale``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(rc, client_id))
            upd = self._craft(model, global_params, client_id, threat, rc)
        if self.scale != 1.0:
            upd.params = {k: v * self.scale for k, v in upd.params.items()}
        return upd


class DataPoisoningAttack(Attack):
    """Fabricate a sequence for the malicious client, then update benignly on it."""

    @abstractmethod
    def fabricate(self, client_id: int, threat: ThreatModel, rc: RoundConfig, n_items: int,
                  max_len: int | None = None) -> np.ndarray:
        """The fake interaction sequence of ``client_id`` (items in ``1..n_items``).

        ``max_len`` is the model's input length (profiles longer than ``max_len + 1`` would be
        truncated by the model anyway).
        """

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        seq = self.fabricate(client_id, threat, rc, model.n_items, max_len=model.max_len)
        upd = client_update(model, global_params, seq, client_id, rc)
        upd.metrics["profile_len"] = float(len(seq))
        return upd


class NoAttack(Attack):
    """No malicious clients (the baseline row of every attack table)."""

    name = "none"

    def _craft(self, model, global_params, client_id, threat, rc):  # noqa: D102
        raise RuntimeError("attack 'none' has no malicious clients")
