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

Both MMD forms run through one autograd function (``_MMD``) that evaluates the pairwise kernel
block by block and back-propagates with the hand-written gradient of the same formula, so a
batch keeps one ``[B, 2L, 2L]`` tensor for the backward instead of a dozen (values and gradients
equal the plain autograd formulation up to float rounding; ``tests/test_gcl4sr.py`` pins them).
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


#: Largest ``rows x n x n`` block of pairwise values held at once by :class:`_MMD`.
_MMD_BLOCK = 1 << 21


def _pair_block(z: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``‖z_i‖² + ‖z_j‖² - 2 z_i·z_j`` and the masked, clamped, zero-diagonal distances.

    ``z [R, n, D]``, ``ok [R, n]`` bool (sample present); both outputs ``[R, n, n]``.
    """
    sq = (z * z).sum(-1)
    raw = torch.baddbmm(sq.unsqueeze(-1) + sq.unsqueeze(-2), z, z.transpose(-1, -2), alpha=-2.0)
    n = z.shape[-2]
    valid = (ok.unsqueeze(-1) & ok.unsqueeze(-2)) & ~torch.eye(n, dtype=torch.bool,
                                                              device=z.device)
    return raw, raw.clamp_min(0).masked_fill_(~valid, 0.0)


class _MMD(torch.autograd.Function):
    """Per-row MMD V-statistic with a hand-written backward (memory-lean, blockwise).

    Row ``r`` has samples ``z[r, :n/2]`` (x) and ``z[r, n/2:]`` (y), present where ``ok``;
    ``sign`` is +1 on x and -1 on y, so ``mean K_xx + mean K_yy - 2 mean K_xy`` is
    ``vᵀ K v / cnt²`` with ``v = sign * ok``. The forward works on ``_MMD_BLOCK`` pairwise values
    at a time and keeps, besides ``z``, one ``[R, n, n]`` tensor: ``v_i v_j dK/dd2`` where the
    gradient passes; autograd would keep a dozen such intermediates. Gradients are those autograd
    gives for the direct formula (``clamp(|z_i|² + |z_j|² - 2 z_i·z_j, 0)`` off the diagonal,
    then :func:`_kernel_sum`, masked and summed), including the zero gradient where the clamp
    at 0 is active and on the diagonal; the bandwidth is detached.
    """

    @staticmethod
    def forward(ctx, z, ok, bandwidth, n_kernels, mul):  # type: ignore[override]
        r, n = z.shape[0], z.shape[1]
        half = n // 2
        sign = torch.ones(n, dtype=z.dtype, device=z.device)
        sign[half:] = -1.0
        v = ok.to(z.dtype) * sign
        cnt = ok[:, :half].to(z.dtype).sum(-1)
        step = max(1, _MMD_BLOCK // max(n * n, 1))
        out = z.new_empty(r)
        dks = z.new_empty(r, n, n)
        for lo in range(0, r, step):
            sl = slice(lo, lo + step)
            raw, d2 = _pair_block(z[sl], ok[sl])
            if bandwidth is None:
                n2 = 2 * cnt[sl]
                base = d2.sum((-1, -2)) / (n2 * n2 - n2).clamp_min(1)
            else:
                base = torch.full_like(cnt[sl], float(bandwidth))
            # _kernel_sum, with dK/dd2 alongside
            b0 = base.clamp_min(1e-12)[:, None, None] / (mul ** (n_kernels // 2))
            k = torch.zeros_like(d2)
            dk = dks[sl]
            dk.zero_()
            for i in range(n_kernels):
                b = b0 * mul**i
                e = torch.exp(-d2 / b)
                k = k + e
                dk -= e / b
            vs = v[sl]
            out[sl] = (torch.bmm(k, vs.unsqueeze(-1)).squeeze(-1) * vs).sum(-1)
            # dL/d raw_ij = v_i v_j dK_ij where the clamp passes it, off the diagonal
            dk *= vs.unsqueeze(-1) * vs.unsqueeze(-2)
            dk.masked_fill_(raw < 0, 0.0)
            dk.diagonal(dim1=-2, dim2=-1).zero_()
        denom = (cnt * cnt).clamp_min(1)
        ctx.save_for_backward(z, dks, denom)
        return out / denom

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        z, dks, denom = ctx.saved_tensors
        r, n = z.shape[0], z.shape[1]
        scale = grad / denom
        step = max(1, _MMD_BLOCK // max(n * n, 1))
        gz = torch.empty_like(z)
        for lo in range(0, r, step):
            sl = slice(lo, lo + step)
            zs = z[sl]
            g = dks[sl] * scale[sl][:, None, None]
            sym = g + g.transpose(-1, -2)
            # raw_ij = |z_i|² + |z_j|² - 2 z_i·z_j
            gz[sl] = 2.0 * (sym.sum(-1).unsqueeze(-1) * zs - torch.bmm(sym, zs))
        return gz, None, None, None, None


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
    if x.shape != y.shape:
        raise ValueError(f"mmd_per_sequence: x {tuple(x.shape)} and y {tuple(y.shape)} differ")
    ok = mask.bool()
    return _MMD.apply(torch.cat([x, y], dim=1), torch.cat([ok, ok], dim=1), bandwidth,
                      int(n_kernels), float(mul))


def mmd_across_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    n_kernels: int = 5,
    bandwidth: float | None = None,
    mul: float = 2.0,
) -> torch.Tensor:
    """MMD between the row sets of ``x`` and ``y`` ``[B, D]`` (each row one sample); a scalar."""
    if x.shape != y.shape:
        raise ValueError(f"mmd_across_batch: x {tuple(x.shape)} and y {tuple(y.shape)} differ")
    z = torch.cat([x, y], dim=0).unsqueeze(0)
    ok = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
    return _MMD.apply(z, ok, bandwidth, int(n_kernels), float(mul))[0]
