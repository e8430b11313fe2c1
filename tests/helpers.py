"""Plain helpers shared by several test modules (``from helpers import ...``).

pytest puts ``tests/`` on ``sys.path`` (no ``__init__.py``, default import mode), so test
modules import this file by its bare name. Fixtures belong in ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from fedrec.config import ExperimentConfig, load_config
from fedrec.models import SequentialRecommender, build_model

#: A federated run of a few seconds: 60 synthetic users, a tiny SASRec, FedSGD rounds of 25.
TINY_FEDERATED: dict[str, Any] = {
    "mode": "federated",
    "data": {"synthetic": {"n_users": 60, "n_items": 40, "max_len": 20, "mean_len": 8}},
    "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "dropout": 0.1, "max_len": 10},
    "federation": {"protocol": "fedsgd", "epochs": 3, "clients_per_round": 25, "server_lr": 0.05},
    "eval": {"n_negatives": 10, "ks": [10]},
    "defense": {"name": "mean"},
}


def config_with(raw: dict[str, Any], **over: Any) -> ExperimentConfig:
    """Load ``raw`` as a config after setting dotted keys in it (``raw`` is modified).

    Parameters
    ----------
    raw : dict
        Raw config (as read from YAML).
    **over
        ``"section.key": value`` pairs; missing sections are created.

    Returns
    -------
    ExperimentConfig
        ``load_config(base=raw)``.
    """
    for key, value in over.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return load_config(base=raw)


def strip_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric records without their wall-clock ``seconds`` (the only field runs may not share)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@contextmanager
def interrupted_in_step(
    monkeypatch: pytest.MonkeyPatch, trainer_cls: type, loss_attr: str, step: int = 2
) -> Iterator[None]:
    """Expect a ``KeyboardInterrupt`` from the block, raised in the middle of a training step.

    While the block runs, step ``step`` of ``trainer_cls`` raises at the second call of the
    model's ``loss_attr`` method: after one optimizer step has changed the weights, the
    optimizer state and the dropout RNG, so a resumed run must restore all of them from the
    checkpoint. ``trainer_cls.train_step`` is restored on exit.

    Parameters
    ----------
    monkeypatch : pytest.MonkeyPatch
        The test's monkeypatch fixture.
    trainer_cls : type
        Trainer class whose ``train_step`` is wrapped.
    loss_attr : str
        Name of the model method called once per batch (e.g. ``"loss"``).
    step : int
        The step that crashes.
    """
    original = trainer_cls.train_step

    def crashing(self: Any, s: int) -> dict[str, float]:
        if s == step:
            model = self.ctx.model
            calls = {"n": 0}
            real = getattr(model, loss_attr)

            def loss(batch: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt
                return real(batch)

            setattr(model, loss_attr, loss)
        return original(self, s)

    monkeypatch.setattr(trainer_cls, "train_step", crashing)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(trainer_cls, "train_step", original)


def small_model(
    name: str,
    n_items: int,
    *,
    hidden: int = 16,
    max_len: int = 12,
    dropout: float = 0.0,
    seed: int = 0,
) -> SequentialRecommender:
    """A small seeded model: one block (transformers) or one layer (GRU4Rec).

    Parameters
    ----------
    name : str
        Registered model name (``"sasrec"``, ``"bert4rec"``, ``"gru4rec"``...).
    n_items : int
        Number of items.
    hidden, max_len, dropout : int, int, float
        Model size and dropout.
    seed : int
        ``torch.manual_seed`` applied before building (fixes the initial weights).

    Returns
    -------
    SequentialRecommender
        The model.
    """
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"hidden": hidden, "max_len": max_len, "dropout": dropout}
    if name != "gru4rec":
        kw["blocks"] = 1
    return build_model(name, n_items, **kw)


def param_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the model's named parameters."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}
