"""SITN: Self-supervised Interest Transfer Network (Sun, Shen, Zhou, Chen, Liu, Wu, Lei, Wei,
Fang, "Self-Supervised Interest Transfer Network via Prototypical Contrastive Learning for
Recommendation", AAAI 2023, arXiv 2302.14438). No public code (fanqieCoffee/SITN-Supplement
holds only the online A/B appendix).

Follows the paper [PAPER]: cross-domain recommendation from a user's source- and target-domain
behaviour sequences; two levels of cross-domain contrastive learning (instance-to-instance and
instance-to-cluster with prototypes); multi-granularity and multi-view user interests.

Our inference [INF] (only the abstract and introduction could be read):

* **Encoder**: per domain, item (and genre) embeddings plus learned positions, pooled by
  self-attentive multi-head pooling into ``n_views`` interest vectors (ComiRec-SA style). Chosen
  over a GRU because one attention pooling gives the K views directly, costs one matmul on two
  CPU cores, and the genre-built domains are short, weakly ordered sequences.
* **Granularities**: item level (item embeddings) and genre level (genre embeddings of the
  same items); a view's interest is the sum of both.
* **Transfer**: the source interests (mean over views) pass a linear map into the target space
  and are added to every target view (``variant: sitn``). ``target_only`` drops the source;
  ``shared`` is naive transfer (one encoder shared by both domains, plain sum, no map, no CL).
* **Scores**: ``max_k <u_k, e_i + g_genre(i)>`` over target items.
* **Losses** (:mod:`.losses`): prediction (``bce`` with ``n_neg`` sampled negatives, or full
  ``softmax``) + ``i2i_weight`` · InfoNCE(mapped source, target) at each granularity +
  ``proto_weight`` · ProtoNCE with ``n_prototypes`` k-means prototypes per domain, refreshed
  every ``refresh_every`` epochs, each domain's vectors pulled to the prototype the other
  domain's vector of the same user was assigned to (swapped assignment). Setting a weight to 0
  is the ablation without that level.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedrec.baselines.sitn.losses import bce_sampled, instance_nce, proto_nce, softmax_ce
from fedrec.models.base import SequentialRecommender

VARIANTS = ("sitn", "target_only", "shared")


class Encoder(nn.Module):
    """Positions + self-attentive pooling of a sequence into ``views`` interests per granularity."""

    def __init__(self, hidden: int, views: int, max_len: int) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len, hidden)
        self.w1 = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(2)])
        self.w2 = nn.ModuleList([nn.Linear(hidden, views, bias=False) for _ in range(2)])

    def forward(self, item_e: torch.Tensor, genre_e: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L, H]`` embeddings, ``[B, L]`` bool mask -> item- and genre-level ``[B, K, H]``."""
        pos = self.pos.weight[: mask.shape[1]]
        out = []
        for g, h in enumerate((item_e + pos, genre_e + pos)):
            logits = self.w2[g](torch.tanh(self.w1[g](h))).masked_fill(~mask[..., None], -1e9)
            att = torch.softmax(logits, dim=1) * mask[..., None]  # all-padding rows -> zeros
            out.append(att.transpose(1, 2) @ h)
        return out[0], out[1]


