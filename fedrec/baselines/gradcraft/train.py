"""Multi-task training with a pluggable gradient combiner (GradCraft, EW, PCGrad, MGDA).

Protocol follows the GradCraft paper's setup (Bai et al., KDD 2024, arXiv:2407.19682): Adam,
per-task BCE losses, per-task gradients merged by a combiner each step, early stopping on the
mean validation AUC over tasks with the best weights restored, and per-task test AUC / GAUC.
Deviation: L2 regularisation is Adam's (coupled) ``weight_decay`` applied to the merged
gradient, not the reference code's separate second optimizer step on the L2 term.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedrec.baselines.gradcraft.combiners import get_combiner
from fedrec.baselines.gradcraft.data import (
    ML100K_TASKS,
    MultiTaskData,
    MultiTaskTable,
    load_ml100k_multitask,
    split_random,
    synthetic_multitask,
)
from fedrec.baselines.gradcraft.metrics import auc, gauc
from fedrec.baselines.gradcraft.mtl import MultiTaskModel, build_model
from fedrec.baselines.gradcraft.step import multi_objective_backward
from fedrec.errors import ConfigError

__all__ = ["MultiTaskConfig", "SyntheticDataConfig", "evaluate", "load_data", "train_multitask"]


class SyntheticDataConfig(BaseModel):
    """Parameters of :func:`~fedrec.baselines.gradcraft.data.synthetic_multitask`."""

    model_config = ConfigDict(extra="forbid")

    n_rows: int = Field(20_000, ge=1)
    n_users: int = Field(500, ge=1)
    n_items: int = Field(1_000, ge=1)
    base_rates: list[float] = Field(default_factory=lambda: [0.3, 0.1, 0.02], min_length=1)
    shared_weights: list[float] | None = None
    n_context_fields: int = Field(2, ge=0)
    side_vocab: int = Field(20, ge=1)
    latent_dim: int = Field(8, ge=1)
    signal: float = Field(2.0, gt=0)


class MultiTaskConfig(BaseModel):
    """Typed config of one multi-task run (embeddable in the project's experiment config).

    ``data_seed`` fixes the data (negative sampling / synthetic table / split); ``seed`` fixes
    model initialisation, batch order, dropout and PCGrad's task orders. Same config -> same
    results on the same machine and thread count.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["ml-100k", "synthetic"] = "synthetic"
    data_dir: Path | None = None
    tasks: list[str] | None = None
    neg_ratio: int = Field(2, ge=1)
    split: Literal["user_time", "random"] = "user_time"
    valid_frac: float = Field(0.1, ge=0, lt=1)
    test_frac: float = Field(0.1, gt=0, lt=1)
    data_seed: int = Field(0, ge=0)
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)

    model: Literal["shared_bottom", "ple"] = "ple"
    embedding_dim: int = Field(16, ge=1)
    hidden_units: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    tower_units: list[int] = Field(default_factory=lambda: [32])
    dropout: float = Field(0.0, ge=0, lt=1)

    combiner: str = "gradcraft"
    combiner_params: dict[str, Any] = Field(default_factory=dict)

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4096, ge=1)
    eval_batch_size: int = Field(65_536, ge=1)
    epochs: int = Field(50, ge=1)
    patience: int = Field(5, ge=1)
    min_delta: float = Field(1e-5, ge=0)
    seed: int = Field(0, ge=0)
    num_threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> MultiTaskConfig:
        if self.valid_frac <= 0:
            raise ValueError("valid_frac: expected > 0 (early stopping needs a validation split)")
        if self.dataset == "ml-100k":
            if self.data_dir is None:
                raise ValueError("data_dir: required when dataset is 'ml-100k'")
            bad = [t for t in (self.tasks or []) if t not in ML100K_TASKS]
            if bad:
                raise ValueError(
                    f"tasks: unknown ml-100k task {bad[0]!r}; expected {sorted(ML100K_TASKS)}"
                )
        elif self.tasks is not None:
            raise ValueError(
                "tasks: only for dataset 'ml-100k' (synthetic tasks follow base_rates)"
            )
        try:
            get_combiner(self.combiner, self.combiner_params)
        except ConfigError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith("combiner") else f"combiner_params.{msg}") from exc
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MultiTaskConfig:
        """Validate a plain mapping (e.g. parsed YAML); raise a one-line :class:`ConfigError`."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{loc}: {msg}" if loc else msg) from None


def load_data(cfg: MultiTaskConfig) -> MultiTaskData:
    """Build the train/valid/test tables a config describes.

    Parameters
    ----------
    cfg : MultiTaskConfig
        Run config.

    Returns
    -------
    MultiTaskData
        The splits.
    """
    if cfg.dataset == "ml-100k":
        assert cfg.data_dir is not None
        return load_ml100k_multitask(
            cfg.data_dir,
            tasks=cfg.tasks or ("watched", "liked", "loved"),
            neg_ratio=cfg.neg_ratio,
            split=cfg.split,
            valid_frac=cfg.valid_frac,
            test_frac=cfg.test_frac,
            seed=cfg.data_seed,
        )
    s = cfg.synthetic
    table = synthetic_multitask(
        n_rows=s.n_rows,
        n_users=s.n_users,
        n_items=s.n_items,
        base_rates=s.base_rates,
        shared_weights=s.shared_weights,
        n_context_fields=s.n_context_fields,
        side_vocab=s.side_vocab,
        latent_dim=s.latent_dim,
        signal=s.signal,
        seed=cfg.data_seed,
    )
    info = {"dataset": "synthetic", **s.model_dump()}
    data = split_random(table, cfg.valid_frac, cfg.test_frac, cfg.data_seed, info)
    data.info["positive_rates"] = {
        "train": data.train.positive_rates(),
        "valid": data.valid.positive_rates(),
        "test": data.test.positive_rates(),
    }
    return data


def _tensors(table: MultiTaskTable) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    cat = torch.from_numpy(table.cat)
    dense = torch.from_numpy(table.dense) if table.dense.shape[1] > 0 else None
    return cat, dense, torch.from_numpy(table.labels)


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, table: MultiTaskTable, batch_size: int = 65_536
) -> dict[str, Any]:
    """Per-task AUC and GAUC of ``model`` on ``table`` (eval mode).

    Parameters
    ----------
    model : MultiTaskModel
        Trained model.
    table : MultiTaskTable
        Evaluation rows (column 0 of ``cat`` is the user id).
    batch_size : int
        Rows per forward pass.

    Returns
    -------
    dict
        ``auc`` and ``gauc`` (task -> float), ``mean_auc``, ``mean_gauc``.
    """
    was_training = model.training
    model.eval()
    cat, dense, labels = _tensors(table)
    scores = []
    for start in range(0, len(table), batch_size):
        sl = slice(start, start + batch_size)
        scores.append(model(cat[sl], None if dense is None else dense[sl]))
    model.train(was_training)
    score = torch.cat(scores).numpy() if scores else np.zeros((0, labels.shape[1]))
    y = labels.numpy()
    users = table.users
    out_auc = {t: auc(y[:, k], score[:, k]) for k, t in enumerate(table.task_names)}
    out_gauc = {t: gauc(y[:, k], score[:, k], users) for k, t in enumerate(table.task_names)}
    return {
        "auc": out_auc,
        "gauc": out_gauc,
        "mean_auc": float(np.mean(list(out_auc.values()))),
        "mean_gauc": float(np.mean(list(out_gauc.values()))),
    }


def train_multitask(cfg: MultiTaskConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Train a multi-task ranker with a gradient combiner; return test metrics and timings.

    Each step: forward, one BCE loss per task, :func:`multi_objective_backward` with the
    configured combiner (T backward passes), Adam step. After every epoch the mean validation
    AUC decides early stopping (``patience`` epochs without an improvement > ``min_delta``); the
    best weights are restored before testing.

    Parameters
    ----------
    cfg : MultiTaskConfig or Mapping
        Run config (a mapping is validated with :meth:`MultiTaskConfig.from_mapping`).

    Returns
    -------
    dict
        ``test`` and ``valid`` (best epoch) metrics as returned by :func:`evaluate`, plus
        ``mean_auc``/``mean_gauc`` (test), ``epochs`` (run), ``best_epoch``,
        ``seconds_per_epoch`` (training only, evaluation excluded), ``history`` (per-epoch mean
        train loss and valid mean AUC), ``positive_rates``, ``rows``, ``num_params``,
        ``mean_conflicting_pairs`` (per step, before combination) and ``config``.

    Raises
    ------
    ConfigError
        If a mapping config is invalid.
    DataFormatError
        If the dataset files are missing or malformed.
    """
    if not isinstance(cfg, MultiTaskConfig):
        cfg = MultiTaskConfig.from_mapping(cfg)
    prev_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(prev_threads)


