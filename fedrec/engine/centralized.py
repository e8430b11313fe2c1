"""Centralized training: one client holding every user's data, trained by mini-batches.

This is the single-client special case of the federation (the server applies the one client's
update with step 1), written as its own trainer because it needs mini-batch epochs, an
optimizer with state (Adam) and validation-based early stopping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedrec.data.batching import minibatches
from fedrec.data.random import stream_key
from fedrec.device import cuda_rng_state, set_cuda_rng_state
from fedrec.engine.context import RunContext
from fedrec.engine.loop import Trainer


class EpochTrainer(Trainer):
    """Base of the trainers whose step is one epoch of a torch optimizer on the context's model.

    Holds what such trainers share: the step count and evaluation schedule (``train.epochs``,
    ``train.eval_every``), the best-model copies, and the checkpoint (model, optimizer, the LR
    scheduler if any, torch RNG for dropout). A subclass sets ``self.ctx`` and
    ``self.optimizer`` (and ``self.scheduler`` if it steps one) and implements
    :meth:`train_step` and :meth:`evaluate`.
    """

    unit = "epoch"
    ctx: RunContext
    optimizer: torch.optim.Optimizer
    #: LR scheduler stepped by the subclass; checkpointed when set
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    @property
    def n_steps(self) -> int:
        """Configured number of epochs."""
        return self.ctx.cfg.train.epochs

    def is_eval_step(self, step: int) -> bool:
        """Evaluate every ``train.eval_every`` epochs."""
        return (step + 1) % self.ctx.cfg.train.eval_every == 0

    def model_state(self) -> dict[str, Any]:
        """A copy of the model parameters and buffers."""
        return {k: v.detach().clone() for k, v in self.ctx.model.state_dict().items()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Load model parameters."""
        self.ctx.model.load_state_dict(state)

    def parameters_to_check(self) -> dict[str, Any]:
        """The live model state (no copy)."""
        return dict(self.ctx.model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, LR schedule (if any) and torch RNG (dropout) state."""
        state = {"model": self.model_state(), "optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        state["torch_rng"] = torch.get_rng_state()
        if cuda := cuda_rng_state():  # dropout on a GPU
            state["cuda_rng"] = cuda
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.ctx.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        set_cuda_rng_state(state.get("cuda_rng"))


class PretrainThenTrainTrainer(EpochTrainer):
    """An :class:`EpochTrainer` with ``pre_steps`` pre-training epochs before the
    ``train.epochs`` epochs of the main stage (MG-BERT, SASS).

    Evaluation runs every ``train.eval_every`` main-stage epochs; each step's ``stage`` is
    ``"pretrain"`` or :attr:`main_stage`; the pre-training optimizer is checkpointed with the
    rest. A subclass sets ``self.pre_steps`` and ``self.pre_optimizer`` besides what
    :class:`EpochTrainer` needs.
    """

    #: name of the stage after pre-training in ``metrics.jsonl``
    main_stage = "finetune"
    pre_steps: int
    pre_optimizer: torch.optim.Optimizer

    @property
    def n_steps(self) -> int:
        """Pre-training epochs + main-stage epochs."""
        return self.pre_steps + self.ctx.cfg.train.epochs

    def is_eval_step(self, step: int) -> bool:
        """Every ``train.eval_every`` main-stage epochs."""
        every = self.ctx.cfg.train.eval_every
        return step >= self.pre_steps and (step - self.pre_steps + 1) % every == 0

    def step_info(self, step: int) -> dict[str, Any]:
        """Which stage the step belongs to."""
        return {"stage": "pretrain" if step < self.pre_steps else self.main_stage}

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the pre-training optimizer."""
        return {**super().state_dict(), "pre_optimizer": self.pre_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        super().load_state_dict(state)
        self.pre_optimizer.load_state_dict(state["pre_optimizer"])


class CentralizedTrainer(EpochTrainer):
    """Mini-batch training of the context's model (Adam), one step = one epoch.

    Parameters
    ----------
    ctx : RunContext
        Data and model.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        tc = ctx.cfg.train
        self.users = np.array([u for u, s in enumerate(ctx.split.train) if len(s) >= 2])
        self.optimizer = torch.optim.Adam(ctx.model.parameters(), lr=tc.lr,
                                          weight_decay=tc.weight_decay)

    def train_step(self, step: int) -> dict[str, float]:
        """One epoch over all users in a seeded random order."""
        ctx, model = self.ctx, self.ctx.model
        model.train()
        rng = np.random.default_rng([ctx.cfg.seed, step])
        total, n = 0.0, 0
        for idx in minibatches(len(self.users), ctx.cfg.train.batch_size, rng):
            users = self.users[idx]
            batch = model.prepare_batch([ctx.split.train[u] for u in users],
                                        stream_key(ctx.cfg.seed, step, users))
            loss = model.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(users)
            n += len(users)
        return {"loss": total / max(n, 1)}

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``split``."""
        return self.ctx.evaluate(split)
