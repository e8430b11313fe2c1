"""One experiment over a Ray cluster: the local engine with a round's clients sharded over actors.

``federation.engine: distributed`` runs the local engine's round
(:class:`fedrec.engine.federated.FederatedTrainer`) with its benign clients split into
``federation.workers`` contiguous shards (by client id), each computed **batched** by one Ray
actor exactly as the local engine computes a round (:func:`clients.update.batched_updates`, or
:func:`clients.update.combined_fedsgd_gradient` on the fast path of a linear FedSGD rule). The
driver holds the global parameters, crafts the attackers' updates, merges the shards' stacked
updates in client order (row-sparse item tables stay row-sparse) and runs the same server
pipeline (:class:`strategies.server.ServerAggregator`). Each actor builds the run's data and
model once from the config (``RunContext.build``), so only parameters go out and updates come
back each round.

Equivalence with the single-process engine: every client's update is a function of the global
parameters, its sequence and its own random stream, so without dropout the merged stack equals
the local engine's up to float summation order (the fast path sums per-shard partial sums);
the global parameters agree to ~1e-6 relative in float32 (pinned by
``tests/test_distributed_engine.py``). Dropout masks come from each actor's torch generator,
seeded from ``(seed, round, shard)``: a distributed run repeats itself, but draws other masks
than the single-process engine (as the Flower engine does).

Ray: ``federation.ray_address`` (``local`` starts a private instance with ``workers`` CPUs;
``auto`` or ``host:port`` joins a running cluster); each actor asks for
``federation.cpus_per_client`` CPUs and runs torch with that many threads.
"""

from __future__ import annotations

import atexit
import logging
import math
from typing import Any

import numpy as np
import torch

from clients.update import RoundConfig, batched_updates, combined_fedsgd_gradient
from fedrec.config import ExperimentConfig
from fedrec.data.random import stream_key
from fedrec.engine.context import RunContext
from fedrec.engine.federated import FederatedTrainer, Params, Stacked, place_clients
from fedrec.engine.federation import Federation, build_aggregator
from fedrec.errors import ConfigError
from strategies.server import ServerAggregator

log = logging.getLogger("fedrec")

#: Tag of the actors' torch streams (dropout), mixed with (seed, round, shard).
SHARD_STREAM_TAG = 0xD157


