"""Two-stage trainer of MG-BERT/PMGT (:mod:`fedrec.baselines.mgbert`) on the step loop.

Steps ``0..P-1`` are pre-training epochs (``model.params.pretrain_epochs``; 0 for
``init: random``), the next ``train.epochs`` NCF epochs.

Pre-training [CODE ``main.py``/``EgoGraph_encoder.py``]: the item graph is built from the
downstream **training** interactions only; a share ``holdout_nodes`` of the nodes (seeded) is
held out as seeds for the monitor (the code's 10% "test" nodes — they still appear as
neighbours of training seeds, as in the code). An epoch visits the training seeds with at least
one edge in a seeded order, ``pretrain_batch`` per step of AdamW (``pretrain_lr``, weight decay
``pretrain_weight_decay``, gradient norm clipped at 1.0); for each seed one uniform neighbour
(positive) and one uniform non-neighbour (negative); each of the three nodes is encoded with its
own masked MCN context; loss ``L_GSR + β · mean(L_NFR over the three)``. After every
pre-training epoch, ``train/link_AUC`` = AUC of the cosine logits of (held-out seed, random
neighbour) against (held-out seed, random non-neighbour), unmasked contexts, a fixed seeded
draw. [INF] The code's warm-up schedule is not used (we run far fewer steps).

At the first NCF step the item embedding is set to the pre-trained vectors (every item,
unmasked context). NCF epochs: Adam at ``train.lr``, batches of ``train.batch_size`` training
pairs, one sampled negative each. Evaluation (``full`` ranking over all items, training items
excluded, and for ``test`` the validation items too; :mod:`fedrec.baselines.topn`):
``full/{Recall,NDCG}@K``, ``full/AUC``, and ``sparse/...`` counting only held-out items with at
most ``sparse_max`` training interactions (the user's other held-out items are left out of
that ranking). All randomness is keyed by (seed, step, batch): a resumed run repeats the
uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fedrec.baselines.mgbert.data import RecData, load_rec_data, synthetic_rec_data
from fedrec.baselines.mgbert.encoder import feature_loss, structure_loss
from fedrec.baselines.mgbert.graph import (
    MASK,
    ItemGraph,
    build_item_graph,
    mask_context,
    mcn_context,
    multi_hop,
)
from fedrec.baselines.topn import mean_metrics, topn_metrics
from fedrec.data.registry import cache_dir, data_root
from fedrec.data.split import LeaveOneOut
from fedrec.engine.centralized import PretrainThenTrainTrainer
from fedrec.errors import ConfigError, NonFiniteError


def build_rec_data(model: Any, root: str | None, seed: int) -> RecData:
    """The model's dataset (``model.params.dataset``; ``synthetic`` = the generated stand-in)."""
    if model.dataset == "synthetic":
        s = {"n_users": 200, "n_items": 120, "per_user": 12, **(model.synthetic or {})}
        return synthetic_rec_data(s["n_users"], s["n_items"], s["per_user"], seed)
    base = data_root(root)
    if base is None:
        raise ConfigError("data.root: MG-BERT needs a dataset root (data.root or FEDREC_DATA) "
                          "holding model.params.dataset")
    return load_rec_data(model.dataset, base, cache_dir(), model.protocol, seed)


