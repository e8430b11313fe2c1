"""Auxiliary losses of GCL4SR: graph contrastive loss and MMD alignment.

Zhang et al., "Enhancing Sequential Recommendation with Graph Contrastive Learning", IJCAI 2022
(arXiv 2205.14837), Eq. 3 (contrastive) and Eq. 5-6 (MMD).

* :func:`info_nce` - the paper's Eq. 3: cosine similarity over temperature, the positive is the
  other view of the same sequence and the denominator runs over the other view of every
  sequence in the batch (one direction).
* :func:`nt_xent` - the authors' code: SimCLR's symmetric NT-Xent, whose denominators also hold
  the other sequences of the *same* view (intra-view negatives).
* :func:`mmd_per_sequence` - the paper's form: for each sequence, the positions are samples in
  ``R^d`` and the discrepancy between the raw item embeddings and the graph representations is
  measured with a Gaussian kernel; averaged over sequences.
* :func:`mmd_across_batch` - the code's default (``fast_run``): each sequence is one sample (a
  vector over positions) and one MMD is computed over the batch.

Kernels are ``k(x, y) = Σ_i exp(-‖x - y‖² / (ρ · mul^(i - n//2)))`` over ``n`` bandwidths (the
code uses ``n = 5``, ``mul = 2``). Without a fixed ``ρ`` the base bandwidth is the mean pairwise
squared distance of the pooled samples, detached (the code's rule). MMD values are the biased
V-statistic ``mean K_xx + mean K_yy - 2 mean K_xy``, which is exactly 0 for identical sets.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row contrastive loss of Eq. 3 ``[B]``.

    ``-log( exp(cos(z1_b, z2_b)/τ) / Σ_k exp(cos(z1_b, z2_k)/τ) )``.

    Parameters
    ----------
    z1, z2 : torch.Tensor
        ``[B, d]`` representations of the two views (row ``b`` = sequence ``b``).
    tau : float
        Temperature (paper: 0.5).
    """
    if tau <= 0:
        raise ValueError(f"tau={tau}: expected > 0")
    logits = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / tau
    labels = torch.arange(len(z1), device=z1.device)
    return F.cross_entropy(logits, labels, reduction="none")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row symmetric NT-Xent of the authors' code ``[B]`` (``loss_a + loss_b`` per row).

    ``loss_a`` ranks ``z2_b`` against ``{z2_k} ∪ {z1_k, k ≠ b}`` for anchor ``z1_b``, and
    ``loss_b`` symmetrically.
    """
    if tau <= 0:
        raise ValueError(f"tau={tau}: expected > 0")
    a, b = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    ab, ba = a @ b.T / tau, b @ a.T / tau
    aa = (a @ a.T / tau).masked_fill(eye, float("-inf"))
    bb = (b @ b.T / tau).masked_fill(eye, float("-inf"))
    labels = torch.arange(len(a), device=a.device)
    loss_a = F.cross_entropy(torch.cat([ab, aa], 1), labels, reduction="none")
    loss_b = F.cross_entropy(torch.cat([ba, bb], 1), labels, reduction="none")
    return loss_a + loss_b


def _kernel_sum(dist2: torch.Tensor, base: torch.Tensor, n_kernels: int,
                mul: float) -> torch.Tensor:
    base = base.clamp_min(1e-12) / (mul ** (n_kernels // 2))
    out = torch.zeros_like(dist2)
    for i in range(n_kernels):
        out = out + torch.exp(-dist2 / (base * mul**i))
    return out


def _sq_dists(z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances ``[..., n, n]`` of ``z [..., n, d]`` (zero diagonal)."""
    sq = (z * z).sum(-1)
    d2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (z @ z.transpose(-1, -2))).clamp_min(0)
    n = z.shape[-2]
    return d2 * (1 - torch.eye(n, dtype=z.dtype, device=z.device))


def mmd_per_sequence(
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    n_kernels: int = 1,
    bandwidth: float | None = None,
    mul: float = 2.0,
) -> torch.Tensor:
    """MMD between the position sets of ``x`` and ``y`` for every sequence ``[B]``.

    Parameters
    ----------
    x, y : torch.Tensor
        ``[B, L, d]``; position ``l`` of row ``b`` is a sample when ``mask[b, l]``.
    mask : torch.Tensor
        ``[B, L]`` bool, at least one True per row.
    n_kernels : int
        Number of Gaussian bandwidths (paper: 1, code: 5).
    bandwidth : float, optional
        Fixed base bandwidth ρ; default: mean pairwise squared distance per sequence (detached).
    mul : float
        Ratio between consecutive bandwidths.
    """
    m = mask.to(x.dtype)
    z = torch.cat([x, y], dim=1)                       # [B, 2L, d]
    mz = torch.cat([m, m], dim=1)                      # [B, 2L]
    pair = mz.unsqueeze(-1) * mz.unsqueeze(-2)         # [B, 2L, 2L]
    d2 = _sq_dists(z) * pair
    cnt = m.sum(-1)                                    # [B]
    if bandwidth is None:
        n2 = 2 * cnt
        base = (d2.sum((-1, -2)) / (n2 * n2 - n2).clamp_min(1)).detach()
    else:
        base = torch.full_like(cnt, float(bandwidth))
    k = _kernel_sum(d2, base[:, None, None], n_kernels, mul) * pair
    L = x.shape[1]
    denom = (cnt * cnt).clamp_min(1)
    kxx = k[:, :L, :L].sum((-1, -2)) / denom
    kyy = k[:, L:, L:].sum((-1, -2)) / denom
    kxy = k[:, :L, L:].sum((-1, -2)) / denom
    kyx = k[:, L:, :L].sum((-1, -2)) / denom
    return kxx + kyy - kxy - kyx


def mmd_across_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    n_kernels: int = 5,
    bandwidth: float | None = None,
    mul: float = 2.0,
) -> torch.Tensor:
    """MMD between the row sets of ``x`` and ``y`` ``[B, D]`` (each row one sample); a scalar."""
    z = torch.cat([x, y], dim=0)
    d2 = _sq_dists(z)
    n = len(z)
    base = (d2.sum() / max(n * n - n, 1)).detach() if bandwidth is None else torch.tensor(
        float(bandwidth), dtype=z.dtype)
    k = _kernel_sum(d2, base, n_kernels, mul)
    b = len(x)
    return (k[:b, :b] + k[b:, b:] - k[:b, b:] - k[b:, :b]).mean()
