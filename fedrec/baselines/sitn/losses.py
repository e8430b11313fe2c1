"""Losses of SITN (Sun et al., "Self-Supervised Interest Transfer Network via Prototypical
Contrastive Learning for Recommendation", AAAI 2023, arXiv 2302.14438) and the k-means that
refreshes its prototypes.

The paper names two contrastive levels, instance-to-instance and instance-to-cluster [PAPER];
its method section was not available to us, so every formula here is our inference [INF]:

* :func:`instance_nce`: symmetric InfoNCE between a user's source- and target-domain vectors
  (cosine similarity / temperature; the other users of the batch are the negatives).
* :func:`proto_nce`: ProtoNCE-style instance-to-cluster loss (Li et al., "Prototypical
  Contrastive Learning of Unsupervised Representations", ICLR 2021): a vector is pulled to the
  prototype its counterpart from the other domain was assigned to, against all prototypes.
* :func:`kmeans`: seeded, vectorised spherical k-means in torch (k-means++ seeding).
* :func:`bce_sampled` / :func:`softmax_ce`: the target-domain prediction loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def instance_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row ``i`` of ``a`` and of ``b`` are a positive pair.

    ``L = ½ [CE(S, I) + CE(Sᵀ, I)]`` with ``S_ij = cos(a_i, b_j) / temperature``.

    Parameters
    ----------
    a, b : torch.Tensor
        ``[B, H]`` paired representations (``B >= 2``).
    temperature : float
        Softmax temperature ``τ > 0``.
    """
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))


def proto_nce(z: torch.Tensor, prototypes: torch.Tensor, assign: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Instance-to-cluster loss ``mean_i −log softmax_k(cos(z_i, c_k) / φ)[assign_i]``.

    Parameters
    ----------
    z : torch.Tensor
        ``[B, H]`` instances.
    prototypes : torch.Tensor
        ``[P, H]`` cluster centres.
    assign : torch.Tensor
        ``[B]`` int64 prototype of each instance (from the other domain's clustering).
    temperature : float
        Concentration ``φ > 0`` (one value for every prototype).
    """
    logits = F.normalize(z, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    return F.cross_entropy(logits, assign)


def bce_sampled(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``[B]`` positive and ``[B, N]`` negative logits, summed per row
    (``−log σ(pos) − Σ log(1 − σ(neg))``) and averaged over rows."""
    return (F.softplus(-pos) + F.softplus(neg).sum(-1)).mean()


def softmax_ce(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Full-softmax cross-entropy over items ``1..n`` (column 0, padding, is left out).

    Parameters
    ----------
    scores : torch.Tensor
        ``[B, n + 1]`` scores.
    target : torch.Tensor
        ``[B]`` item ids in ``1..n``.
    """
    return F.cross_entropy(scores[:, 1:], target - 1)


def kmeans(x: torch.Tensor, k: int, n_iter: int = 20, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (cosine) with k-means++ seeding; deterministic in ``seed``.

    Parameters
    ----------
    x : torch.Tensor
        ``[N, H]`` points (normalised inside); ``N >= k``.
    k : int
        Number of clusters.
    n_iter : int
        Lloyd iterations.
    seed : int
        Seed of the k-means++ draws.

    Returns
    -------
    tuple of torch.Tensor
        ``[k, H]`` unit-norm centres and ``[N]`` int64 assignments.

    Raises
    ------
    ValueError
        Fewer points than clusters.
    """
    if len(x) < k:
        raise ValueError(f"kmeans: {len(x)} points for {k} clusters; expected at least k points")
    x = F.normalize(x.detach().float(), dim=-1)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    first = int(torch.randint(len(x), (1,), generator=gen))
    centres = [x[first]]
    dist = 1 - x @ x[first]
    for _ in range(1, k):
        p = dist.clamp_min(0).cpu().double() + 1e-12
        nxt = int(torch.multinomial(p / p.sum(), 1, generator=gen))
        centres.append(x[nxt])
        dist = torch.minimum(dist, 1 - x @ x[nxt])
    c = torch.stack(centres)
    assign = (x @ c.T).argmax(1)
    for _ in range(n_iter):
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        c = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), c)  # keep empty centres
        new = (x @ c.T).argmax(1)
        if torch.equal(new, assign):
            break
        assign = new
    return c, assign