def non_neighbours(graph: ItemGraph, nodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniform node per ``nodes`` entry that is neither it nor its neighbour."""
    out = rng.integers(graph.n_nodes, size=len(nodes))
    for _ in range(100):
        bad = np.array([o == n or o in set(graph.neighbours(n).tolist())
                        for n, o in zip(nodes, out, strict=True)])
        if not bad.any():
            break
        out[bad] = rng.integers(graph.n_nodes, size=int(bad.sum()))
    return out


class MGBertTrainer(PretrainThenTrainTrainer):
    """Pre-training epochs, then NCF epochs (module docstring).

    Parameters
    ----------
    ctx : RunContext
        Its model must be a :class:`~fedrec.baselines.mgbert.model.MGBert`.
    data : RecData, optional
        Default: built from the model's settings.
    """

    main_stage = "ncf"

    def __init__(self, ctx: Any, data: RecData | None = None) -> None:
        self.ctx = ctx
        model = ctx.model
        seed = ctx.cfg.seed
        self.data = d = data if data is not None else build_rec_data(model, ctx.cfg.data.root,
                                                                    seed)
        torch.manual_seed(seed)
        model.attach(torch.as_tensor(d.features), d.dims, d.n_users)
        model.register_buffer("ncf_ready", torch.zeros((), dtype=torch.bool))
        ctx.split = LeaveOneOut([np.zeros(0, np.int64)] * d.n_users, np.zeros(0, np.int64),
                                np.zeros(0, np.int64), d.n_items, f"{d.name}:{model.protocol}")
        self.graph = build_item_graph(d.train, d.n_items, model.graph_threshold)
        perm = np.random.default_rng([seed, 51]).permutation(d.n_items)
        n_hold = max(1, int(model.holdout_nodes * d.n_items))
        connected = self.graph.degree > 0
        self.held_nodes = np.sort(perm[:n_hold][connected[perm[:n_hold]]])
        self.train_nodes = np.sort(perm[n_hold:][connected[perm[n_hold:]]])
        tc = ctx.cfg.train
        self.pre_optimizer = torch.optim.AdamW(model.encoder.parameters(), lr=model.pretrain_lr,
                                               weight_decay=model.pretrain_weight_decay)
        self.optimizer = torch.optim.Adam(model.ncf.parameters(), lr=tc.lr,
                                          weight_decay=tc.weight_decay)
        self.pre_steps = model.pretrain_epochs
        self.ks = sorted(set(ctx.cfg.eval.ks))
        self.train_mask = torch.zeros(d.n_users, d.n_items, dtype=torch.bool)
        self.train_mask[torch.as_tensor(d.train[:, 0]), torch.as_tensor(d.train[:, 1])] = True
        self.sparse = torch.as_tensor(d.item_counts() <= model.sparse_max)

    # ---------------------------------------------------------------------------- pre-training
    def sequences(self, nodes: np.ndarray, rng: np.random.Generator,
                  mask: bool) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
        """``[B, 1 + k]`` ego + MCN context (masked when ``mask``), masked positions, targets."""
        m = self.ctx.model
        ctxt = mcn_context(multi_hop(self.graph, nodes, m.hops, rng), m.context, rng)
        pos = tgt = None
        if mask:
            ctxt, pos, tgt = mask_context(ctxt, m.mask_len, self.graph.n_nodes, rng)
        return torch.as_tensor(np.concatenate([nodes[:, None], ctxt], 1)), pos, tgt

    def _encode_masked(self, nodes: np.ndarray, rng: np.random.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.ctx.model.encoder
        seq, pos, tgt = self.sequences(nodes, rng, mask=True)
        pooled, states = enc(seq)
        targets = enc.raw[torch.as_tensor(tgt) + 1]
        frs = feature_loss(enc.recon(states), torch.as_tensor(pos), targets)
        return pooled, frs

    def _pretrain_epoch(self, step: int) -> dict[str, float]:
        model, seed, g = self.ctx.model, self.ctx.cfg.seed, self.graph
        order = self.train_nodes[np.random.default_rng([seed, step, 1]).permutation(
            len(self.train_nodes))]
        sums, n = {"loss": 0.0, "gsr": 0.0, "nfr": 0.0}, 0
        for b, lo in enumerate(range(0, len(order), model.pretrain_batch)):
            seeds = order[lo:lo + model.pretrain_batch]
            rng = np.random.default_rng([seed, step, 2, b])
            pos = np.array([rng.choice(g.neighbours(s)) for s in seeds])
            neg = non_neighbours(g, seeds, rng)
            zs, fs = self._encode_masked(seeds, rng)
            zp, fp = self._encode_masked(pos, rng)
            zn, fn = self._encode_masked(neg, rng)
            gsr, nfr = structure_loss(zs, zp, zn), (fs + fp + fn) / 3
            loss = gsr + model.beta * nfr
            self.pre_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), 1.0)
            self.pre_optimizer.step()
            for key, v in (("loss", loss), ("gsr", gsr), ("nfr", nfr)):
                sums[key] += float(v.detach()) * len(seeds)
            n += len(seeds)
        out = {k: v / max(n, 1) for k, v in sums.items()}
        out["link_AUC"] = self.link_auc()
        return out

    @torch.no_grad()
    def link_auc(self) -> float:
        """Link-prediction AUC on the held-out seed nodes (module docstring)."""
        model, g = self.ctx.model, self.graph
        nodes = self.held_nodes
        if len(nodes) == 0:
            raise ConfigError("model.params.holdout_nodes: no held-out node has an edge; "
                              "expected a larger share or a lower graph_threshold")
        was = model.training
        model.eval()
        try:
            rng = np.random.default_rng([self.ctx.cfg.seed, 61])
            pos = np.array([rng.choice(g.neighbours(s)) for s in nodes])
            neg = non_neighbours(g, nodes, rng)
            z = [model.encoder(self.sequences(x, rng, mask=False)[0])[0] for x in (nodes, pos, neg)]
            lp, ln = (z[0] * z[1]).sum(-1), (z[0] * z[2]).sum(-1)
            scores = torch.cat([lp, ln]).numpy()
            if not np.isfinite(scores).all():
                raise NonFiniteError("the pre-trained encoder's link scores are not finite")
            return float(roc_auc_score(np.r_[np.ones(len(lp)), np.zeros(len(ln))], scores))
        finally:
            model.train(was)

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """Pre-trained vectors of every item (unmasked contexts, a fixed seeded draw)."""
        model = self.ctx.model
        was = model.training
        model.eval()
        rng = np.random.default_rng([self.ctx.cfg.seed, 71])
        out = []
        nodes = np.arange(self.data.n_items)
        for lo in range(0, len(nodes), 512):
            out.append(model.encoder(self.sequences(nodes[lo:lo + 512], rng, mask=False)[0])[0])
        model.train(was)
        return torch.cat(out)

    # ---------------------------------------------------------------------------------- NCF
    def _negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = self.data.n_items
        neg = rng.integers(n, size=len(users))
        for _ in range(100):
            bad = self.train_mask[torch.as_tensor(users), torch.as_tensor(neg)].numpy()
            if not bad.any():
                break
            neg[bad] = rng.integers(n, size=int(bad.sum()))
        return neg

    def _ncf_epoch(self, step: int) -> dict[str, float]:
        model, seed, d = self.ctx.model, self.ctx.cfg.seed, self.data
        if not bool(model.ncf_ready):
            if model.init == "pretrained":
                model.ncf.item.weight.data.copy_(self.item_vectors())
            model.ncf_ready.fill_(True)
        order = np.random.default_rng([seed, step, 3]).permutation(len(d.train))
        bs = self.ctx.cfg.train.batch_size
        total, n = 0.0, 0
        for b, lo in enumerate(range(0, len(order), bs)):
            idx = order[lo:lo + bs]
            users, pos = d.train[idx, 0], d.train[idx, 1]
            neg = self._negatives(users, np.random.default_rng([seed, step, 4, b]))
            loss = model.ncf.loss(torch.as_tensor(users), torch.as_tensor(pos),
                                  torch.as_tensor(neg))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            n += len(idx)
        return {"loss": total / max(n, 1)}

    def train_step(self, step: int) -> dict[str, float]:
        """One pre-training or NCF epoch."""
        self.ctx.model.train()
        if step < self.pre_steps:
            return self._pretrain_epoch(step)
        return self._ncf_epoch(step)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Full-ranking metrics, all held-out items and sparse ones (module docstring)."""
        model, d = self.ctx.model, self.data
        was = model.training
        model.eval()
        try:
            exclude = self.train_mask.clone()
            held = d.valid if split == "valid" else d.test
            if split == "test":
                exclude[torch.as_tensor(d.valid[:, 0]), torch.as_tensor(d.valid[:, 1])] = True
            users = np.unique(held[:, 0])
            blocks, sparse_blocks = [], []
            chunk = max(1, min(self.ctx.cfg.eval.batch_users, 128))
            for lo in range(0, len(users), chunk):
                us = users[lo:lo + chunk]
                row = np.full(d.n_users, -1)
                row[us] = np.arange(len(us))
                sel = held[np.isin(held[:, 0], us)]
                pos = torch.zeros(len(us), d.n_items, dtype=torch.bool)
                pos[torch.as_tensor(row[sel[:, 0]]), torch.as_tensor(sel[:, 1])] = True
                exc = exclude[torch.as_tensor(us)] & ~pos
                scores = model.ncf.score_all(torch.as_tensor(us))
                blocks.append(topn_metrics(scores, pos, exc, self.ks))
                sp_pos = pos & self.sparse[None, :]
                sparse_blocks.append(topn_metrics(scores, sp_pos, exc | (pos & ~sp_pos), self.ks))
            out = mean_metrics(blocks, "full")
            out.update(mean_metrics(sparse_blocks, "sparse"))
            return out
        finally:
            model.train(was)


__all__ = ["MASK", "MGBertTrainer", "build_rec_data", "non_neighbours"]