def _train(cfg: MultiTaskConfig) -> dict[str, Any]:
    data = load_data(cfg)
    train = data.train
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(
        cfg.model,
        train.vocab_sizes,
        len(train.task_names),
        n_dense=train.dense.shape[1],
        embedding_dim=cfg.embedding_dim,
        hidden_units=cfg.hidden_units,
        tower_units=cfg.tower_units,
        dropout=cfg.dropout,
    )
    params = dict(cfg.combiner_params)
    if cfg.combiner == "pcgrad":
        params.setdefault("seed", cfg.seed)
    combiner = get_combiner(cfg.combiner, params)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cat, dense, labels = _tensors(train)
    n = len(train)
    n_tasks = labels.shape[1]

    best_score, best_state, best_epoch, best_valid = -math.inf, None, 0, None
    bad_epochs, train_seconds, epochs_run = 0, 0.0, 0
    history: list[dict[str, float]] = []
    conflicts, steps = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            logits = model(cat[idx], None if dense is None else dense[idx])
            y = labels[idx]
            losses = [
                F.binary_cross_entropy_with_logits(logits[:, t], y[:, t]) for t in range(n_tasks)
            ]
            info = multi_objective_backward(model, losses, combiner)
            opt.step()
            loss_sum += sum(info["losses"]) * len(idx)
            conflicts += info["num_conflicting_pairs"]
            steps += 1
        train_seconds += time.perf_counter() - t0
        epochs_run = epoch
        valid = evaluate(model, data.valid, cfg.eval_batch_size)
        history.append(
            {"epoch": epoch, "train_loss": loss_sum / n, "valid_mean_auc": valid["mean_auc"]}
        )
        score = valid["mean_auc"]
        if not math.isfinite(loss_sum):
            break
        if score > best_score + cfg.min_delta:
            best_score, best_epoch, best_valid = score, epoch, valid
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    test = evaluate(model, data.test, cfg.eval_batch_size)
    return {
        "test": test,
        "valid": best_valid,
        "mean_auc": test["mean_auc"],
        "mean_gauc": test["mean_gauc"],
        "epochs": epochs_run,
        "best_epoch": best_epoch,
        "seconds_per_epoch": train_seconds / max(epochs_run, 1),
        "history": history,
        "positive_rates": data.info.get("positive_rates", {}),
        "rows": {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)},
        "num_params": sum(p.numel() for p in model.parameters()),
        "mean_conflicting_pairs": conflicts / max(steps, 1),
        "config": cfg.model_dump(mode="json"),
    }
