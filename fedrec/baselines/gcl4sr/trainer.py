"""Centralized trainer of GCL4SR on the project's run loop (checkpoints, resume, early stopping).

Zhang et al., "Enhancing Sequential Recommendation with Graph Contrastive Learning", IJCAI 2022
(arXiv 2205.14837), Section 4.1: every prefix of a training sequence is one sample; Adam
(lr ``train.lr``, weight decay ``train.weight_decay``; paper 1e-3 / 5e-5) with StepLR
(``model.params.lr_step`` epochs, ``lr_gamma``; code 5 / 0.7); early stopping on validation
(``train.metric``; the code uses NDCG@20 with patience 10). Evaluation is the project's
:func:`fedrec.evaluation.evaluate` with user-aware scores (the gate needs the user id).

The joint objective is the weighted sum of Eq. 12, or, with ``model.params.combiner`` set to a
combiner of :mod:`fedrec.baselines.gradcraft`, the merged gradient of the three weighted losses
(:func:`~fedrec.baselines.gradcraft.multi_objective_backward`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedrec.baselines.gcl4sr.data import PrefixSamples
from fedrec.data.batching import to_tensor
from fedrec.data.random import stream_key
from fedrec.engine.centralized import EpochTrainer


def epoch_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                  bucket: bool = False, pool: int = 64) -> list[np.ndarray]:
    """Sample indices of one epoch, split into batches.

    Without ``bucket``: a uniformly random permutation cut into consecutive batches. With
    ``bucket``: the permutation is cut into pools of ``pool`` batches, each pool is sorted by
    ``lengths`` (so a batch holds prefixes of similar length and needs little padding), cut into
    batches, and the order of all batches is shuffled.

    Parameters
    ----------
    lengths : numpy.ndarray
        ``[N]`` input length of every sample.
    batch_size : int
        Samples per batch (the last batch of a pool may be smaller).
    rng : numpy.random.Generator
        Source of the permutation.
    bucket : bool
        Group samples of similar length.
    pool : int
        Batches per sorting pool.
    """
    order = rng.permutation(len(lengths))
    if not bucket:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    span = batch_size * pool
    batches = []
    for lo in range(0, len(order), span):
        chunk = order[lo:lo + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class UserAwareScorer:
    """Scorer for :func:`fedrec.evaluation.evaluate` that passes the user ids to the model.

    ``evaluate`` calls a scorer with ``needs_rows = True`` as ``scorer(seqs, rows)``, ``rows``
    indexing the evaluated users (the gate of GCL4SR needs the user embedding).
    """

    needs_rows = True

    def __init__(self, model: Any, users: np.ndarray) -> None:
        self.model, self.users = model, np.asarray(users)

    def __call__(self, seqs: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        users = to_tensor(self.users[np.asarray(rows)]).to(seqs.device)
        return self.model.scores(seqs, users)


class GCL4SRTrainer(EpochTrainer):
    """One step = one epoch over all prefix samples (see module docstring).

    Parameters
    ----------
    ctx : RunContext
        Run context; its model must be a :class:`~fedrec.baselines.gcl4sr.model.GCL4SR`.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        model = ctx.model
        model.attach(ctx.split.train, ctx.split.n_users)
        self.samples = PrefixSamples.from_sequences(ctx.split.train, model.max_len)
        self.lengths = self.samples.lengths()
        tc = ctx.cfg.train
        self.optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(0.9, 0.999),
                                          weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=model.lr_step,
                                                         gamma=model.lr_gamma)
        self.combiner = None
        if model.combiner != "weighted_sum":
            from fedrec.baselines.gradcraft import get_combiner

            self.combiner = get_combiner(model.combiner, model.combiner_params)

    def backward(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fill ``.grad`` from the weighted terms (sum, or the configured combiner)."""
        model = self.ctx.model
        weighted = model.weighted_terms(terms)
        total = sum(weighted.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.combiner is None:
            total.backward()
        else:
            from fedrec.baselines.gradcraft import multi_objective_backward

            multi_objective_backward(model, list(weighted.values()), self.combiner)
        return total

    def train_step(self, step: int) -> dict[str, float]:
        """One epoch over every prefix sample in a seeded random order."""
        ctx, model = self.ctx, self.ctx.model
        model.train()
        seed = ctx.cfg.seed
        batches = epoch_batches(self.lengths, ctx.cfg.train.batch_size,
                                np.random.default_rng([seed, step]), model.bucket_batches)
        sums = {"loss": 0.0, "main": 0.0, "gcl": 0.0, "mmd": 0.0}
        n = 0
        for b, idx in enumerate(tqdm(batches, desc=f"epoch {step}", unit="batch", leave=False,
                                     disable=None)):
            users, inputs, targets = self.samples.batch(idx)
            batch = model.make_batch(users, inputs, targets, int(stream_key(seed, step, b)))
            terms = model.loss_terms(batch)
            total = self.backward(terms)
            self.optimizer.step()
            k = len(idx)
            sums["loss"] += float(total.detach()) * k
            for name in ("main", "gcl", "mmd"):
                sums[name] += float(terms[name].detach()) * k
            n += k
        self.scheduler.step()
        out = {name: v / max(n, 1) for name, v in sums.items()}
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``"valid"`` or ``"test"`` (the project's evaluation, user-aware scores)."""
        return self.ctx.evaluate(split, scorer=UserAwareScorer)
