"""PMGT's item graph and its contextual-neighbour sampler (MCNSampling) with BERT-style masking.

Liu et al., "Pre-training Graph Transformer with Multimodal Side Information for
Recommendation", ACM MM 2021 (arXiv 2010.12284, first titled MG-BERT); official code
``stephenliu0423/PMGT`` (``data/data_process.py``, ``main.py``), which this module follows:

* item–item co-interaction count ``r_ij`` = number of users who interacted with both
  (``A Aᵀ`` without its diagonal); an undirected edge where ``r_ij ≥ threshold``; its weight
  ``w_ij = (ln r_ij + 1) / (ln √(deg_i · deg_j) + 1)`` with ``deg`` the degree in the
  thresholded graph;
* MCNSampling: from a seed, ``hops[0]`` neighbours drawn with replacement in proportion to the
  edge weight, from each of them ``hops[1]``, from each of those ``hops[2]`` (code: 10, 5, 2);
  hop ``h`` (0-based) is repeated ``len(hops) − h`` times, the nodes are counted, and the ``k``
  most frequent (ties: first met in that order, as ``collections.Counter.most_common``) form the
  ordered context; fewer than ``k`` distinct nodes are padded by drawing from them with
  replacement;
* masking: ``int(k · mask_prob)`` context positions, chosen uniformly, become the [MASK] node
  with probability 0.8, stay with 0.1, become a uniform random node with 0.1; the original node
  ids of those positions are the reconstruction targets.

Our choice [INF]: a node without any edge has itself as its only neighbour (the code's graph has
only nodes with edges; ours keeps every item so every item gets a pre-trained vector).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: node id of the [MASK] token in a masked context (its features are zeros)
MASK = -1


@dataclass
class ItemGraph:
    """Undirected weighted item graph in CSR form (``indptr``, ``indices``, ``weights``)."""

    n_nodes: int
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    @property
    def degree(self) -> np.ndarray:
        """Number of neighbours of every node."""
        return np.diff(self.indptr)

    @property
    def n_edges(self) -> int:
        """Number of undirected edges."""
        return len(self.indices) // 2

    def neighbours(self, node: int) -> np.ndarray:
        """Neighbours of ``node``."""
        return self.indices[self.indptr[node]:self.indptr[node + 1]]


def build_item_graph(pairs: np.ndarray, n_items: int, threshold: int) -> ItemGraph:
    """The thresholded co-interaction graph of (user, item) ``pairs`` (module docstring).

    Parameters
    ----------
    pairs : ndarray [n, 2], int
        Unique (user, item) training interactions, items in ``0..n_items-1``.
    n_items : int
        Number of nodes.
    threshold : int
        Minimum number of common users of an edge (code: 3 or 4).

    Returns
    -------
    ItemGraph
    """
    if threshold < 1:
        raise ValueError(f"model.params.graph_threshold={threshold}: expected >= 1")
    n_users = int(pairs[:, 0].max()) + 1 if len(pairs) else 0
    a = sp.csr_matrix((np.ones(len(pairs), dtype=np.float64), (pairs[:, 1], pairs[:, 0])),
                      shape=(n_items, n_users))
    r = (a @ a.T).tocoo()
    keep = (r.row != r.col) & (r.data >= threshold)
    rows, cols, counts = r.row[keep], r.col[keep], r.data[keep]
    deg = np.bincount(rows, minlength=n_items).astype(np.float64)
    w = (np.log(counts) + 1.0) / (np.log(np.sqrt(deg[rows] * deg[cols])) + 1.0)
    m = sp.csr_matrix((w, (rows, cols)), shape=(n_items, n_items))
    m.sort_indices()
    return ItemGraph(n_items, m.indptr.astype(np.int64), m.indices.astype(np.int64),
                     m.data.astype(np.float64))


def sample_neighbours(graph: ItemGraph, nodes: np.ndarray, k: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``k`` neighbours of each node, with replacement, in proportion to the edge weights.

    Returns
    -------
    ndarray [len(nodes), k], int64
        A node without edges gets itself ``k`` times.
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    s, e = graph.indptr[nodes], graph.indptr[nodes + 1]
    isolated = e == s
    if len(graph.indices) == 0:
        return np.repeat(nodes[:, None], k, axis=1)
    cum = np.cumsum(graph.weights)
    lo = np.where(s > 0, cum[np.maximum(s - 1, 0)], 0.0)
    hi = cum[np.maximum(e - 1, 0)]
    target = lo[:, None] + rng.random((len(nodes), k)) * (hi - lo)[:, None]
    pos = np.searchsorted(cum, target, side="right")
    pos = np.clip(pos, s[:, None], np.maximum(e - 1, s)[:, None])
    out = graph.indices[np.minimum(pos, len(graph.indices) - 1)]
    out = np.where(isolated[:, None], nodes[:, None], out)
    return out.astype(np.int64)


def multi_hop(graph: ItemGraph, seeds: np.ndarray, hops: tuple[int, ...],
              rng: np.random.Generator) -> list[np.ndarray]:
    """The hop samples of every seed: list over hops of ``[len(seeds), prod(hops[:h+1])]``."""
    out, frontier = [], np.asarray(seeds, dtype=np.int64)[:, None]
    for k in hops:
        nxt = sample_neighbours(graph, frontier.reshape(-1), k, rng)
        frontier = nxt.reshape(len(seeds), -1)
        out.append(frontier)
    return out


def mcn_context(hop_samples: list[np.ndarray], k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` most frequent nodes of each seed's tiled hop samples (module docstring).

    Parameters
    ----------
    hop_samples : list of ndarray [B, n_h]
        Output of :func:`multi_hop`.
    k : int
        Context length (code: ``neigh_num`` = 10).
    rng : numpy.random.Generator
        For padding a context with fewer than ``k`` distinct nodes.

    Returns
    -------
    ndarray [B, k], int64
    """
    n_hops = len(hop_samples)
    tiled = np.hstack([np.tile(h, (1, n_hops - i)) for i, h in enumerate(hop_samples)])
    out = np.zeros((len(tiled), k), dtype=np.int64)
    for b, row in enumerate(tiled):
        top = np.array([n for n, _ in Counter(row.tolist()).most_common(k)], dtype=np.int64)
        if len(top) < k:
            top = np.append(top, rng.choice(top, k - len(top), replace=True))
        out[b] = top
    return out


def mask_context(context: np.ndarray, mask_len: int, n_nodes: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT 80/10/10 masking of ``mask_len`` positions per row (module docstring).

    Returns
    -------
    masked : ndarray [B, k]
        The context with [MASK] (:data:`MASK`), kept or random nodes at the chosen positions.
    positions : ndarray [B, mask_len]
        Chosen positions (sorted) in ``0..k-1``.
    targets : ndarray [B, mask_len]
        The original nodes at those positions.
    """
    b, k = context.shape
    if not 1 <= mask_len <= k:
        raise ValueError(f"mask length {mask_len}: expected in 1..{k}")
    positions = np.sort(np.argsort(rng.random((b, k)), axis=1)[:, :mask_len], axis=1)
    rows = np.arange(b)[:, None]
    targets = context[rows, positions]
    u, v = rng.random((b, mask_len)), rng.random((b, mask_len))
    random_nodes = rng.integers(0, n_nodes, size=(b, mask_len))
    new = np.where(u < 0.8, MASK, np.where(v < 0.5, targets, random_nodes))
    masked = context.copy()
    masked[rows, positions] = new
    return masked, positions, targets
