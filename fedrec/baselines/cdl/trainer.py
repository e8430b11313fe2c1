"""Trainer of CDL and its comparison variants (:mod:`fedrec.baselines.cdl`) on the step loop.

A step is one epoch over the warm training pairs in a seeded order, in batches of
``train.batch_size``: each pair (u, i⁺) gets one other item i⁻ drawn uniformly from the warm
items u has not trained on (seeded by (seed, epoch, batch)), so a resumed run repeats the
uninterrupted one. Adam at ``train.lr``.

Evaluation (``"valid"`` / ``"test"``) by full ranking (:mod:`fedrec.baselines.topn`): metrics
``warm/{Recall,NDCG}@K`` and ``warm/AUC`` rank all warm items but the user's training items;
``cold/...`` rank all the split's cold items (never seen in training) for the users with a
cold positive. Early stopping uses ``train.metric`` (e.g. ``warm/NDCG@10``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedrec.baselines.cdl.data import CDLData, load_digits_setting, load_movielens
from fedrec.baselines.topn import mean_metrics, topn_metrics
from fedrec.data.registry import cache_dir, data_root
from fedrec.data.split import LeaveOneOut
from fedrec.engine.centralized import EpochTrainer
from fedrec.errors import ConfigError


def build_data(model: Any, root: str | None, seed: int) -> CDLData:
    """The model's setting (``model.params.setting``) as :class:`CDLData`."""
    if model.setting == "digits":
        return load_digits_setting(model.n_users_cfg, model.per_user, model.taste_concentration,
                                   model.cold_fraction, seed)
    base = data_root(root)
    if base is None:
        raise ConfigError("data.root: the movielens setting needs a dataset root (data.root or "
                          "FEDREC_DATA) holding model.params.dataset")
    return load_movielens(model.dataset, base, cache_dir(), model.cold_fraction, seed)


class CDLTrainer(EpochTrainer):
    """Epochs of the variant's loss on (user, preferred, other) triples (module docstring).

    Parameters
    ----------
    ctx : RunContext
        Its model must be a :class:`~fedrec.baselines.cdl.model.CDL`.
    data : CDLData, optional
        Default: built from the model's settings.
    """

    def __init__(self, ctx: Any, data: CDLData | None = None) -> None:
        self.ctx = ctx
        model = ctx.model
        self.data = data if data is not None else build_data(model, ctx.cfg.data.root,
                                                             ctx.cfg.seed)
        d = self.data
        content = torch.as_tensor(d.content)
        flat = content.reshape(len(content), -1)
        prof = torch.zeros(d.n_users, flat.shape[1])
        prof.index_add_(0, torch.as_tensor(d.train[:, 0]), flat[torch.as_tensor(d.train[:, 1])])
        n = torch.bincount(torch.as_tensor(d.train[:, 0]), minlength=d.n_users).clamp_min(1)
        profile = (prof / n[:, None]).reshape(d.n_users, *content.shape[1:])
        torch.manual_seed(ctx.cfg.seed)
        model.attach(content, d.n_users, profile)
        ctx.split = LeaveOneOut([np.zeros(0, np.int64)] * d.n_users, np.zeros(0, np.int64),
                                np.zeros(0, np.int64), d.n_items, f"{d.name}:{model.setting}")
        tc = ctx.cfg.train
        self.optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr,
                                          weight_decay=tc.weight_decay)
        self.ks = sorted(set(ctx.cfg.eval.ks))
        self.warm = d.warm_items
        self.train_mask = torch.zeros(d.n_users, d.n_items, dtype=torch.bool)
        self.train_mask[torch.as_tensor(d.train[:, 0]), torch.as_tensor(d.train[:, 1])] = True

    def _negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One warm item per user that the user has not trained on (rejection sampling)."""
        neg = self.warm[rng.integers(len(self.warm), size=len(users))]
        for _ in range(100):
            bad = self.train_mask[torch.as_tensor(users), torch.as_tensor(neg)].numpy()
            if not bad.any():
                break
            neg[bad] = self.warm[rng.integers(len(self.warm), size=int(bad.sum()))]
        return neg

    def train_step(self, step: int) -> dict[str, float]:
        """One epoch over the training pairs."""
        model, seed, d = self.ctx.model, self.ctx.cfg.seed, self.data
        model.train()
        order = np.random.default_rng([seed, step, 1]).permutation(len(d.train))
        bs = self.ctx.cfg.train.batch_size
        total, n = 0.0, 0
        for b, lo in enumerate(range(0, len(order), bs)):
            idx = order[lo:lo + bs]
            users, pos = d.train[idx, 0], d.train[idx, 1]
            neg = self._negatives(users, np.random.default_rng([seed, step, 2, b]))
            loss = model.loss(torch.as_tensor(users), torch.as_tensor(pos), torch.as_tensor(neg))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        return {"loss": total / max(n, 1)}

    @torch.no_grad()
    def _block(self, pairs: np.ndarray, items: np.ndarray,
               exclude: torch.Tensor | None) -> list[dict[str, np.ndarray]]:
        """Metric blocks of ranking ``items`` for the users of ``pairs`` (positives)."""
        model = self.ctx.model
        users = np.unique(pairs[:, 0])
        if len(users) == 0:
            return []
        col = np.full(self.data.n_items, -1)
        col[items] = np.arange(len(items))
        zi = model.items(torch.as_tensor(items))
        out = []
        chunk = self.ctx.cfg.eval.batch_users
        for lo in range(0, len(users), chunk):
            us = users[lo:lo + chunk]
            row = np.full(self.data.n_users, -1)
            row[us] = np.arange(len(us))
            sel = pairs[np.isin(pairs[:, 0], us)]
            pos = torch.zeros(len(us), len(items), dtype=torch.bool)
            pos[torch.as_tensor(row[sel[:, 0]]), torch.as_tensor(col[sel[:, 1]])] = True
            exc = (exclude[torch.as_tensor(us)][:, torch.as_tensor(items)] if exclude is not None
                   else torch.zeros_like(pos))
            exc &= ~pos
            scores = model.score(model.users(torch.as_tensor(us)), zi)
            out.append(topn_metrics(scores, pos, exc, self.ks))
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        """Warm and cold full-ranking metrics (module docstring)."""
        model, d = self.ctx.model, self.data
        was = model.training
        model.eval()
        try:
            exclude = self.train_mask.clone()
            if split == "test":  # the valid items are known by test time
                exclude[torch.as_tensor(d.valid[:, 0]), torch.as_tensor(d.valid[:, 1])] = True
            warm = d.valid if split == "valid" else d.test
            cold, cold_items = ((d.cold_valid, d.cold_valid_items) if split == "valid"
                                else (d.cold_test, d.cold_test_items))
            out = mean_metrics(self._block(warm, self.warm, exclude), "warm")
            out.update(mean_metrics(self._block(cold, cold_items, None), "cold"))
            return out
        finally:
            model.train(was)
