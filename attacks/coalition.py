"""What colluding attackers share: the benign-like updates of their own accounts.

The general model-poisoning attacks (ALIE, IPM, Min-Max/Min-Sum, Fang et al.) and the adaptive
attacks estimate "what a benign update looks like" from the **coalition's own benign-like
updates**: every malicious client computes the update a benign client would send for the
account history it controls (:func:`clients.update.client_update` at the round's global
parameters, same protocol, same negatives), and the attackers pool these. This is the
partial-knowledge setting of Fang et al. (USENIX Security 2020) and the "corrupted workers'
own gradients" of Baruch et al. (NeurIPS 2019); attackers never read the server's state or
other clients' real updates.

Determinism: a member's update is computed inside :func:`clients.update.client_torch_rng` of
``(seed, round, member id)``, so every attacker computes the same pool whichever attacker
crafts, in whichever engine. The pool of a round is memoised per process
(:class:`CoalitionPool`): the local engine crafts all of a round's attackers in one process,
so the pool is computed once per round; a Flower ClientApp recomputes it (same numbers). What
the attackers derive from the pool alone (ALIE's mean and deviation, Min-Max's vector, Fang's
Krum vector) is memoised with it (:meth:`CoalitionPool.derived`): with 10 % attackers on Steam
(375 accounts, ~23 in a round) recomputing it per attacker made a round ~40 s (a profile of
one round; docs/benchmarks.md has the per-craft costs measured after the change).

Everything here works on flattened update vectors (``float64`` ``[m, D]``, key order of the
benign layout); :func:`unflatten_like` maps a vector back to the update layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clients.update import RoundConfig, Update, client_torch_rng, client_update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

Params = dict[str, torch.Tensor]


def flatten_update(update: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """All tensors of an update concatenated into one ``float64`` vector (key order)."""
    return torch.cat([v.reshape(-1).double() for v in update.values()])


def unflatten_like(vec: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Inverse of :func:`flatten_update`: ``vec`` cut into ``like``'s shapes and dtypes."""
    out: Params = {}
    start = 0
    for name, ref in like.items():
        n = ref.numel()
        out[name] = vec[start: start + n].reshape(ref.shape).to(ref.dtype).clone()
        start += n
    if start != vec.numel():
        raise ValueError(f"unflatten_like: vector of {vec.numel()} values for {start} parameters")
    return out


def member_update(model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
                  threat: ThreatModel, member: int, rc: RoundConfig) -> Update:
    """The benign-like update of coalition member ``member`` (its account's benign update)."""
    history = np.asarray(threat.accounts[int(member)], dtype=np.int64)
    with client_torch_rng(rc, int(member)):
        return client_update(model, global_params, history, int(member), rc)


def _fingerprint(global_params: Mapping[str, torch.Tensor]) -> tuple:
    return tuple((n, v.data_ptr(), v._version, tuple(v.shape)) for n, v in global_params.items())


class CoalitionPool:
    """Per-process memo of the coalition's benign-like updates for the current round.

    Holds one round at a time, keyed by the round config, the threat model's members and the
    identity (storage and version) of the global parameters, so a new round or new parameters
    recompute it. The memo never changes a result, only avoids recomputing it.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None
        self._losses: dict[int, float] = {}
        self._derived: dict[str, Any] = {}

    def stack(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
              threat: ThreatModel, rc: RoundConfig) -> torch.Tensor:
        """``float64 [m, D]``: every member's flattened benign-like update (member id order).

        Raises
        ------
        ValueError
            The threat model has no malicious account.
        """
        members = tuple(int(c) for c in sorted(threat.accounts))
        if not members:
            raise ValueError("the coalition is empty: the threat model has no malicious account")
        key = (rc, members, _fingerprint(global_params), id(threat))
        if key != self._key or self._value is None:
            self._value, self._derived, self._losses = None, {}, {}
            rows: torch.Tensor | None = None
            for i, c in enumerate(members):  # each member's row written in place: no stack copy
                upd = member_update(model, global_params, threat, c, rc)
                flat = [v.reshape(-1) for v in upd.params.values()]
                if rows is None:
                    size = sum(f.numel() for f in flat)
                    rows = torch.empty((len(members), size), dtype=torch.float64,
                                       device=flat[0].device)
                rows[i].copy_(torch.cat(flat))  # as flatten_update: the values in float64
                self._losses[c] = float(upd.metrics["loss"])
            self._value = rows
            self._key = key
        assert self._value is not None
        return self._value

    def derived(self, name: str, compute: Callable[[torch.Tensor], Any]) -> Any:
        """``compute(stack)`` for the round of the last :meth:`stack`, computed once.

        For what every attacker derives from the pool alone (not from its own id): the first
        attacker of a round computes it, the others reuse it. Callers must not modify it.

        Raises
        ------
        RuntimeError
            :meth:`stack` was not called first.
        """
        if self._value is None:
            raise RuntimeError("CoalitionPool.derived: call stack() for the round first")
        if name not in self._derived:
            self._derived[name] = compute(self._value)
        return self._derived[name]

    def loss_of(self, member: int) -> float:
        """Benign training loss of ``member``'s account in the last :meth:`stack` (what a benign
        client with that history reports; untargeted attackers report it as their loss)."""
        return self._losses[int(member)]


def benign_mean_std(benign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise mean and standard deviation (population, ``ddof = 0``) of ``[m, D]``.

    With a single member the deviation is zero.
    """
    return benign.mean(dim=0), benign.std(dim=0, unbiased=False)


def pairwise_sq_dists(benign: torch.Tensor) -> torch.Tensor:
    """``‖b_i − b_j‖²`` for the rows of ``benign`` ``[m, D]`` from one Gram matrix (zero
    diagonal; no ``[m, D]`` temporary)."""
    sq = torch.linalg.vector_norm(benign, dim=1) ** 2
    out = (sq[:, None] + sq[None, :] - 2.0 * benign @ benign.T).clamp_min(0)
    return out.fill_diagonal_(0.0)


def max_pairwise_distance(benign: torch.Tensor) -> float:
    """``max_{i,j} ‖b_i − b_j‖`` over the rows of ``benign`` (0 for one row)."""
    if benign.shape[0] < 2:
        return 0.0
    return float(torch.cdist(benign, benign).max())


__all__ = ["CoalitionPool", "benign_mean_std", "flatten_update", "max_pairwise_distance",
           "member_update", "pairwise_sq_dists", "unflatten_like"]
