"""Vector quantiser with an EMA codebook, k-means initialisation and dead-code restart.

Follows:

* VQ-VAE (A. van den Oord, O. Vinyals, K. Kavukcuoglu, "Neural Discrete Representation
  Learning", NeurIPS 2017, arXiv 1711.00937): nearest code by squared L2 distance, the
  straight-through estimator (the decoder's gradient is copied to the encoder output), and the
  commitment loss ``beta * ||z - sg(q)||^2``.
* EMA codebook updates (appendix of the same paper; A. Razavi, A. van den Oord, O. Vinyals,
  "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019, arXiv 1906.00446, and
  the Sonnet ``VectorQuantizerEMA`` that CrossTimeNet's tokenizer ports): with one-hot
  assignments, counts ``n_k`` and sums ``s_k`` of a batch,
  ``N_k <- g N_k + (1-g) n_k``, ``m_k <- g m_k + (1-g) s_k``, the Laplace-smoothed sizes
  ``N~_k = (N_k + eps) / (sum N + K eps) * sum N`` and the codes ``e_k = m_k / N~_k``.
  The codebook is a buffer, not trained by gradient, so the VQ-VAE codebook loss is absent.
* Dead-code restart in the spirit of Jukebox (P. Dhariwal et al., "Jukebox: A Generative Model
  for Music", arXiv 2005.00341), which re-seeds rarely used codes with random encoder outputs of
  the current batch. Our rule (our choice): a code not chosen in ``restart_after`` consecutive
  training updates is set to a random encoder output of the batch, its EMA sum to that vector
  and its EMA count to 1, so the next EMA step starts from it.
* k-means initialisation from the first training batch (used by LaVIT's maintainers and the
  BEiT v2 quantiser; also Jukebox-era practice): k-means++ seeding and Lloyd iterations on the
  batch's encoder outputs, vectorised in torch and seeded. With fewer vectors than codes, the
  remaining codes are copies of random vectors plus a small Gaussian jitter (our choice).

Reported per call: the code counts of the batch, usage (share of codes used) and perplexity
``exp(-sum_k p_k log p_k)`` with ``p_k`` the batch's code frequencies. EMA updates, k-means
initialisation and restarts happen only in training mode; ``eval()`` freezes the codebook (the
CrossTimeNet code leaves its tokenizers in training mode during PLM training, which keeps moving
the codebook; we do not).

Random draws (k-means seeding, restarts) come from a ``torch.Generator`` seeded with
``seed + number of updates so far``, so a run is deterministic and resumes identically from the
buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """``[N, K]`` squared L2 distances between the rows of ``z`` ``[N, d]`` and ``codebook``
    ``[K, d]``."""
    return (
        z.pow(2).sum(1, keepdim=True)
        - 2.0 * z @ codebook.t()
        + codebook.pow(2).sum(1)[None, :]
    ).clamp_min(0.0)


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code (squared L2) for each row of ``z``; ties go to the lower index."""
    return squared_distances(z, codebook).argmin(dim=1)


