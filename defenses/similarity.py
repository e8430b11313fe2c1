"""Similarity-based defenses: FLAME, FoolsGold and FLTrust.

* FLAME: Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022
  (arXiv:2101.02281).
* FoolsGold: Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
  Settings", RAID 2020 (arXiv:1808.04866).
* FLTrust: Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping", NDSS 2021 (arXiv:2012.13995).

All three work on whole-update vectors (the concatenation of all parameters); cosine
similarities come from a float64 Gram matrix.

FLAME clustering (approximation). FLAME runs HDBSCAN on cosine distances with
``min_cluster_size = n//2 + 1`` (``min_samples=1``, single cluster allowed) and keeps the
majority cluster. HDBSCAN is not available here; this module uses single linkage on the cosine
distances instead: minimum-spanning-tree edges are merged in increasing order and the accepted
set is the first connected component that reaches ``n//2 + 1`` members (the majority cluster at
the linkage height where it is born; ``extra['threshold']`` is that height). With
``min_cluster_size > n/2`` HDBSCAN can hold at most one cluster, and our reading of its
single-cluster labelling is that it keeps the points still in that cluster at its densest
level, i.e. this same set; this was not checked against the ``hdbscan`` package (not
installed), and its mutual-reachability distances and tie handling can make the two differ.
A consequence worth knowing: when benign updates are nearly orthogonal (cosine distances all
close to 1, as for independent high-dimensional noise) the chain reaches ``n//2 + 1`` members
early and many benign clients are rejected. Then every accepted update is clipped to the median norm
``S`` of *all* updates, the clipped updates are averaged (unweighted), and Gaussian noise with
``sigma = noise_factor * S`` is added to every coordinate (``noise_factor=0`` turns it off; the
default 0.01 is PoisonFRS's port). The noise generator is
``torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.round)`` and draws parameters in
sorted-name order, so results do not depend on client order.

FoolsGold. State = per-client running sum of its updates (``ctx.client_ids`` keys the clients).
Each round, among the participating clients: cosine similarity ``cs`` of the histories,
``v_i = max_{j != i} cs_ij``; pardoning ``cs_ij *= v_i / v_j`` when ``v_j > v_i`` (and
``v_j > 0``, so the ratio is defined);
``alpha_i = 1 - max_j cs_ij`` clipped to [0, 1] (values below 1e-9, i.e. identical histories up
to rounding, set to 0); divided by its maximum; 1 replaced by 0.99;
logit ``kappa * (ln(alpha / (1 - alpha)) + 0.5)`` clipped to [0, 1]. The result is the
alpha-weighted mean of the round's updates (zero if every alpha is 0; ``extra['all_zero']``).
Adaptations: similarities are computed among the round's participants only (the paper assumes
every client takes part each round), and the optional ``sketch_dim`` stores each history as a
count sketch (a fixed random hash of every coordinate to one of ``sketch_dim`` buckets with a
random sign; inner products are preserved in expectation) so that thousands of clients fit in
memory. ``sketch_dim=None`` stores exact histories (``n_clients_seen * D`` floats).

FLTrust. Trust ``TS_i = ReLU(cos(x_i, g_0))`` with the server's root update ``g_0``
(``ctx.root_update``); each update is rescaled to ``|g_0|``; the result is
``sum_i TS_i * (|g_0| / |x_i|) x_i / sum_i TS_i`` (zero if every trust score is 0).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedrec.errors import ConfigError

from .base import AggregationContext, AggregationInfo, Defense, Stacked
from .coordinate import coordinate_median
from .linalg import client_dots, client_sq_norms, combine, gram

__all__ = [
    "FLTrust",
    "Flame",
    "FoolsGold",
    "cosine_from_gram",
    "flame_majority",
    "foolsgold_weights",
    "fltrust_coefficients",
]


def cosine_from_gram(g: Tensor) -> Tensor:
    """Cosine similarity matrix from a Gram matrix (0 for rows with zero norm)."""
    norms = torch.diagonal(g).clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    cos = torch.where(denom > 0, g / denom.clamp_min(1e-300), torch.zeros_like(g))
    return cos.clamp_(-1.0, 1.0)


def flame_majority(cos_dist: Tensor) -> tuple[Tensor, float]:
    """Majority cluster by single linkage: first component with ``n//2 + 1`` members.

    Parameters
    ----------
    cos_dist : Tensor
        ``[n, n]`` symmetric cosine distances.

    Returns
    -------
    accepted : Tensor
        ``bool[n]``.
    threshold : float
        Linkage height at which the component reached ``n//2 + 1`` members (0 if ``n <= 1``).
    """
    n = cos_dist.shape[0]
    need = n // 2 + 1
    if n == 1:
        return torch.ones(1, dtype=torch.bool), 0.0
    # Prim's minimum spanning tree, O(n^2) with vectorised updates.
    in_tree = torch.zeros(n, dtype=torch.bool)
    best = cos_dist[0].clone()
    parent = torch.zeros(n, dtype=torch.long)
    in_tree[0] = True
    best[0] = float("inf")
    edges_u, edges_v, edges_w = [], [], []
    for _ in range(n - 1):
        cand = best.masked_fill(in_tree, float("inf"))
        j = int(torch.argmin(cand))
        edges_u.append(int(parent[j]))
        edges_v.append(j)
        edges_w.append(float(cand[j]))
        in_tree[j] = True
        closer = cos_dist[j] < best
        parent = torch.where(closer, torch.full_like(parent, j), parent)
        best = torch.minimum(best, cos_dist[j])
    # Kruskal merge of the MST edges in increasing order (stable for ties).
    order = sorted(range(n - 1), key=lambda e: (edges_w[e], min(edges_u[e], edges_v[e])))
    root = list(range(n))
    size = [1] * n

    def find(a: int) -> int:
        while root[a] != a:
            root[a] = root[root[a]]
            a = root[a]
        return a

    for e in order:
        a, b = find(edges_u[e]), find(edges_v[e])
        if size[a] < size[b]:
            a, b = b, a
        root[b] = a
        size[a] += size[b]
        if size[a] >= need:
            members = torch.tensor([find(i) == a for i in range(n)])
            return members, edges_w[e]
    raise AssertionError("unreachable: the spanning tree connects all clients")


_ALPHA_EPS = 1e-9


def foolsgold_weights(hist_gram: Tensor, kappa: float = 1.0) -> Tensor:
    """FoolsGold learning-rate vector from the Gram matrix of the clients' histories.

    Parameters
    ----------
    hist_gram : Tensor
        ``float64[n, n]`` Gram matrix of the per-client aggregate histories.
    kappa : float (default: 1.0)
        Confidence of the logit re-weighting.

    Returns
    -------
    Tensor
        ``float64[n]`` weights in [0, 1].
    """
    n = hist_gram.shape[0]
    cs = cosine_from_gram(hist_gram)
    cs.fill_diagonal_(-float("inf"))
    v = cs.max(dim=1).values if n > 1 else torch.zeros(1, dtype=torch.float64)
    if n > 1:
        pardon = (v[None, :] > v[:, None]) & (v[None, :] > 0)  # v_j > v_i and v_j > 0
        ratio = v[:, None] / v[None, :].clamp_min(1e-300)
        cs = torch.where(pardon, cs * ratio, cs)
        alpha = 1.0 - cs.max(dim=1).values
    else:
        alpha = torch.ones(1, dtype=torch.float64)
    alpha = alpha.clamp(0.0, 1.0)
    # similarities within 1e-9 of 1 are rounding noise of identical histories, which must get
    # weight 0 (not be blown up to 1 by the normalisation below)
    alpha = torch.where(alpha < _ALPHA_EPS, torch.zeros_like(alpha), alpha)
    top = float(alpha.max())
    if top > 0:
        alpha = alpha / top
    alpha = torch.where(alpha >= 1.0, torch.full_like(alpha, 0.99), alpha)
    with torch.no_grad():
        logit = kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)
    logit = torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0)
    return logit.clamp(0.0, 1.0)


def fltrust_coefficients(dots: Tensor, sq_norms: Tensor, root_sq_norm: float) -> Tensor:
    """FLTrust coefficients on the raw updates.

    Parameters
    ----------
    dots : Tensor
        ``[n]`` inner products ``<x_i, g_0>``.
    sq_norms : Tensor
        ``[n]`` squared norms of the updates.
    root_sq_norm : float
        Squared norm of the root update.

    Returns
    -------
    Tensor
        ``float64[n]`` coefficients ``TS_i * (|g_0| / |x_i|) / sum_j TS_j`` (zeros if all trust
        scores vanish).
    """
    norms = sq_norms.to(torch.float64).sqrt()
    g0 = math.sqrt(root_sq_norm)
    denom = norms * g0
    cos = torch.where(denom > 0, dots.double() / denom.clamp_min(1e-300), torch.zeros_like(norms))
    trust = cos.clamp(min=0.0)
    total = float(trust.sum())
    if total <= 0:
        return torch.zeros_like(trust)
    return trust * g0 / norms.clamp_min(1e-300) / total


class Flame(Defense):
    """FLAME (Nguyen et al., USENIX Security 2022) with a single-linkage clustering stand-in.

    Parameters
    ----------
    noise_factor : float (default: 0.01)
        Noise standard deviation as a multiple of the median update norm, ``>= 0``.
    """

    name = "flame"
    sparse_rows = True
    consensus = False  # adds noise to the result
    idempotent = False

    def __init__(self, noise_factor: float = 0.01) -> None:
        if isinstance(noise_factor, bool) or not isinstance(noise_factor, int | float) or not (
            math.isfinite(noise_factor) and noise_factor >= 0
        ):
            raise ConfigError(
                f"defense.flame.noise_factor={noise_factor!r}: expected a finite float >= 0"
            )
        self.noise_factor = float(noise_factor)

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        g = gram(stacked)
        accepted, threshold = flame_majority(1.0 - cosine_from_gram(g))
        norms = torch.diagonal(g).clamp_min(0).sqrt()
        s = float(coordinate_median(norms.reshape(n, 1))[0][0])
        scale = torch.where(norms > s, s / norms.clamp_min(1e-300), torch.ones_like(norms))
        coef = torch.where(accepted, scale, torch.zeros_like(scale)) / int(accepted.sum())
        out = combine(stacked, coef)
        sigma = self.noise_factor * s
        if sigma > 0:
            gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.round)
            for key in sorted(out):
                noise = torch.randn(out[key].shape, generator=gen, dtype=torch.float32,
                                    device=gen.device).to(out[key].device)
                out[key] = out[key] + (sigma * noise).to(out[key].dtype)
        extra = {
            "threshold": threshold,
            "accepted": float(accepted.sum()),
            "median_norm": s,
            "noise_std": sigma,
        }
        return out, AggregationInfo(accepted, coef, extra)


class FoolsGold(Defense):
    """FoolsGold (Fung et al., RAID 2020) with per-client history keyed by ``ctx.client_ids``.

    Parameters
    ----------
    kappa : float (default: 1.0)
        Confidence of the logit function, ``> 0``.
    sketch_dim : int | None (default: None)
        If set (``>= 1``), store histories as count sketches of this size instead of exact
        ``D``-dimensional sums.
    sketch_seed : int (default: 0)
        Seed of the count-sketch hash (fixed for the lifetime of the history).
    """

    name = "foolsgold"
    consensus = False  # identical updates are perfect sybils: all weights 0
    idempotent = False

    def __init__(
        self, kappa: float = 1.0, sketch_dim: int | None = None, sketch_seed: int = 0
    ) -> None:
        if isinstance(kappa, bool) or not isinstance(kappa, int | float) or not (
            math.isfinite(kappa) and kappa > 0
        ):
            raise ConfigError(f"defense.foolsgold.kappa={kappa!r}: expected a finite float > 0")
        if sketch_dim is not None and (
            isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 1
        ):
            raise ConfigError(
                f"defense.foolsgold.sketch_dim={sketch_dim!r}: expected an integer >= 1 or None"
            )
        self.kappa = float(kappa)
        self.sketch_dim = sketch_dim
        self.sketch_seed = int(sketch_seed)
        self._history: dict[int, Tensor] = {}
        self._hash: dict[str, tuple[Tensor, Tensor]] = {}

    def _features(self, stacked: Stacked) -> Tensor:
        n = next(iter(stacked.values())).shape[0]
        if self.sketch_dim is None:
            return torch.cat([x.reshape(n, -1) for x in stacked.values()], dim=1)
        out = torch.zeros(n, self.sketch_dim, dtype=torch.float32)
        for key, x in stacked.items():
            flat = x.reshape(n, -1)
            if key not in self._hash or self._hash[key][0].numel() != flat.shape[1]:
                gen = torch.Generator().manual_seed(
                    self.sketch_seed * 1_000_003 + zlib.crc32(key.encode())
                )
                cpu = gen.device  # the same sketch on every device
                bucket = torch.randint(self.sketch_dim, (flat.shape[1],), generator=gen,
                                       device=cpu).to(flat.device)
                sign = torch.randint(2, (flat.shape[1],), generator=gen,
                                     device=cpu).to(flat.device).float() * 2 - 1
                self._hash[key] = (bucket, sign)
            bucket, sign = self._hash[key]
            out.index_add_(1, bucket, flat.float() * sign)
        return out

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        n = weights.shape[0]
        if ctx.client_ids is None:
            raise ConfigError(
                "defense.foolsgold: ctx.client_ids is None; FoolsGold keeps per-client history "
                "and needs the client ids of the round"
            )
        ids = [int(i) for i in ctx.client_ids.reshape(-1).tolist()]
        if len(ids) != n or len(set(ids)) != n:
            raise ValueError(f"ctx.client_ids: expected {n} distinct ids, got {ids[:10]}...")
        feats = self._features(stacked)
        hist = []
        for row, cid in enumerate(ids):
            prev = self._history.get(cid)
            if prev is not None and prev.shape != feats[row].shape:
                raise ValueError(
                    f"foolsgold: stored history of client {cid} has {prev.numel()} entries, "
                    f"update has {feats[row].numel()}"
                )
            new = feats[row].clone() if prev is None else prev + feats[row]
            self._history[cid] = new
            hist.append(new)
        alpha = foolsgold_weights(gram(torch.stack(hist)), self.kappa)
        total = float(alpha.sum())
        coef = alpha / total if total > 0 else torch.zeros_like(alpha)
        out = combine(stacked, coef)
        extra = {"all_zero": float(total <= 0), "mean_alpha": float(alpha.mean())}
        return out, AggregationInfo(alpha > 0, coef, extra)

    def state_dict(self) -> dict[str, Any]:
        """``{"ids": int64[m], "history": float[m, d]}`` (empty tensors before any round)."""
        if not self._history:
            return {"ids": torch.zeros(0, dtype=torch.long), "history": torch.zeros(0, 0)}
        ids = sorted(self._history)
        return {
            "ids": torch.tensor(ids, dtype=torch.long),
            "history": torch.stack([self._history[i] for i in ids]),
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the histories saved by :meth:`state_dict`."""
        if set(d) != {"ids", "history"}:
            raise ValueError(f"foolsgold state: expected keys ['history', 'ids'], got {sorted(d)}")
        ids, hist = d["ids"], d["history"]
        if hist.shape[0] != ids.numel():
            raise ValueError("foolsgold state: 'ids' and 'history' have different lengths")
        self._history = {int(i): hist[r].clone() for r, i in enumerate(ids.tolist())}


class FLTrust(Defense):
    """FLTrust (Cao et al., NDSS 2021); needs ``ctx.root_update``."""

    name = "fltrust"
    sparse_rows = True
    needs_root_update: ClassVar[bool] = True

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        root = ctx.root_update
        if root is None:
            raise ConfigError(
                "defense.fltrust: ctx.root_update is None; FLTrust needs the server's update "
                "on its root dataset"
            )
        n = weights.shape[0]
        dots = torch.zeros(n, dtype=torch.float64)
        root_sq = 0.0
        for key, x in stacked.items():
            if key not in root or tuple(root[key].shape) != tuple(x.shape[1:]):
                got = tuple(root[key].shape) if key in root else "missing"
                raise ValueError(
                    f"ctx.root_update[{key!r}]: expected shape {tuple(x.shape[1:])}, got {got}"
                )
            r = root[key].reshape(-1).to(torch.float64)
            dots += client_dots(x, r)
            root_sq += float(r @ r)
        coef = fltrust_coefficients(dots, client_sq_norms(stacked), root_sq)
        out = combine(stacked, coef)
        return out, AggregationInfo(coef > 0, coef, {"trusted": float((coef > 0).sum())})
