"""Centralized trainer and evaluation of SITN (Sun et al., AAAI 2023, arXiv 2302.14438) on the
project's run loop (checkpoints, ``--resume``, early stopping, ``metrics.jsonl``).

Data: the ``domains`` config section (:mod:`fedrec.data.domains`); the first source domain and
the target domain are used. The runner's ``ctx.split`` is replaced by the target domain's split,
so the run summary names the target domain and its sizes.

Training [INF]: one step = one epoch. Every user with at least two target-domain training
items gives ``cuts_per_user`` samples per epoch: a seeded cut ``t`` of its target training
sequence, input = the ``max_len`` items before ``t``, label = the item at ``t``. Adam
(``train.lr``, ``train.weight_decay``). Prototypes are refreshed by k-means (seed = run seed +
epoch) on every user's source and target vectors at the start of epochs ``0, r, 2r, ...``
(``r = refresh_every``) and live in the model's buffers, so they are checkpointed.

Source input (no future leakage; :mod:`fedrec.data.domains`, step 7): the user's source-domain
*training* items (source held-out items are never shown) that are **strictly earlier** than
the target item being predicted at the split's cut: in training (and the prototype refresh) and
for the validation item, earlier than the user's target *validation* item; for the test item,
earlier than its target *test* item. A source item with the same timestamp as that target
item is left out. Users without a held-out target item (not evaluated) see their whole source
training sequence.

Evaluation (the metric names carry the protocol): ``full/HR@k``, ``full/NDCG@k`` — full ranking
of the user's held-out target item among all target items, the items of its visible target
history excluded; ``sampled/AUC`` — the share of the user's ``domains.n_negatives`` sampled
unseen target items scored below the held-out item (ties count ½); the same under ``cold/``
for the cold-target users (sparse target) when there are any. Users without a held-out target
item are not evaluated.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fedrec.data.domains import DomainSplit, domain_stats, load_domains
from fedrec.data.random import stream_key
from fedrec.data.split import LeaveOneOut
from fedrec.engine.centralized import EpochTrainer
from fedrec.errors import ConfigError
from fedrec.evaluation import check_scores

log = logging.getLogger("fedrec")


def pad_left(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """``int64 [B, L]`` left-padded last ``max_len`` items (``L`` = longest kept, at least 1)."""
    width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-width:]
        if len(s):
            out[r, width - len(s):] = s
    return out


def ranking_metrics(scores: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor,
                    ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-user ``full/HR@k``, ``full/NDCG@k`` and ``sampled/AUC``.

    Parameters
    ----------
    scores : torch.Tensor
        ``[B, n + 1]`` scores, history and column 0 already set to ``-inf``.
    target : torch.Tensor
        ``[B]`` held-out items.
    negatives : torch.Tensor
        ``[B, N]`` sampled unseen items.
    ks : tuple of int
        Cut-offs.
    """
    pos = scores.gather(1, target[:, None])
    rank = (scores > pos).sum(1)  # 0-based rank; ties resolved in the user's favour
    out = {}
    for k in ks:
        hit = rank < k
        out[f"full/HR@{k}"] = hit.double()
        out[f"full/NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(rank.double() + 2), 0.0)
    neg = scores.gather(1, negatives)
    out["sampled/AUC"] = ((neg < pos).double() + 0.5 * (neg == pos).double()).mean(1)
    return out


class SITNTrainer(EpochTrainer):
    """One step = one epoch (module docstring)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        self.data: DomainSplit = load_domains(cfg.domain_config() if cfg.domains is not None
                                              else {"seed": cfg.seed}, cfg.data.root)
        d = self.data
        self.src, self.tgt = d.sources[0], d.target
        for key, val in domain_stats(d).items():
            log.info("domains %s = %g", key, val)
        model = ctx.model
        if model.n_prototypes > d.n_users:
            raise ConfigError(f"model.params.n_prototypes: {model.n_prototypes} is more than the "
                              f"{d.n_users} users to cluster")
        model.attach(d.n_items(self.src), d.n_items(self.tgt), len(d.genre_names), d.n_users)
        model.to(self.device)
        ctx.split = LeaveOneOut(train=d.train[self.tgt], valid=d.valid[self.tgt],
                                test=d.test[self.tgt], n_items=d.n_items(self.tgt),
                                name=f"{d.name}:{self.tgt}")
        self.item_genre = {dom: torch.as_tensor(d.item_genre[dom], device=self.device)
                           for dom in d.domains}
        # source inputs cut at the target held-out item's time (module docstring)
        self.src_hist = {"train": d.before(self.src, d.cutoff(self.tgt, "train")),
                         "test": d.before(self.src, d.cutoff(self.tgt, "test"))}
        self.src_hist["valid"] = self.src_hist["train"]  # the same cut: the validation item
        lengths = np.array([len(s) for s in d.train[self.tgt]])
        self.users = np.flatnonzero(lengths >= 2)
        if len(self.users) == 0:
            raise ConfigError("domains: no user has two target-domain training items")
        tc = cfg.train
        self.optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr,
                                          weight_decay=tc.weight_decay)

    @property
    def device(self) -> torch.device:
        """Where the model lives (``device`` of the config when the project has one, else CPU)."""
        dev = getattr(self.ctx.cfg, "device", None)
        if dev in (None, "auto"):
            return torch.device("cuda" if torch.cuda.is_available() and dev == "auto" else "cpu")
        return torch.device(dev)

    # ------------------------------------------------------------------ batches
    def make_batch(self, users: np.ndarray, tgt_inputs: list[np.ndarray],
                   pos: np.ndarray | None = None, key: int = 0,
                   split: str = "train") -> dict[str, torch.Tensor]:
        """Tensors of one batch: target inputs, the users' source training items earlier than
        ``split``'s cut (``"train"``, ``"valid"``, ``"test"``; module docstring), genres."""
        d, m, dev = self.data, self.ctx.model, self.device
        src = pad_left([self.src_hist[split][u] for u in users], m.max_len)
        tgt = pad_left(tgt_inputs, m.max_len)
        batch = {
            "users": torch.as_tensor(users, device=dev),
            "src": torch.as_tensor(src, device=dev),
            "tgt": torch.as_tensor(tgt, device=dev),
            "src_genre": torch.as_tensor(d.item_genre[self.src][src], device=dev),
            "tgt_genre": torch.as_tensor(d.item_genre[self.tgt][tgt], device=dev),
            "item_genre": self.item_genre[self.tgt],
            "has_src": torch.as_tensor((src > 0).any(1), device=dev),
            "proto_ready": torch.as_tensor(bool(m.proto_tgt.abs().sum() > 0)),
        }
        if pos is not None:
            n = d.n_items(self.tgt)
            gen = torch.Generator().manual_seed(int(key))
            neg = torch.randint(1, n + 1, (len(users), m.n_neg), generator=gen)
            p = torch.as_tensor(pos)
            neg = torch.where(neg == p[:, None], neg % n + 1, neg)  # never the positive
            batch["pos"], batch["neg"] = p.to(dev), neg.to(dev)
        return batch

    @torch.no_grad()
    def refresh_prototypes(self, step: int) -> None:
        """k-means on every user's source and target vectors (eval mode, no dropout)."""
        from fedrec.baselines.sitn.losses import kmeans

        m, d = self.ctx.model, self.data
        m.eval()
        users = np.arange(d.n_users)
        zs, zt = [], []
        for lo in range(0, len(users), 1024):
            u = users[lo:lo + 1024]
            rep = m.interests(self.make_batch(u, [d.train[self.tgt][x] for x in u]))
            s, t = m.user_vectors(rep)
            zs.append(s)
            zt.append(t)
        seed = int(stream_key(self.ctx.cfg.seed, step, 17))
        m.proto_src[:], m.assign_src[:] = kmeans(torch.cat(zs), m.n_prototypes,
                                                 m.kmeans_iters, seed)
        m.proto_tgt[:], m.assign_tgt[:] = kmeans(torch.cat(zt), m.n_prototypes,
                                                 m.kmeans_iters, seed + 1)

    def train_step(self, step: int) -> dict[str, float]:
        """One epoch over ``cuts_per_user`` seeded cuts of every trainable user."""
        ctx, m, d = self.ctx, self.ctx.model, self.data
        seed = ctx.cfg.seed
        if m.proto_weight > 0 and step % m.refresh_every == 0:
            self.refresh_prototypes(step)
        m.train()
        rng = np.random.default_rng([seed, step, 5])
        users = np.repeat(self.users, m.cuts_per_user)
        cuts = np.array([rng.integers(1, len(d.train[self.tgt][u])) for u in users])
        order = rng.permutation(len(users))
        sums = {"loss": 0.0, "pred": 0.0, "i2i": 0.0, "proto": 0.0}
        bs = ctx.cfg.train.batch_size
        for b, lo in enumerate(range(0, len(order), bs)):
            idx = order[lo:lo + bs]
            u, c = users[idx], cuts[idx]
            seqs = [d.train[self.tgt][x] for x in u]
            pos = np.array([s[t] for s, t in zip(seqs, c, strict=True)])
            batch = self.make_batch(u, [s[:t] for s, t in zip(seqs, c, strict=True)], pos,
                                    int(stream_key(seed, step, b)))
            terms = m.loss_terms(batch)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
            for k in sums:
                sums[k] += float(terms[k].detach()) * len(idx)
        return {k: v / len(order) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Target-domain metrics on ``"valid"`` or ``"test"`` (module docstring)."""
        m, d = self.ctx.model, self.data
        m.eval()
        ks = tuple(self.ctx.cfg.eval.ks)
        target = d.held_out(self.tgt, split)
        hist = d.history(self.tgt, split)
        users = np.flatnonzero(target > 0)
        table = m.item_table(self.item_genre[self.tgt])
        parts: dict[str, list[torch.Tensor]] = {}
        for lo in range(0, len(users), self.ctx.cfg.eval.batch_users):
            u = users[lo:lo + self.ctx.cfg.eval.batch_users]
            rep = m.interests(self.make_batch(u, [hist[x] for x in u], split=split))
            scores = m.scores_from(rep["u"], table).double()
            check_scores(scores)
            scores[:, 0] = -torch.inf
            for r, x in enumerate(u):
                scores[r, torch.as_tensor(hist[x], device=scores.device)] = -torch.inf
            per = ranking_metrics(scores, torch.as_tensor(target[u], device=scores.device),
                                  torch.as_tensor(d.negatives[self.tgt][u], device=scores.device),
                                  ks)
            for k, v in per.items():
                parts.setdefault(k, []).append(v.cpu())
        values = {k: torch.cat(v) for k, v in parts.items()}
        out = {k: float(v.mean()) for k, v in values.items()}
        cold = torch.as_tensor(d.cold[users])
        if bool(cold.any()):
            out.update({f"cold/{k}": float(v[cold].mean()) for k, v in values.items()})
        return out