class SITN(SequentialRecommender):
    """Cross-domain interest transfer (module docstring). Tables are sized by :meth:`attach`."""

    item_param_names = ("tgt_items.weight",)

    def __init__(self, n_items: int, max_len: int = 50, hidden: int = 64, n_views: int = 4,
                 variant: str = "sitn", loss_type: str = "bce", n_neg: int = 1,
                 i2i_weight: float = 0.1, i2i_temperature: float = 0.2,
                 proto_weight: float = 0.1, proto_temperature: float = 0.2,
                 n_prototypes: int = 8, refresh_every: int = 1, kmeans_iters: int = 20,
                 cuts_per_user: int = 2, dropout: float = 0.1) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"model.params.variant: {variant!r}; expected one of {VARIANTS}")
        if loss_type not in ("bce", "softmax"):
            raise ValueError(f"model.params.loss_type: {loss_type!r}; expected 'bce' or 'softmax'")
        for key, val in (("hidden", hidden), ("n_views", n_views), ("n_neg", n_neg),
                         ("n_prototypes", n_prototypes), ("refresh_every", refresh_every),
                         ("kmeans_iters", kmeans_iters), ("cuts_per_user", cuts_per_user),
                         ("max_len", max_len)):
            if val < 1:
                raise ValueError(f"model.params.{key}: {val}; expected an integer >= 1")
        for key, val in (("i2i_weight", i2i_weight), ("proto_weight", proto_weight)):
            if val < 0:
                raise ValueError(f"model.params.{key}: {val}; expected >= 0")
        for key, val in (("i2i_temperature", i2i_temperature),
                         ("proto_temperature", proto_temperature)):
            if val <= 0:
                raise ValueError(f"model.params.{key}: {val}; expected > 0")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.params.dropout: {dropout}; expected 0 <= dropout < 1")
        super().__init__(n_items, max_len, "bce", n_neg)
        self.loss_type, self.hidden, self.n_views = loss_type, hidden, n_views
        self.variant = variant
        off = variant != "sitn"  # the baselines have no contrastive levels
        self.i2i_weight, self.proto_weight = (0.0, 0.0) if off else (i2i_weight, proto_weight)
        self.i2i_temperature, self.proto_temperature = i2i_temperature, proto_temperature
        self.n_prototypes, self.refresh_every = n_prototypes, refresh_every
        self.kmeans_iters, self.cuts_per_user = kmeans_iters, cuts_per_user
        self.drop = nn.Dropout(dropout)

    def attach(self, n_src: int, n_tgt: int, n_genres: int, n_users: int) -> None:
        """Create the tables for ``n_src`` / ``n_tgt`` items, genres and prototype buffers."""
        h = self.hidden
        self.n_items = n_tgt
        self.src_items = nn.Embedding(n_src + 1, h, padding_idx=0)
        self.tgt_items = nn.Embedding(n_tgt + 1, h, padding_idx=0)
        self.genres = nn.Embedding(n_genres, h)
        self.tgt_enc = Encoder(h, self.n_views, self.max_len)
        self.src_enc = self.tgt_enc if self.variant == "shared" else Encoder(h, self.n_views,
                                                                             self.max_len)
        self.transfer = nn.Linear(h, h)
        for emb in (self.src_items, self.tgt_items, self.genres):
            nn.init.normal_(emb.weight, std=h ** -0.5)
        self.register_buffer("proto_tgt", torch.zeros(self.n_prototypes, h))
        self.register_buffer("proto_src", torch.zeros(self.n_prototypes, h))
        self.register_buffer("assign_tgt", torch.zeros(n_users, dtype=torch.long))
        self.register_buffer("assign_src", torch.zeros(n_users, dtype=torch.long))

    def encode(self, inputs: torch.Tensor, input_embeddings: torch.Tensor | None = None) -> Any:
        """Not a per-position encoder; use :meth:`interests`."""
        raise NotImplementedError("SITN encodes users with interests(); see make_trainer")

    def interests(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Target views ``u [B,K,H]``, and pooled ``t_item, t_genre, s_item, s_genre [B,H]``
        (source vectors mapped into the target space; absent for ``target_only``)."""
        ti, tg = self.tgt_enc(self.drop(self.tgt_items(batch["tgt"])),
                              self.drop(self.genres(batch["tgt_genre"])), batch["tgt"] > 0)
        out = {"u": ti + tg, "t_item": ti.mean(1), "t_genre": tg.mean(1)}
        if self.variant != "target_only":
            si, sg = self.src_enc(self.drop(self.src_items(batch["src"])),
                                  self.drop(self.genres(batch["src_genre"])), batch["src"] > 0)
            mapped = self.transfer if self.variant == "sitn" else nn.Identity()
            out.update(s_item=mapped(si.mean(1)), s_genre=mapped(sg.mean(1)))
            out["u"] = out["u"] + (out["s_item"] + out["s_genre"])[:, None, :]
        return out

    def item_table(self, tgt_genre_of_item: torch.Tensor) -> torch.Tensor:
        """``[n_tgt + 1, H]`` target item representations ``e_i + g_genre(i)``."""
        return self.tgt_items.weight + self.genres(tgt_genre_of_item)

    def scores_from(self, u: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``[B, n + 1]`` scores ``max_k <u_k, r_i>`` (multi-view)."""
        return torch.einsum("bkh,nh->bkn", u, table).amax(1)

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``pred``, ``i2i``, ``proto`` terms (unweighted) and their weighted ``loss``."""
        rep = self.interests(batch)
        table = self.item_table(batch["item_genre"])
        if self.loss_type == "softmax":
            pred = softmax_ce(self.scores_from(rep["u"], table), batch["pos"])
        else:
            items = torch.cat([batch["pos"][:, None], batch["neg"]], 1)
            logits = torch.einsum("bkh,bnh->bkn", rep["u"], table[items]).amax(1)
            pred = bce_sampled(logits[:, 0], logits[:, 1:])
        zero = pred.new_zeros(())
        terms = {"pred": pred, "i2i": zero, "proto": zero}
        both = batch["has_src"]
        if self.i2i_weight > 0 and int(both.sum()) >= 2:
            terms["i2i"] = 0.5 * sum(instance_nce(rep[f"s_{g}"][both], rep[f"t_{g}"][both],
                                                  self.i2i_temperature) for g in ("item", "genre"))
        if self.proto_weight > 0 and bool(batch["proto_ready"]) and int(both.sum()) >= 1:
            users = batch["users"][both]
            zs, zt = self.user_vectors(rep)
            terms["proto"] = 0.5 * (
                proto_nce(zs[both], self.proto_tgt, self.assign_tgt[users], self.proto_temperature)
                + proto_nce(zt[both], self.proto_src, self.assign_src[users],
                            self.proto_temperature))
        terms["loss"] = pred + self.i2i_weight * terms["i2i"] + self.proto_weight * terms["proto"]
        return terms

    @staticmethod
    def user_vectors(rep: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Source and target user vectors clustered into prototypes (both granularities)."""
        return rep["s_item"] + rep["s_genre"], rep["t_item"] + rep["t_genre"]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted training objective."""
        return self.loss_terms(batch)["loss"]

    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """Needs both domains; use :meth:`scores_from` through the trainer."""
        raise NotImplementedError("SITN scores users from both domains; see its trainer")

    def prepare_batch(self, seqs: Any, keys: Any) -> Any:
        """Batches are built by :class:`~fedrec.baselines.sitn.trainer.SITNTrainer`."""
        raise NotImplementedError("SITN batches are built by its trainer")

    def make_trainer(self, ctx: Any) -> Any:
        """The SITN trainer for ``mode: centralized`` (called by the runner)."""
        from fedrec.baselines.sitn.trainer import SITNTrainer

        return SITNTrainer(ctx)

