"""Weighted item transition graph (WITG) and uniform neighbour sampling for GCL4SR.

Zhang, Liu, Xu, Xiong, Lei, He, Cui & Miao, "Enhancing Sequential Recommendation with Graph
Contrastive Learning", IJCAI 2022 (arXiv 2205.14837), Section 3.2 (Eq. 1) and 3.3.

WITG
    Built from the *training* part of every user's sequence. For every hop distance
    ``k = 1..window`` and every position ``t``, the pair ``(v_t, v_{t+k})`` adds ``1/k`` to the
    weight of the undirected edge between the two items (both directions are accumulated, so a
    repeated item within the window gets a self-loop of ``2/k``, as in the authors' code).
    Weights accumulate over all users. With ``renorm`` (paper and code default) every edge is
    re-weighted ``ŵ(i, j) = w(i, j) * (1/deg(i) + 1/deg(j))`` where ``deg`` counts *distinct*
    neighbours (unweighted). ``scale`` (code option, off by default) first divides each row by its
    weight sum. Node 0 (padding) has no edges. Construction is vectorised (one ``np.unique`` over
    all transitions).

Sampling
    GraphSAGE-style uniform sampling *without replacement* of at most ``size`` neighbours per
    node (edge weights are ignored by the sampler and kept on the sampled edges). Vectorised over
    nodes with Floyd's subset algorithm (``size`` vectorised steps); randomness is counter-based
    (:mod:`fedrec.data.random`): a node's sample depends only on its stream key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.data.random import stream_key, uniform_floats


@dataclass(frozen=True)
class WITG:
    """A symmetric weighted item graph in CSR form (rows sorted by neighbour id).

    Attributes
    ----------
    indptr : numpy.ndarray
        ``[n_nodes + 1]`` int64 row pointers.
    indices : numpy.ndarray
        ``[nnz]`` int64 neighbour ids.
    weights : numpy.ndarray
        ``[nnz]`` float32 edge weights (renormalised when built with ``renorm=True``).
    n_nodes : int
        ``n_items + 1`` (node 0 is padding).
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    n_nodes: int

    @property
    def nnz(self) -> int:
        """Number of stored (directed) edges; each undirected edge is stored twice."""
        return int(len(self.indices))

    def degree(self) -> np.ndarray:
        """Number of distinct neighbours of every node ``[n_nodes]``."""
        return np.diff(self.indptr)

    def dense(self) -> np.ndarray:
        """Dense ``[n_nodes, n_nodes]`` float64 weight matrix (small graphs / tests only)."""
        out = np.zeros((self.n_nodes, self.n_nodes))
        rows = np.repeat(np.arange(self.n_nodes), self.degree())
        out[rows, self.indices] = self.weights
        return out


