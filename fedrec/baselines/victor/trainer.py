"""VICTOR pre-training on the project's step loop (checkpoints, ``--resume``, ``metrics.jsonl``).

One step = one epoch over the warm (pre-training) videos in a seeded order, mini-batches of
``train.batch_size``; Adam (``train.lr``, ``train.weight_decay``) on the weighted sum of the
enabled proxy-task losses, then the momentum update and the queue writes
(:meth:`~fedrec.baselines.victor.model.VICTOR.after_step`). Corruptions draw from a generator
seeded by (run seed, epoch, batch), so a resumed run repeats them. With every task weight at 0
the steps train nothing ("no pre-training": the MiniLM text encoder and randomly initialised
video encoder are evaluated as they are).

Evaluation runs once, after the last step (no model selection), on the ``valid`` and ``test``
halves of the cold videos (:mod:`fedrec.baselines.victor.evaluate`). Seconds per epoch and peak
memory are in the run summary. The ``data`` section of the config is not used.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fedrec.baselines.victor.data import build_data
from fedrec.baselines.victor.evaluate import downstream
from fedrec.data.split import LeaveOneOut
from fedrec.engine.centralized import EpochTrainer

log = logging.getLogger("fedrec")


class VictorTrainer(EpochTrainer):
    """Pre-training epochs, one final downstream evaluation (module docstring)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        cfg, model = ctx.cfg, ctx.model
        self.data = build_data(cfg.seed, **model.data_params)
        model.attach(self.data.corpus_ids)
        inter = self.data.interactions
        ctx.split = LeaveOneOut(train=list(inter.train), valid=inter.test.copy(),
                                test=inter.test.copy(), n_items=len(self.data.videos),
                                name="vision:moving-digit-videos")
        log.info("victor videos: %d warm, %s cold; tasks on: %s", len(self.data.warm),
                 {k: len(v) for k, v in self.data.halves.items()},
                 [k for k, w in model.weights.items() if w > 0])
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)

    def is_eval_step(self, step: int) -> bool:
        """Only after the last step (the loop always evaluates then)."""
        return False

    def train_step(self, step: int) -> dict[str, float]:
        """One pre-training epoch; mean weighted loss and mean of each task's loss."""
        model, cfg = self.ctx.model, self.ctx.cfg
        if not any(w > 0 for w in model.weights.values()):
            return {}
        model.train()
        order = np.random.default_rng([cfg.seed, step]).permutation(self.data.warm)
        bs = cfg.train.batch_size
        sums: dict[str, float] = {}
        n = 0
        for i, start in enumerate(range(0, len(order), bs)):
            videos = order[start:start + bs]
            if len(videos) < 2:  # contrastive tasks need two videos
                continue
            g = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + step * 10_007 + i)
            frames = torch.from_numpy(self.data.videos.frames[videos])
            terms = model.loss_terms(frames, videos, self.data, g)
            loss = model.weighted_loss(terms)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            model.after_step()
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(videos)
            n += len(videos)
        return {k: v / max(n, 1) for k, v in sums.items()}

    def evaluate(self, split: str) -> dict[str, float]:
        """Downstream measurements on the ``split`` half of the cold videos."""
        return downstream(self.ctx.model, self.data, split, self.ctx.model.probe_max_iter)
