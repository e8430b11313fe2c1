"""Two-stage trainer of SASS (:mod:`fedrec.baselines.sass`) on the project's step loop, and its
per-scenario full-ranking evaluation.

Zhang et al., CIKM 2022 (arXiv 2208.11457): pre-training with a scenario-supervised contrastive
task on labelled and unlabelled samples, then fine-tuning on the retrieval task [PAPER]. Our
choices [INF]: a step is one epoch; steps ``0..P-1`` are pre-training epochs
(``model.params.pretrain_epochs``, Adam at ``pretrain_lr``; 0 for every variant but ``sass``),
the next ``train.epochs`` steps fine-tuning epochs (a fresh Adam at ``train.lr``). A
pre-training epoch visits, for every pair of scenarios, the users active in both and the items
living in both, in batches of ``train.batch_size``; the loss of a batch is InfoNCE between the
entity's two scenario representations (in-batch negatives), weighted by
``pretrain_user_weight`` / ``pretrain_item_weight``. A fine-tuning epoch visits every
scenario's train pairs in batches of one scenario each (order of batches shuffled), with
``model.n_neg`` negatives drawn uniformly from that scenario's items per batch. All randomness
is keyed by (seed, step, batch), so a resumed run repeats the uninterrupted one exactly.

Evaluation (``"valid"``/``"test"``): for every scenario and every user with a held-out item
there, the item is ranked among **all the scenario's items** (full ranking), the user's train
positives in that scenario (and, for test, the validation item) excluded. Metrics are named
``full/<scenario>/Recall@K`` and ``full/<scenario>/NDCG@K``; ``full/Recall@K``,
``full/NDCG@K`` are their means over scenarios (``full/HR@K`` equals ``full/Recall@K``: one
held-out item per user and scenario). The model never trains on a user's interaction
that is not strictly earlier than its validation item of another scenario (the cross-scenario
time cut of :mod:`.data`). Early stopping uses ``train.metric`` (e.g.
``full/NDCG@20``) from fine-tuning epoch evaluations only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedrec.baselines.sass.data import ScenarioData, load_scenarios
from fedrec.baselines.sass.losses import info_nce
from fedrec.data.registry import data_root
from fedrec.data.split import LeaveOneOut
from fedrec.engine.centralized import PretrainThenTrainTrainer
from fedrec.errors import NonFiniteError


def rank_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Recall@K and NDCG@K of 0-based ranks of one held-out item per user."""
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"Recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        gain = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        out[f"NDCG@{k}"] = float(gain.mean()) if len(ranks) else 0.0
    return out