def transition_counts(
    seqs: Sequence[np.ndarray], n_items: int, window: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accumulated raw WITG weights as a sorted, duplicate-free COO list.

    Parameters
    ----------
    seqs : sequence of numpy.ndarray
        Training item sequences (ids ``1..n_items``).
    n_items : int
        Item vocabulary size.
    window : int
        Largest hop distance ``k`` (the paper uses 3).

    Returns
    -------
    rows, cols : numpy.ndarray
        int64 endpoints, sorted by ``(row, col)``; both directions are present.
    weights : numpy.ndarray
        float64 ``Σ 1/k`` over all occurrences.

    Raises
    ------
    ValueError
        If ``window < 1`` or an item id is outside ``1..n_items``.
    """
    if window < 1:
        raise ValueError(f"window={window}: expected >= 1")
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    if len(flat) and (flat.min() < 1 or flat.max() > n_items):
        raise ValueError(f"item ids: expected values in 1..{n_items} "
                         f"(got {flat.min()}..{flat.max()})")
    seg = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    src, dst, wts = [], [], []
    for k in range(1, window + 1):
        if len(flat) <= k:
            break
        same = seg[:-k] == seg[k:]
        a, b = flat[:-k][same], flat[k:][same]
        src += [a, b]
        dst += [b, a]
        wts += [np.full(2 * len(a), 1.0 / k)]
    if not src:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    a, b, w = np.concatenate(src), np.concatenate(dst), np.concatenate(wts)
    n = np.int64(n_items + 1)
    keys, inv = np.unique(a * n + b, return_inverse=True)
    return keys // n, keys % n, np.bincount(inv.reshape(-1), weights=w, minlength=len(keys))


def build_witg(
    seqs: Sequence[np.ndarray],
    n_items: int,
    window: int = 3,
    renorm: bool = True,
    scale: bool = False,
) -> WITG:
    """Build the weighted item transition graph (module docstring) from training sequences.

    Parameters
    ----------
    seqs : sequence of numpy.ndarray
        Training sequences (validation/test items must already be removed).
    n_items : int
        Item vocabulary size; the graph has ``n_items + 1`` nodes.
    window : int
        Largest hop distance (paper: 3).
    renorm : bool
        Apply ``ŵ(i, j) = w(i, j) (1/deg(i) + 1/deg(j))`` (paper Eq. 1 and code default).
    scale : bool
        Divide each row by its weight sum before ``renorm`` (code option ``use_scale``).

    Returns
    -------
    WITG
        The graph.
    """
    rows, cols, w = transition_counts(seqs, n_items, window)
    n_nodes = n_items + 1
    deg = np.bincount(rows, minlength=n_nodes).astype(np.float64)
    if scale:
        row_sum = np.bincount(rows, weights=w, minlength=n_nodes)
        w = w / row_sum[rows]
    if renorm:
        w = w * (1.0 / deg[rows] + 1.0 / deg[cols])
    indptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(deg.astype(np.int64), out=indptr[1:])
    return WITG(indptr, cols.astype(np.int64), w.astype(np.float32), n_nodes)


def sample_neighbors(graph: WITG, nodes: np.ndarray, size: int, keys: np.ndarray) -> np.ndarray:
    """Uniformly sample at most ``size`` distinct neighbours of every node.

    Nodes with ``deg <= size`` keep all their neighbours; for the others a uniformly random
    ``size``-subset is drawn with Floyd's algorithm, vectorised over nodes. The draw of node
    ``nodes[r]`` uses only the stream ``keys[r]``.

    Parameters
    ----------
    graph : WITG
        The graph.
    nodes : numpy.ndarray
        ``[n]`` int64 node ids.
    size : int
        Neighbours per node (the paper's N).
    keys : numpy.ndarray
        ``[n]`` uint64 stream keys.

    Returns
    -------
    numpy.ndarray
        ``[n, size]`` int64 positions into ``graph.indices`` / ``graph.weights`` of the sampled
        edges, ``-1`` in unused slots (used slots come first).

    Raises
    ------
    ValueError
        If ``size < 1`` or the lengths of ``nodes`` and ``keys`` differ.
    """
    if size < 1:
        raise ValueError(f"sample size={size}: expected >= 1")
    nodes = np.asarray(nodes, dtype=np.int64)
    if len(nodes) != len(np.asarray(keys).reshape(-1)):
        raise ValueError("keys: expected one stream key per node")
    start = graph.indptr[nodes]
    deg = graph.indptr[nodes + 1] - start
    slot = np.arange(size, dtype=np.int64)
    off = np.where(slot[None, :] < deg[:, None], slot[None, :], -1)
    big = np.flatnonzero(deg > size)
    if len(big):
        d = deg[big]
        u = uniform_floats(np.asarray(keys, dtype=np.uint64).reshape(-1)[big], (size,))
        chosen = np.empty((len(big), size), dtype=np.int64)
        for i in range(size):  # Floyd: for j = d-size+i, pick t in [0, j]; on collision take j
            j = d - size + i
            t = np.minimum((u[:, i] * (j + 1)).astype(np.int64), j)
            dup = (chosen[:, :i] == t[:, None]).any(axis=1) if i else np.zeros(len(big), bool)
            chosen[:, i] = np.where(dup, j, t)
        off[big] = chosen
    return np.where(off >= 0, start[:, None] + off, -1)


def node_keys(base: np.uint64 | int, nodes: np.ndarray) -> np.ndarray:
    """Per-node stream keys ``stream_key(base, node)``."""
    return stream_key(np.uint64(base), np.asarray(nodes, dtype=np.int64))
