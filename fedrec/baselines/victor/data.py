"""VICTOR's data: the moving-digit videos with descriptions and the synthetic video users of
:mod:`fedrec.data.vision`, tokenised with MiniLM's WordPiece, and the text batches of the proxy
tasks.

Split: the videos that appear in some user's training interactions' pool (the *warm* videos,
:func:`fedrec.data.vision.video_interactions`) are the pre-training set; the *cold* videos are
never seen in pre-training and are split in two halves, ``valid`` and ``test``, each evaluated
on its own (retrieval and classification over the half's videos; recommendation for the users
whose held-out cold video is in the half, ranked among that half's cold videos).

A description is ``[CLS] s_1 [SEP] s_2 [SEP] ... s_S [SEP]``; each ``[SEP]`` belongs to the
sentence it closes. :func:`assemble_text` builds it for any sentence order (MSOM) and with one
sentence replaced by a single ``[MASK]`` (MSG).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedrec.data.vision import VideoInteractions, VideoSet, video_interactions, video_set
from fedrec.plm import MiniLMTokenizer


@dataclass
class VictorData:
    """Videos, sentences as WordPiece ids, interactions and the split (module docstring)."""

    videos: VideoSet
    interactions: VideoInteractions
    sentence_ids: list[list[list[int]]]
    warm: np.ndarray
    halves: dict[str, np.ndarray]
    corpus_ids: Tensor
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int

    @property
    def n_sentences(self) -> int:
        """Sentences per description."""
        return len(self.sentence_ids[0])


def build_data(seed: int, n_videos: int, n_users: int, size: int = 24, n_frames: int = 8,
               n_segments: int = 2, per_user: int = 8, cold_share: float = 0.3) -> VictorData:
    """Generate videos and users and tokenise the sentences (module docstring)."""
    videos = video_set(n_videos, seed, size, n_frames, n_segments)
    inter = video_interactions(videos, n_users, seed, per_user, cold_share)
    tok = MiniLMTokenizer()
    flat = [s for sents in videos.sentences for s in sents]
    ids, mask = tok.encode(flat, max_len=64)
    rows = [[int(t) for t, m in zip(r, k, strict=True) if m][1:-1]
            for r, k in zip(ids, mask, strict=True)]
    per = len(videos.sentences[0])
    sentence_ids = [rows[i * per:(i + 1) * per] for i in range(n_videos)]
    used = sorted({t for r in rows for t in r} | {tok.sep_id})
    cold = np.asarray(inter.cold)
    half = len(cold) // 2
    perm = np.random.default_rng([seed, 5]).permutation(cold)
    warm = np.setdiff1d(np.arange(n_videos), cold)
    return VictorData(videos, inter, sentence_ids, warm,
                      {"valid": np.sort(perm[:half]), "test": np.sort(perm[half:])},
                      torch.tensor(used), tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id)


@dataclass
class TextBatch:
    """Token ids ``[B, L]``, attention mask ``[B, L]``, ``slot`` ``[B, L]`` (the sentence slot of
    each token, ``-1`` for ``[CLS]`` and padding) and, for MSG, the masked slot per row."""

    ids: Tensor
    attention: Tensor
    slot: Tensor
    masked_slot: Tensor | None = None


def assemble_text(data: VictorData, videos: np.ndarray, orders: Tensor | None = None,
                  masked_slot: Tensor | None = None) -> TextBatch:
    """Descriptions of ``videos`` with sentence ``orders[b]`` (``orders[b, j]`` = original
    sentence at slot ``j``; default in order) and, when ``masked_slot`` is given, slot
    ``masked_slot[b]`` replaced by one ``[MASK]`` token."""
    n_s = data.n_sentences
    rows, slots = [], []
    for b, v in enumerate(videos.tolist()):
        order = orders[b].tolist() if orders is not None else list(range(n_s))
        ids, slot = [data.cls_id], [-1]
        for j, s in enumerate(order):
            body = data.sentence_ids[v][s]
            if masked_slot is not None and j == int(masked_slot[b]):
                body = [data.mask_id]
            ids += body + [data.sep_id]
            slot += [j] * (len(body) + 1)
        rows.append(ids)
        slots.append(slot)
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), data.pad_id, dtype=torch.long)
    slot_t = torch.full((len(rows), width), -1, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, slots, strict=True)):
        out[i, :len(r)] = torch.tensor(r)
        slot_t[i, :len(s)] = torch.tensor(s)
        att[i, :len(r)] = 1
    return TextBatch(out, att, slot_t, masked_slot)


def sentence_targets(data: VictorData, videos: np.ndarray, sentence: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """MSG decoder input and target of sentence ``sentence[b]`` of each video: input
    ``[CLS] w_1 .. w_n`` and target ``w_1 .. w_n [SEP]`` (padded with ``pad_id`` / -100)."""
    seqs = [data.sentence_ids[v][int(s)] for v, s in zip(videos.tolist(), sentence, strict=True)]
    width = max(len(s) for s in seqs) + 1
    inp = torch.full((len(seqs), width), data.pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        inp[i, :len(s) + 1] = torch.tensor([data.cls_id] + s)
        tgt[i, :len(s) + 1] = torch.tensor(s + [data.sep_id])
    return inp, tgt
