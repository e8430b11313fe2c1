"""The distributed engine (a round's clients sharded over Ray actors) equals the local engine.

A fresh local Ray instance with 2 CPUs and 2 actors (explicit ``ray_address: local``); dropout
off (actors draw their own dropout masks). Rules: Krum with attackers (per-client path,
row-sparse item tables merged from the shards) and the sum (fast path: per-shard partial sums
of the combined gradient). The global parameters after the rounds agree with the single-process
engine's in float32 to 1e-5 (the issue's bound), far above the rounding of a handful of
reordered float32 sums (~1e-7 relative) and far below any real difference (a wrong shard
order or a dropped client moves them by ~1e-2).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_FEDERATED, config_with

from fedrec.engine.context import RunContext
from fedrec.engine.distributed import DistributedTrainer, shard_bounds
from fedrec.runner import build_trainer

pytestmark = pytest.mark.slow

torch.set_num_threads(1)


def _cfg(**over):
    base = {"model.dropout": 0.0, "federation.epochs": 1, "federation.ray_address": "local",
            "federation.workers": 2, "attack.name": "random", "attack.fraction": 0.1}
    return config_with(json.loads(json.dumps(TINY_FEDERATED)), **{**base, **over})


def _run(cfg, steps: int):
    trainer = build_trainer(cfg, RunContext.build(cfg))
    try:
        metrics = [trainer.train_step(s) for s in range(steps)]
    finally:
        if isinstance(trainer, DistributedTrainer):
            trainer.close()
    return trainer, metrics


def test_shard_bounds_cover_every_client_once():
    for n, w in [(25, 2), (7, 3), (2, 4), (0, 2)]:
        bounds = shard_bounds(n, w)
        covered = np.concatenate([np.arange(a, b) for a, b in bounds]) if bounds else []
        assert list(covered) == list(range(n))
        assert len(bounds) <= w


@pytest.mark.parametrize("over", [
    {"defense.name": "krum", "defense.params": {"f": 2}, "federation.item_updates": "sparse"},
    {"defense.name": "sum"},
])
def test_distributed_equals_local(over):
    local, m_local = _run(_cfg(**{**over, "federation.engine": "local"}), 3)
    dist, m_dist = _run(_cfg(**{**over, "federation.engine": "distributed"}), 3)
    assert isinstance(dist, DistributedTrainer) and not isinstance(local, DistributedTrainer)
    for a, b in zip(m_local, m_dist, strict=True):
        assert a["clients"] == b["clients"] and a["dropped"] == b["dropped"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for n, v in local.params.items():
        torch.testing.assert_close(dist.params[n], v, atol=1e-5, rtol=1e-5)
    moved = sum(float((local.params[n] - p.detach()).abs().max())
                for n, p in local.ctx.model.named_parameters())
    assert moved > 1e-3  # the rounds did change the model