def ema_update(
    cluster_size: Tensor, embed_sum: Tensor, z: Tensor, ids: Tensor, decay: float, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One EMA codebook step (VQ-VAE appendix / VQ-VAE-2, Laplace-smoothed).

    Parameters
    ----------
    cluster_size : Tensor ``[K]``
        EMA counts ``N_k``.
    embed_sum : Tensor ``[K, d]``
        EMA sums ``m_k``.
    z : Tensor ``[N, d]``
        Encoder outputs of the batch.
    ids : Tensor ``[N]``
        Their assigned codes.
    decay : float
        ``g`` in ``[0, 1)``.
    eps : float
        Laplace smoothing ``eps > 0``.

    Returns
    -------
    cluster_size, embed_sum, codebook : Tensor
        ``N_k``, ``m_k`` after the step and the codes ``m_k / N~_k``.
    """
    k = cluster_size.shape[0]
    onehot = torch.nn.functional.one_hot(ids, k).to(z.dtype)
    counts = onehot.sum(0)
    sums = onehot.t() @ z
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_sum = decay * embed_sum + (1.0 - decay) * sums
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + k * eps) * total
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def perplexity(counts: Tensor) -> Tensor:
    """``exp(-sum p log p)`` of the code frequencies ``p = counts / counts.sum()`` (0 log 0 = 0)."""
    p = counts.to(torch.float64) / counts.sum().clamp_min(1)
    ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum()
    return ent.exp().to(torch.float32)


def kmeans(z: Tensor, k: int, iters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding then ``iters`` Lloyd steps on the rows of ``z`` ``[N, d]``.

    An empty cluster keeps its previous centre. With ``N < k`` every row is a centre once and
    the other ``k - N`` centres are random rows plus Gaussian jitter of 1% of the data's
    standard deviation.

    Returns
    -------
    Tensor ``[k, d]``
    """
    z = z.detach()
    n, d = z.shape
    if n < k:
        extra = z[torch.randint(n, (k - n,), generator=generator)]
        scale = 0.01 * (z.std() if n > 1 else z.abs().mean()).clamp_min(1e-6)
        noise = torch.randn(extra.shape, generator=generator, dtype=z.dtype) * scale
        return torch.cat([z, extra + noise.to(z.device)])
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [z[first]]
    d2 = (z - z[first]).pow(2).sum(1)
    for _ in range(1, k):
        weights = d2.to(torch.float64).cpu()
        if float(weights.sum()) <= 0:
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(z[idx])
        d2 = torch.minimum(d2, (z - z[idx]).pow(2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        ids = nearest_code(z, c)
        onehot = torch.nn.functional.one_hot(ids, k).to(z.dtype)
        counts = onehot.sum(0)
        sums = onehot.t() @ z
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return c


@dataclass
class VQOutput:
    """What :class:`VectorQuantizer` returns.

    Attributes
    ----------
    quantized : Tensor ``[..., d]``
        Codes with the straight-through estimator (value = code, gradient -> ``z``).
    ids : Tensor ``[...]``
        Code indices.
    commitment : Tensor
        ``mean ||z - sg(q)||^2`` (unweighted; multiply by ``beta``).
    counts : Tensor ``[K]``
        Code counts of this batch.
    perplexity : Tensor
        Perplexity of the batch's code frequencies.
    usage : float
        Share of codes used in this batch.
    """

    quantized: Tensor
    ids: Tensor
    commitment: Tensor
    counts: Tensor
    perplexity: Tensor
    usage: float


class VectorQuantizer(nn.Module):
    """EMA vector quantiser (see the module docstring for the rules and their sources).

    Parameters
    ----------
    dim : int
        Code dimension ``d``.
    codebook_size : int
        Number of codes ``K``.
    decay : float
        EMA decay ``g`` in ``[0, 1)``.
    eps : float
        Laplace smoothing of the EMA counts, ``> 0``.
    beta : float
        Commitment weight (0.25 in VQ-VAE and the CrossTimeNet code).
    kmeans_init : bool
        Initialise the codebook by k-means on the first training batch.
    kmeans_iters : int
        Lloyd iterations of that initialisation.
    restart_after : int
        Re-seed a code unused for this many consecutive training updates (0 disables).
    seed : int
        Seed of the k-means and restart draws.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        beta: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        restart_after: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim: expected a positive integer, got {dim}")
        if codebook_size < 2:
            raise ValueError(f"codebook_size: expected at least 2, got {codebook_size}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay}")
        if eps <= 0:
            raise ValueError(f"eps: expected a positive value, got {eps}")
        if beta < 0:
            raise ValueError(f"beta: expected a non-negative value, got {beta}")
        if kmeans_iters < 0 or restart_after < 0:
            raise ValueError("kmeans_iters and restart_after: expected non-negative integers")
        self.dim, self.codebook_size = dim, codebook_size
        self.decay, self.eps, self.beta = decay, eps, beta
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.restart_after, self.seed = restart_after, seed
        g = torch.Generator().manual_seed(seed)
        codebook = torch.empty(codebook_size, dim)
        bound = (6.0 / dim) ** 0.5  # Kaiming-uniform bound (fan_in = dim), as the code's init
        codebook.uniform_(-bound, bound, generator=g)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("unused", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.restarts = 0

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + int(self.updates))

    @torch.no_grad()
    def _train_step(self, flat: Tensor, ids: Tensor, counts: Tensor) -> None:
        g = self._generator()
        size, total, codes = ema_update(self.cluster_size, self.embed_sum, flat, ids,
                                        self.decay, self.eps)
        self.cluster_size.copy_(size)
        self.embed_sum.copy_(total)
        self.codebook.copy_(codes)
        self.unused.copy_(torch.where(counts > 0, torch.zeros_like(self.unused), self.unused + 1))
        if self.restart_after > 0:
            dead = torch.nonzero(self.unused >= self.restart_after).flatten()
            if len(dead):
                pick = torch.randint(flat.shape[0], (len(dead),), generator=g).to(flat.device)
                self.codebook[dead] = flat[pick]
                self.embed_sum[dead] = flat[pick]
                self.cluster_size[dead] = 1.0
                self.unused[dead] = 0
                self.restarts += len(dead)
        self.updates += 1

    def forward(self, z: Tensor) -> VQOutput:
        """Quantise ``z`` ``[..., dim]`` (updates the codebook in training mode)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"z: expected last dimension {self.dim}, got {tuple(z.shape)}")
        flat = z.reshape(-1, self.dim)
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                centres = kmeans(flat.float(), self.codebook_size, self.kmeans_iters,
                                 self._generator())
                self.codebook.copy_(centres)
                self.embed_sum.copy_(centres)
                self.cluster_size.fill_(1.0)
                self.initialised.fill_(True)
        ids = nearest_code(flat.detach(), self.codebook)
        counts = torch.bincount(ids, minlength=self.codebook_size)
        q = self.codebook[ids].view_as(z).clone()  # the codes before this batch's EMA step
        if self.training:
            self._train_step(flat.detach(), ids, counts)
        commitment = (z - q.detach()).pow(2).mean()
        quantized = z + (q - z).detach()
        return VQOutput(quantized, ids.view(z.shape[:-1]), commitment, counts, perplexity(counts),
                        float((counts > 0).float().mean()))

    def lookup(self, ids: Tensor) -> Tensor:
        """Codes of ``ids`` ``[...]`` -> ``[..., dim]``."""
        return self.codebook[ids]
