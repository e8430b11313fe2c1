"""Downstream measurements of VICTOR's representations (no fine-tuning).

* Retrieval (``retrieval/v2t_R@k``, ``retrieval/t2v_R@k``, k = 1, 5, 10): cosine between the
  dual-alignment embeddings (``v_proj`` of the mean video state, ``t_proj`` of the mean text
  state of the clean description) of the split's videos and their own descriptions; the
  rank of the paired item among all of the split's items.
* Classification (``class/digit_acc``, ``class/motion_acc``): logistic-regression probes on the
  mean video state (before the projection), fitted on the pre-training (warm) videos and scored
  on the split; the motion label is the first motion.
* Cold-video recommendation (``cold/HR@10``, ``cold/NDCG@10``): a user's profile is the mean of
  the l2-normalised video representations of its training (warm) videos; the split's cold
  videos are ranked by cosine to it (full ranking among that half's cold videos, no sampling);
  users whose held-out cold video is in the split are evaluated.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

METRICS = tuple([f"retrieval/{d}_R@{k}" for d in ("v2t", "t2v") for k in (1, 5, 10)]
                + ["class/digit_acc", "class/motion_acc", "cold/HR@10", "cold/NDCG@10"])


def recall_at(sim: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``R@k`` of rows -> columns with the diagonal correct (ties count against the row)."""
    pos = sim.diagonal()[:, None]
    rank = (sim > pos).sum(1) + ((sim == pos).sum(1) - 1)
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def hr_ndcg(scores: Tensor, target: Tensor, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k of ``target`` columns in ``scores`` ``[U, N]`` (ties counted against)."""
    pos = scores.gather(1, target[:, None])
    rank = (scores > pos).sum(1) + (scores == pos).sum(1) - 1
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 2), 0.0)
    return float(hit.double().mean()), float(ndcg.mean())


@torch.no_grad()
def representations(model: torch.nn.Module, data: object, videos: np.ndarray,
                    batch_size: int = 128) -> dict[str, Tensor]:
    """``video`` (mean video state), ``v`` and ``t`` (dual embeddings) of ``videos``."""
    from fedrec.baselines.victor.data import assemble_text

    model.eval()
    out: dict[str, list[Tensor]] = {"video": [], "v": [], "t": []}
    for s in range(0, len(videos), batch_size):
        ids = videos[s:s + batch_size]
        frames = torch.from_numpy(data.videos.frames[ids])
        rep = model.video_embedding(frames)
        text = assemble_text(data, ids)
        out["video"].append(rep)
        out["v"].append(model.v_proj(rep))
        out["t"].append(model.t_proj(model.text_embedding(text.ids, text.attention)))
    return {k: torch.cat(v) for k, v in out.items()}


def downstream(model: torch.nn.Module, data: object, split: str, probe_max_iter: int
               ) -> dict[str, float]:
    """Every measurement of the module docstring on ``split`` ("valid" or "test")."""
    from fedrec.baselines.lavit.pipeline import linear_probe

    ev = data.halves[split]
    rep = representations(model, data, ev)
    warm = representations(model, data, data.warm)
    sim = F.normalize(rep["v"], dim=-1) @ F.normalize(rep["t"], dim=-1).t()
    out = {f"retrieval/v2t_{k}": v for k, v in recall_at(sim).items()}
    out.update({f"retrieval/t2v_{k}": v for k, v in recall_at(sim.t()).items()})
    vids = data.videos
    xw, xe = warm["video"].numpy(), rep["video"].numpy()
    out["class/digit_acc"] = linear_probe(xw, vids.digits[data.warm], xe, vids.digits[ev],
                                          probe_max_iter)
    out["class/motion_acc"] = linear_probe(xw, vids.motions[data.warm, 0], xe,
                                           vids.motions[ev, 0], probe_max_iter)
    inter = data.interactions
    users = np.flatnonzero(np.isin(inter.test, ev))
    warm_pos = {int(v): i for i, v in enumerate(data.warm)}
    wn = F.normalize(warm["video"], dim=-1)
    prof = torch.stack([wn[[warm_pos[int(v)] for v in inter.train[u]]].mean(0) for u in users])
    scores = F.normalize(prof, dim=-1) @ F.normalize(rep["video"], dim=-1).t()
    col = {int(v): i for i, v in enumerate(ev)}
    target = torch.tensor([col[int(inter.test[u])] for u in users])
    out["cold/HR@10"], out["cold/NDCG@10"] = hr_ndcg(scores, target)
    return out
