"""What every run needs before training: data split, model, evaluation closure, seeds."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fedrec.allocator import keep_freed_memory
from fedrec.config import ExperimentConfig
from fedrec.data.loader import load_split
from fedrec.data.split import LeaveOneOut
from fedrec.device import device_scope, resolve_device
from fedrec.evaluation import EvalProtocol, Scorer, evaluate
from fedrec.models import SequentialRecommender, build_model


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def eval_protocol(cfg: ExperimentConfig) -> EvalProtocol:
    """The :class:`EvalProtocol` of a config."""
    e = cfg.eval
    return EvalProtocol(ks=tuple(e.ks), full=e.full, sampled=e.sampled, n_negatives=e.n_negatives,
                        negative_sampling=e.negative_sampling, exclude_history=e.exclude_history,
                        seed=e.seed, batch_users=e.batch_users)


@dataclass
class RunContext:
    """Data, model and evaluation shared by the trainers of one run."""

    cfg: ExperimentConfig
    split: LeaveOneOut
    model: SequentialRecommender
    protocol: EvalProtocol
    targets: list[int] = field(default_factory=list)
    eval_users: np.ndarray | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def build(cls, cfg: ExperimentConfig, split: LeaveOneOut | None = None,
              device: str | None = None) -> RunContext:
        """Load data, build and seed the model, and move it to ``device`` (default
        ``cfg.device``; data stays in numpy on the CPU until batched)."""
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        keep_freed_memory()
        seed_everything(cfg.seed)
        split = split if split is not None else load_split(cfg.data)
        model = build_model(cfg.model.name, split.n_items, **cfg.model.build_kwargs())
        model.bce_reduction = cfg.model.bce_reduction
        device = resolve_device(device or cfg.device)
        if device.type != "cpu":
            model.to(device)
        return cls(cfg, split, model, eval_protocol(cfg), device=device)

    def evaluate(
        self,
        which: str,
        model: SequentialRecommender | None = None,
        scorer: Callable[[SequentialRecommender, np.ndarray], Scorer] | None = None,
    ) -> dict[str, float]:
        """Evaluate ``model`` (default: the context's) on ``"valid"`` or ``"test"``.

        Parameters
        ----------
        which : {"valid", "test"}
            Held-out split.
        model : SequentialRecommender, optional
            Model to evaluate (default: the context's).
        scorer : callable, optional
            ``scorer(model, users)`` builds the scorer handed to
            :func:`~fedrec.evaluation.evaluate` for the evaluated ``users`` (e.g. a user-aware
            one); default ``model.scores``.

        Returns
        -------
        dict
            Metrics by name.
        """
        model = model or self.model
        sp = self.split
        users = self.evaluated_users()
        if which == "valid":
            hist, held = sp.valid_inputs(users), sp.valid
        elif which == "test":
            hist, held = sp.test_inputs(users), sp.test
        else:
            raise ValueError(f"unknown split {which!r}")
        was_training = model.training
        model.eval()
        try:
            with device_scope(self.device):  # a no-op on the CPU
                score = model.scores if scorer is None else scorer(model, users)
                out = evaluate(score, hist, held[users], self.protocol, model.max_len,
                               sp.n_items, targets=self.targets,
                               popularity=sp.train_item_counts())
        finally:
            model.train(was_training)
        if self.cfg.eval.users is not None:
            out["eval_users"] = float(len(users))
        return out

    def evaluated_users(self) -> np.ndarray:
        """The users evaluated (sorted): ``eval_users`` (default all), or a sample of
        ``eval.users`` of them drawn from ``eval.seed`` (the same sample at every evaluation)."""
        users = self.eval_users if self.eval_users is not None else np.arange(self.split.n_users)
        k = self.cfg.eval.users
        if k is None or k >= len(users):
            return users
        rng = np.random.default_rng([self.cfg.eval.seed, 17])
        return np.sort(rng.choice(users, size=k, replace=False))