class ShardWorker:
    """One actor's side: the run's data and model, and a shard's updates for a round.

    Parameters
    ----------
    cfg : ExperimentConfig
        The run's config (data and model are rebuilt from it).
    threads : int
        torch threads of this actor.
    """

    def __init__(self, cfg: ExperimentConfig, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.ctx = RunContext.build(cfg)

    def _seqs(self, client_ids: np.ndarray) -> list[np.ndarray]:
        return [self.ctx.split.train[int(c)] for c in client_ids]

    def updates(self, params: Params, client_ids: np.ndarray, rc: RoundConfig, chunk_size: int,
                sparse_items: bool, torch_seed: int) -> tuple[Stacked, torch.Tensor]:
        """The shard's stacked updates and losses (:func:`clients.update.batched_updates`)."""
        torch.manual_seed(torch_seed)
        return batched_updates(self.ctx.model, params, self._seqs(client_ids), client_ids, rc,
                               chunk_size, sparse_items=sparse_items)

    def combined(self, params: Params, client_ids: np.ndarray, coef: torch.Tensor,
                 rc: RoundConfig, torch_seed: int) -> tuple[Params, torch.Tensor]:
        """The shard's ``sum_i coef[i] * g_i`` and losses (FedSGD fast path)."""
        torch.manual_seed(torch_seed)
        return combined_fedsgd_gradient(self.ctx.model, params, self._seqs(client_ids),
                                        client_ids, coef, rc)

    def ready(self) -> bool:
        """True once the actor is built (lets the driver wait for start-up)."""
        return True


def shard_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``workers`` contiguous shards of ``n`` clients (sizes differ by at
    most one; empty shards are left out)."""
    edges = np.linspace(0, n, workers + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def shard_torch_seed(rc: RoundConfig, shard: int, tag: int = SHARD_STREAM_TAG) -> int:
    """Torch seed (dropout masks) of a shard's batched computation in round ``rc.round``.

    Parameters
    ----------
    rc : RoundConfig
        Round settings (``seed`` and ``round`` are used).
    shard : int
        Index of the shard (a distributed engine's actor, a Flower partition node).
    tag : int
        Which engine's streams (so two engines' shard ``k`` draw different masks).

    Returns
    -------
    int
        A 64-bit seed, a function of ``(rc.seed, rc.round, shard, tag)`` only.
    """
    return int(stream_key(int(rc.seed), int(rc.round), int(shard), int(tag)))


class DistributedTrainer(FederatedTrainer):
    """The local engine with each round's benign clients computed by Ray actors.

    Parameters
    ----------
    fed : Federation
        Data, model, threat model, attack and schedule (the driver's copy).
    aggregator : ServerAggregator
        The server pipeline (runs on the driver).
    workers : int
        Number of actors.
    ray_address : str
        ``local`` (a private Ray instance) or the address of a running cluster.
    cpus_per_worker : float
        CPUs each actor reserves (its torch threads: at least 1).
    """

    def __init__(self, fed: Federation, aggregator: ServerAggregator, workers: int,
                 ray_address: str = "local", cpus_per_worker: float = 1.0) -> None:
        super().__init__(fed, aggregator)
        self.workers = int(workers)
        self.ray_address = ray_address
        self.cpus_per_worker = float(cpus_per_worker)
        self._actors: list[Any] = []
        self._ray: Any = None
        self._started_ray = False

    # ------------------------------------------------------------------ Ray
    def _pool(self) -> list[Any]:
        """Start Ray (if needed) and the actors on first use."""
        if self._actors:
            return self._actors
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          logging_level=logging.ERROR)
            if self.ray_address == "local":
                kwargs["num_cpus"] = max(1, math.ceil(self.workers * self.cpus_per_worker))
                ray.init(**kwargs)
            else:
                ray.init(address=self.ray_address, **kwargs)
            self._started_ray = True
            atexit.register(self.close)
        self._ray = ray
        actor = ray.remote(num_cpus=self.cpus_per_worker)(ShardWorker)
        threads = max(1, int(self.cpus_per_worker))
        self._actors = [actor.remote(self.ctx.cfg, threads) for _ in range(self.workers)]
        ray.get([a.ready.remote() for a in self._actors])
        return self._actors

    def close(self) -> None:
        """Stop the actors, and Ray when this trainer started it."""
        if self._ray is None:
            return
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
        if self._started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_ray = False
        self._ray = None

    def _torch_seed(self, rc: RoundConfig, shard: int) -> int:
        return shard_torch_seed(rc, shard)

    # ------------------------------------------------------------------ sharded round
    def benign_updates(self, rc: RoundConfig, benign: np.ndarray, seqs: list[np.ndarray]
                       ) -> tuple[Stacked, torch.Tensor]:
        """Shard the benign clients over the actors; merge their stacks in client order."""
        if len(benign) == 0:
            return super().benign_updates(rc, benign, seqs)
        actors = self._pool()
        params = self._ray.put(self.params)
        bounds = shard_bounds(len(benign), len(actors))
        futures = [actors[s].updates.remote(params, benign[a:b], rc, self.chunk_size,
                                            self.sparse_items, self._torch_seed(rc, s))
                   for s, (a, b) in enumerate(bounds)]
        results = self._ray.get(futures)
        parts = [(stk, np.arange(a, b)) for (stk, _), (a, b) in zip(results, bounds, strict=True)]
        losses = torch.cat([loss for _, loss in results])
        return place_clients(parts, len(benign)), losses

    def benign_combined(self, rc: RoundConfig, benign: np.ndarray, seqs: list[np.ndarray],
                        coef: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """Each actor's partial ``sum_i c_i g_i`` over its shard, summed on the driver."""
        actors = self._pool()
        params = self._ray.put(self.params)
        bounds = shard_bounds(len(benign), len(actors))
        futures = [actors[s].combined.remote(params, benign[a:b], coef[a:b], rc,
                                             self._torch_seed(rc, s))
                   for s, (a, b) in enumerate(bounds)]
        results = self._ray.get(futures)
        total = {n: v.clone() for n, v in results[0][0].items()}
        for grads, _ in results[1:]:
            for n in total:
                total[n] += grads[n]
        return total, torch.cat([loss for _, loss in results])


def build_distributed_trainer(ctx: RunContext) -> DistributedTrainer:
    """The distributed engine's trainer for ``ctx.cfg`` (``federation.engine: distributed``)."""
    cfg = ctx.cfg
    fc = cfg.federation
    if fc.engine != "distributed":
        raise ConfigError(f"federation.engine={fc.engine!r}: expected 'distributed'")
    fed = Federation.build(ctx)
    aggregator = build_aggregator(cfg, tuple(ctx.model.item_param_names), fed)
    return DistributedTrainer(fed, aggregator, fc.workers, fc.ray_address, fc.cpus_per_client)
