"""VICTOR's proxy tasks as functions: the corruptions, the losses, the momentum update and the
queue (Lei et al., "Understanding Chinese Video and Language via Contrastive Multimodal
Pre-Training", ACM MM 2021, arXiv 2104.09411; no public code).

Only the abstract of the paper could be read (the ar5iv page is indexed, but the tools return
its opening only). What it states [ABSTRACT]: besides general proxy tasks such as masked
language modelling, VICTOR builds several proxy tasks under the contrastive paradigm, to
capture sequential order and spatiotemporal relations, and it avoids the conflict between
video-sentence alignment and the other proxy tasks. The task list and losses below are the
project's notes [RECALL, not verified] and our choices [INF]:

* **MLM** (:func:`mask_tokens`): ``prob`` of the non-special text tokens become ``[MASK]``
  (at least one per row); cross-entropy over the vocabulary at those positions.
* **MSOM** (:func:`shuffle_sentences`): the sentences of a description are permuted (a random
  non-identity permutation when there are two or more); each sentence's output predicts its
  original index (cross-entropy over positions).
* **MFOM** (:func:`shuffle_frames`): a random subset (``share``, at least two) of the frames is
  permuted among its own slots (no frame stays in place); each moved frame predicts its original
  index; frames left in place carry no label.
* **MSG**: one whole sentence is replaced by ``[MASK]`` tokens and a decoder regenerates it with
  teacher forcing (token cross-entropy).
* **intra-MFM** (:func:`intra_video_nce`): ``prob`` of the frames are replaced by a mask
  embedding; the output at a masked slot must pick its true frame feature among *all frames of
  the same video* (InfoNCE, temperature ``tau``).
* **inter-MFM** (:func:`inter_video_nce`): the same prediction, against the masked frames of the
  *other videos of the batch* (frames of the same video are left out of the candidates).
* **dual VSA** (:func:`dual_nce`): separate video and text encoders; a video query is scored
  against its own text key (from the momentum text encoder) and a queue of earlier text keys,
  and symmetrically (MoCo: :func:`momentum_update`, :class:`KeyQueue`).

Corruption draws come from a ``torch.Generator`` the caller seeds, so a batch is reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

IGNORE = -100


def mask_tokens(ids: Tensor, maskable: Tensor, prob: float, mask_id: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """MLM corruption.

    Parameters
    ----------
    ids : Tensor ``[B, L]``
        Token ids.
    maskable : Tensor ``[B, L]`` bool
        Positions that may be masked (not ``[CLS]``/``[SEP]``/padding).
    prob : float
        Masking probability.
    mask_id : int
        The ``[MASK]`` id.
    generator : torch.Generator

    Returns
    -------
    corrupted : Tensor ``[B, L]``
        ``ids`` with the chosen positions set to ``mask_id``.
    labels : Tensor ``[B, L]``
        The original id at chosen positions, :data:`IGNORE` elsewhere.
    """
    u = torch.rand(ids.shape, generator=generator)
    chosen = (u < prob) & maskable
    # at least one masked token per row that has a maskable one: the most likely draw
    none = ~chosen.any(1) & maskable.any(1)
    if bool(none.any()):
        first = torch.where(maskable, u, 2.0).argmin(1)
        chosen[none, first[none]] = True
    corrupted = torch.where(chosen, torch.full_like(ids, mask_id), ids)
    return corrupted, torch.where(chosen, ids, torch.full_like(ids, IGNORE))


def random_derangement(n: int, generator: torch.Generator) -> Tensor:
    """A permutation of ``range(n)`` that moves every element (``n >= 2``)."""
    if n < 2:
        raise ValueError(f"n: expected at least 2, got {n}")
    while True:
        p = torch.randperm(n, generator=generator)
        if bool((p != torch.arange(n)).all()):
            return p


def shuffle_sentences(n_sentences: int, generator: torch.Generator) -> Tensor:
    """MSOM order: ``order[j]`` = original index of the sentence placed at slot ``j`` (a
    non-identity permutation for two or more sentences). The label of slot ``j`` is
    ``order[j]``."""
    if n_sentences < 2:
        return torch.arange(n_sentences)
    while True:
        p = torch.randperm(n_sentences, generator=generator)
        if not bool((p == torch.arange(n_sentences)).all()):
            return p


def shuffle_frames(n_frames: int, share: float, generator: torch.Generator
                   ) -> tuple[Tensor, Tensor]:
    """MFOM order of one video.

    Returns
    -------
    order : Tensor ``[T]``
        ``order[t]`` = original index of the frame shown at slot ``t``.
    labels : Tensor ``[T]``
        ``order[t]`` at moved slots, :data:`IGNORE` at the slots left in place.
    """
    k = max(2, int(round(share * n_frames)))
    slots = torch.randperm(n_frames, generator=generator)[:k].sort().values
    order = torch.arange(n_frames)
    order[slots] = slots[random_derangement(k, generator)]
    labels = torch.where(order != torch.arange(n_frames), order, torch.full_like(order, IGNORE))
    return order, labels


def mask_frames(batch: int, n_frames: int, prob: float, generator: torch.Generator) -> Tensor:
    """bool ``[B, T]``: frames to mask (at least one per video, never all)."""
    u = torch.rand(batch, n_frames, generator=generator)
    chosen = u < prob
    chosen[torch.arange(batch), u.argmin(1)] = True
    all_masked = chosen.all(1)
    chosen[all_masked, u[all_masked].argmax(1)] = False
    return chosen


def intra_video_nce(pred: Tensor, target: Tensor, masked: Tensor, tau: float) -> Tensor:
    """Intra-video masked frame modelling loss.

    Parameters
    ----------
    pred : Tensor ``[B, T, d]``
        Outputs at the frame slots.
    target : Tensor ``[B, T, d]``
        True frame features.
    masked : Tensor ``[B, T]`` bool
        Masked slots (the loss is averaged over them).
    tau : float
        Temperature.

    Returns
    -------
    Tensor
        Mean over masked slots of ``-log softmax_s(<p_bt, f_bs> / tau)[t]`` over the frames ``s``
        of the same video.
    """
    logits = torch.einsum("btd,bsd->bts", F.normalize(pred, dim=-1),
                          F.normalize(target, dim=-1)) / tau
    labels = torch.arange(pred.shape[1], device=pred.device).expand(pred.shape[0], -1)
    return F.cross_entropy(logits[masked], labels[masked])


def inter_video_nce(pred: Tensor, target: Tensor, masked: Tensor, tau: float) -> Tensor:
    """Inter-video masked frame modelling loss: each masked slot's output against its true
    frame and the masked frames of the *other* videos of the batch (same-video frames are not
    candidates); mean over masked slots."""
    b = torch.arange(pred.shape[0], device=pred.device)[:, None].expand(-1, pred.shape[1])
    p = F.normalize(pred[masked], dim=-1)
    f = F.normalize(target[masked], dim=-1)
    vid = b[masked]
    logits = p @ f.t() / tau
    same = (vid[:, None] == vid[None, :]) & ~torch.eye(len(vid), dtype=torch.bool,
                                                      device=pred.device)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(vid), device=pred.device))


def dual_nce(v: Tensor, t: Tensor, v_key: Tensor, t_key: Tensor, v_queue: Tensor,
             t_queue: Tensor, tau: float) -> Tensor:
    """Dual video-sentence alignment: ``(CE(v . [t_key; t_queue]) + CE(t . [v_key;
    v_queue])) / 2``, positives on the diagonal of the batch block; inputs l2-normalised
    here."""
    v, t = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
    v_key, t_key = F.normalize(v_key, dim=-1), F.normalize(t_key, dim=-1)
    labels = torch.arange(len(v), device=v.device)
    lv = torch.cat([v @ t_key.t(), v @ F.normalize(t_queue, dim=-1).t()], 1) / tau
    lt = torch.cat([t @ v_key.t(), t @ F.normalize(v_queue, dim=-1).t()], 1) / tau
    return 0.5 * (F.cross_entropy(lv, labels) + F.cross_entropy(lt, labels))


@torch.no_grad()
def momentum_update(online: nn.Module, momentum: nn.Module, m: float) -> None:
    """``theta_k <- m theta_k + (1 - m) theta_q`` for every parameter (MoCo)."""
    for q, k in zip(online.parameters(), momentum.parameters(), strict=True):
        k.mul_(m).add_(q.detach(), alpha=1.0 - m)


class KeyQueue(nn.Module):
    """FIFO queue of ``size`` keys (a ring buffer; the oldest keys are replaced first).

    Buffers (checkpointed): ``keys`` ``[size, dim]`` (random unit vectors at start, as MoCo) and
    ``ptr``, the slot of the next write.
    """

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size: expected a positive integer, got {size}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=g), dim=-1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, new: Tensor) -> None:
        """Write ``new`` ``[n, dim]`` at the pointer (wrapping) and advance it; with
        ``n > size`` only the last ``size`` keys are kept."""
        size = self.keys.shape[0]
        new = new.detach()[-size:]
        idx = (int(self.ptr) + torch.arange(len(new), device=new.device)) % size
        self.keys[idx] = new.to(self.keys.dtype)
        self.ptr.fill_((int(self.ptr) + len(new)) % size)

    def ordered(self) -> Tensor:
        """Keys from the oldest to the newest."""
        p = int(self.ptr)
        return torch.cat([self.keys[p:], self.keys[:p]])