class SASSTrainer(PretrainThenTrainTrainer):
    """Pre-training then fine-tuning epochs (module docstring).

    Parameters
    ----------
    ctx : RunContext
        Its model must be a :class:`~fedrec.baselines.sass.model.SASS`.
    data : ScenarioData, optional
        Scenario data (default: built from ``model.params.domains``).
    """

    def __init__(self, ctx: Any, data: ScenarioData | None = None) -> None:
        self.ctx = ctx
        model = ctx.model
        if data is None:
            data = load_scenarios(model.domains, data_root(ctx.cfg.data.root), model.unlabeled)
        self.data = data
        torch.manual_seed(ctx.cfg.seed)
        model.attach(data.n_users, data.n_items, data.n_scenarios, data.behaviour(model.unlabeled))
        # the run summary reports the scenario data's name and sizes
        ctx.split = LeaveOneOut([np.zeros(0, np.int64)] * data.n_users, np.zeros(0, np.int64),
                                np.zeros(0, np.int64), data.n_items,
                                f"{data.name}:{'+'.join(data.scenarios)}")
        tc = ctx.cfg.train
        self.optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr,
                                          weight_decay=tc.weight_decay)
        self.pre_optimizer = torch.optim.Adam(model.parameters(), lr=model.pretrain_lr)
        self.pre_steps = model.pretrain_epochs
        self.ks = sorted(set(ctx.cfg.eval.ks))
        self._pos = []  # scenario -> global item id -> position among the scenario's items
        for items in data.items:
            pos = np.full(data.n_items, -1, dtype=np.int64)
            pos[items] = np.arange(len(items))
            self._pos.append(pos)


    # ------------------------------------------------------------------------------ training
    def _batches(self, sizes: dict[Any, int],
                 rng: np.random.Generator) -> list[tuple[Any, np.ndarray]]:
        bs = self.ctx.cfg.train.batch_size
        out = []
        for key, n in sizes.items():
            order = rng.permutation(n)
            out += [(key, order[i:i + bs]) for i in range(0, n, bs)]
        return [out[i] for i in rng.permutation(len(out))]

    def train_step(self, step: int) -> dict[str, float]:
        """One pre-training or fine-tuning epoch."""
        self.ctx.model.train()
        if step < self.pre_steps:
            return self._pretrain_epoch(step)
        return self._finetune_epoch(step)

    def _pretrain_epoch(self, step: int) -> dict[str, float]:
        model, data, seed = self.ctx.model, self.data, self.ctx.cfg.seed
        w_user, w_item = model.pretrain_weights
        sizes = {}
        for pair, (users, items) in data.pools.items():
            if w_user > 0:
                sizes[("user", pair)] = len(users)
            if w_item > 0:
                sizes[("item", pair)] = len(items)
        sums, n = {"loss": 0.0, "user_cl": 0.0, "item_cl": 0.0}, 0
        for (side, (a, b)), idx in self._batches(sizes, np.random.default_rng([seed, step, 1])):
            if len(idx) < 2:
                continue
            users, items = data.pools[(a, b)]
            ids = torch.as_tensor((users if side == "user" else items)[idx])
            enc = model.users if side == "user" else model.items
            cl = info_nce(enc(ids, a), enc(ids, b), model.pretrain_temperature,
                          model.pretrain_symmetric)
            loss = (w_user if side == "user" else w_item) * cl
            self.pre_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.pre_optimizer.step()
            sums["loss"] += float(loss.detach()) * len(idx)
            sums[f"{side}_cl"] += float(cl.detach()) * len(idx)
            n += len(idx)
        return {k: v / max(n, 1) for k, v in sums.items()}

    def _finetune_epoch(self, step: int) -> dict[str, float]:
        model, data, seed = self.ctx.model, self.data, self.ctx.cfg.seed
        sizes = {s: len(data.train[s][0]) for s in range(data.n_scenarios)}
        total, n = 0.0, 0
        for b, (s, idx) in enumerate(self._batches(sizes, np.random.default_rng([seed, step, 2]))):
            users, items = data.train[s]
            neg = np.random.default_rng([seed, step, 3, b]).choice(data.items[s], size=model.n_neg)
            loss = model.retrieval_loss(torch.as_tensor(users[idx]), torch.as_tensor(items[idx]),
                                        torch.as_tensor(neg), s)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        return {"loss": total / max(n, 1)}

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def scenario_ranks(self, split: str, s: int) -> np.ndarray:
        """0-based rank of each evaluated user's held-out item among scenario ``s``'s items."""
        model, data, pos = self.ctx.model, self.data, self._pos[s]
        held = (data.valid if split == "valid" else data.test)[s]
        users = np.flatnonzero(held >= 0)
        if len(users) == 0:
            return np.zeros(0, dtype=np.int64)
        items = model.items(torch.as_tensor(data.items[s]), s)
        ranks = []
        chunk = self.ctx.cfg.eval.batch_users
        for lo in range(0, len(users), chunk):
            us = users[lo:lo + chunk]
            scores = model.users(torch.as_tensor(us), s) @ items.T
            if not bool(torch.isfinite(scores).all()):
                raise NonFiniteError("the model's scores are not finite in scenario "
                                     f"{data.scenarios[s]}")
            rows, cols = [], []
            for r, u in enumerate(us):
                seen = data.history[s][u]
                if split == "test" and data.valid[s][u] >= 0:
                    seen = np.append(seen, data.valid[s][u])
                seen = pos[seen]
                rows += [r] * len(seen)
                cols += seen.tolist()
            target = torch.as_tensor(pos[held[us]])
            t_score = scores[torch.arange(len(us)), target].clone()
            scores[torch.as_tensor(rows, dtype=torch.long),
                   torch.as_tensor(cols, dtype=torch.long)] = float("-inf")
            ranks.append((scores > t_score[:, None]).sum(1).numpy())
        return np.concatenate(ranks)

    def evaluate(self, split: str) -> dict[str, float]:
        """Per-scenario full-ranking Recall@K / NDCG@K and their means (module docstring)."""
        model = self.ctx.model
        was = model.training
        model.eval()
        try:
            out: dict[str, float] = {}
            per = [rank_metrics(self.scenario_ranks(split, s), self.ks)
                   for s in range(self.data.n_scenarios)]
            for name, m in zip(self.data.scenarios, per, strict=True):
                out.update({f"full/{name}/{k}": v for k, v in m.items()})
            for key in per[0]:
                out[f"full/{key}"] = float(np.mean([m[key] for m in per]))
            for k in self.ks:
                out[f"full/HR@{k}"] = out[f"full/Recall@{k}"]
            return out
        finally:
            model.train(was)
