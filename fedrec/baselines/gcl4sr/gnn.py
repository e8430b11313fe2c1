"""Graph-convolution propagation on sampled neighbourhood blocks (used by GCL4SR's GNN).

These are the standard layers GCL4SR builds on, not GCL4SR's own method:

* :func:`weighted_gcn`: the propagation of a graph convolutional network, Kipf & Welling,
  "Semi-Supervised Classification with Graph Convolutional Networks", ICLR 2017
  (``D^-1/2 (A + I) D^-1/2 X``, here with weighted edges on a sampled block).
* :func:`mean_aggregate`: the mean aggregator of GraphSAGE, Hamilton, Ying & Leskovec,
  "Inductive Representation Learning on Large Graphs", NeurIPS 2017.

Both return the propagated features before the layer's linear map, which the model owns. The
sparse products go through :func:`spmm`, which builds CSR matrices for the forward and the
backward pass.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["mean_aggregate", "spmm", "weighted_gcn"]


def _stable_order(keys: np.ndarray, n: int) -> np.ndarray | None:
    """Stable sorting permutation of integer ``keys`` in ``[0, n)`` (None if already sorted)."""
    if len(keys) < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return None
    if n <= np.iinfo(np.int16).max:  # numpy sorts <= 16-bit integers stably by radix sort
        return np.argsort(keys.astype(np.int16), kind="stable")
    return np.argsort(keys, kind="stable")


def _csr(rows: np.ndarray, cols: np.ndarray, vals: torch.Tensor,
         shape: tuple[int, int]) -> torch.Tensor:
    order = _stable_order(rows, shape[0])
    if order is not None:
        cols, vals = cols[order], vals[torch.from_numpy(order)]
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols), vals,
                                       shape, check_invariants=False)


class _SpMM(torch.autograd.Function):
    """``A @ x`` with a constant sparse ``A``; the backward uses a prebuilt CSR of ``Aᵀ``."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, ctx.a_t @ grad


def spmm(rows: np.ndarray, cols: np.ndarray, vals: torch.Tensor, shape: tuple[int, int],
         x: torch.Tensor) -> torch.Tensor:
    """``A @ x`` for ``A`` given as COO triplets (duplicates summed; no gradient w.r.t. ``vals``).

    Both ``A`` and ``Aᵀ`` are built as CSR, which makes forward and backward plain CSR
    products (several times faster on CPU than autograd through a COO product).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    vals = vals.detach().to(x.dtype).cpu()
    a = _csr(rows, cols, vals, shape)
    if not x.requires_grad:
        return a.to(x.device) @ x
    a_t = _csr(cols, rows, vals, (shape[1], shape[0]))
    return _SpMM.apply(a.to(x.device), a_t.to(x.device), x)


def weighted_gcn(x: torch.Tensor, out_rows: np.ndarray, edge_row: np.ndarray,
                 edge_col: np.ndarray, weight: np.ndarray) -> torch.Tensor:
    """GCN propagation with weighted edges and self-loops on a sampled block (before ``W``).

    ``out[r] = x_v / deg_v + Σ_e w_e x_{col(e)} / sqrt(deg_{col(e)} deg_v)`` with
    ``v = out_rows[r]`` and ``deg = 1 + Σ`` incoming sampled weights (1 for nodes of ``x``
    that receive no edge), i.e. Kipf & Welling's ``D^-1/2 (A + I) D^-1/2`` on the block.

    Parameters
    ----------
    x : torch.Tensor
        ``[n, d]`` node features.
    out_rows : numpy.ndarray
        ``[m]`` indices into ``x`` of the nodes to compute.
    edge_row, edge_col : numpy.ndarray
        ``[E]`` edge destination (index into ``out_rows``) and source (index into ``x``).
    weight : numpy.ndarray
        ``[E]`` edge weights.
    """
    n, m = x.shape[0], len(out_rows)
    dst = out_rows[edge_row]
    w = weight.astype(np.float64)
    deg = 1.0 + np.bincount(dst, weights=w, minlength=n)
    norm = torch.from_numpy(w / np.sqrt(deg[edge_col] * deg[dst]))
    self_w = torch.from_numpy(1.0 / deg[out_rows]).to(x.dtype).to(x.device)
    idx = torch.from_numpy(np.ascontiguousarray(out_rows)).to(x.device)
    return spmm(edge_row, edge_col, norm, (m, n), x) + x[idx] * self_w.unsqueeze(-1)


def mean_aggregate(x: torch.Tensor, n_out: int, edge_row: np.ndarray,
                   edge_col: np.ndarray) -> torch.Tensor:
    """Mean of ``x[edge_col]`` over the edges of every output row ``[n_out, d]`` (0 if none)."""
    cnt = np.bincount(edge_row, minlength=n_out).astype(np.float64)
    return spmm(edge_row, edge_col, torch.from_numpy(1.0 / cnt[edge_row]), (n_out, x.shape[0]), x)
