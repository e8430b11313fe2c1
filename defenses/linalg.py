"""Linear-algebra helpers shared by the aggregation rules.

Every vector-wise rule (Krum, Bulyan, geometric median, FLAME, FoolsGold, ...) works on the
clients' updates as vectors: it needs their float64 Gram matrix, pairwise squared distances,
norms, inner products with a reference vector, and linear combinations. Item-embedding
updates are row-sparse (each client touches few item rows), so the Gram matrix of such a table
is accumulated over the touched rows only (:func:`row_sparse_gram`), and the item-wise rules
iterate over padded blocks of rows grouped by how many clients touch them (:func:`row_blocks`).

All helpers take the stacked updates of the defense contract (:data:`defenses.base.Stacked`,
``param_name -> Tensor[n_clients, *param_shape]``) or one ``[n, ...]`` tensor, and are pure
tensor math. An item table may also come as a :class:`fedrec.rowsparse.RowSparse` (the
clients' touched rows only); :func:`gram`, :func:`client_sq_norms`, :func:`client_dots` and
:func:`combine` then work on its stored rows without densifying it, and
:func:`sparse_row_blocks` yields the same blocks as :func:`row_blocks` does on its dense form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from fedrec.rowsparse import RowSparse

from .base import Stacked

#: Columns processed per block when accumulating the float64 Gram matrix (bounds the
#: temporary float64 copy to ``n * _GRAM_BLOCK`` elements).
_GRAM_BLOCK = 32_768

#: Elements per padded block ``[rows, max_count, max(row_dim, max_count)]`` in
#: :func:`row_blocks`.
BLOCK_ELEMENTS = 1 << 21

#: A param with a row dimension takes the row-sparse Gram path when fewer than this fraction
#: of its (client, row) pairs are nonzero.
SPARSE_ROW_DENSITY = 0.25


def flatten(stacked: Stacked) -> tuple[Tensor, Callable[[Tensor], dict[str, Tensor]]]:
    """Concatenate all parameters of every client into one matrix.

    Parameters
    ----------
    stacked : Mapping[str, Tensor]
        ``param_name -> Tensor[n, *param_shape]``.

    Returns
    -------
    flat : Tensor
        ``[n, D]`` with ``D`` the total number of parameters (key order of ``stacked``).
    unflatten : Callable[[Tensor], dict[str, Tensor]]
        Maps a ``[..., D]`` tensor back to ``param_name -> Tensor[..., *param_shape]``.
    """
    keys = list(stacked)
    n = next(iter(stacked.values())).shape[0]
    shapes = [tuple(stacked[k].shape[1:]) for k in keys]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    flat = torch.cat([stacked[k].reshape(n, -1) for k in keys], dim=1)

    def unflatten(vec: Tensor) -> dict[str, Tensor]:
        lead = tuple(vec.shape[:-1])
        out: dict[str, Tensor] = {}
        for key, shape, piece in zip(keys, shapes, vec.split(sizes, dim=-1), strict=True):
            out[key] = piece.reshape(*lead, *shape)
        return out

    return flat, unflatten


def row_blocks(touched: Tensor, row_dim: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Group the rows of a row-sparse table by how many clients touch them.

    Parameters
    ----------
    touched : Tensor
        ``bool[n, n_rows]``.
    row_dim : int
        Elements per row (sizes the blocks).

    Yields
    ------
    rows : Tensor
        ``int64[B]`` row indices (rows touched by nobody are skipped).
    members : Tensor
        ``int64[B, C]``: ``members[b, p]`` is the ``p``-th client (in index order) touching
        ``rows[b]``; positions ``p >= counts[b]`` are padding (arbitrary client indices).
    counts : Tensor
        ``int64[B]`` number of touching clients per row.

    Rows are bucketed by ``ceil(log2(count))`` and each bucket is cut into blocks of at most
    :data:`BLOCK_ELEMENTS` elements of ``[B, C, max(row_dim, C)]``, so padding stays below 2x.
    """
    counts = touched.sum(dim=0)
    active = torch.nonzero(counts > 0).reshape(-1)
    if active.numel() == 0:
        return
    act_counts = counts[active]
    order = torch.sort(act_counts, stable=True).indices
    active, act_counts = active[order], act_counts[order]
    members_all = torch.sort(
        touched[:, active].T.to(torch.int8), dim=1, descending=True, stable=True
    ).indices
    bucket = torch.ceil(torch.log2(act_counts.double())).long()
    for b in torch.unique(bucket).tolist():
        sel = torch.nonzero(bucket == b).reshape(-1)
        cm = int(act_counts[sel].max())
        per = max(1, BLOCK_ELEMENTS // (cm * max(row_dim, cm)))
        for start in range(0, sel.numel(), per):
            part = sel[start : start + per]
            yield active[part], members_all[part, :cm], act_counts[part]


def sparse_row_blocks(x: RowSparse) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """:func:`row_blocks` over the stored rows of a row-sparse stack.

    The blocks, their order and their members are those :func:`row_blocks` yields for
    ``x.to_dense()``; the work and memory are ``O(n * U)`` for the ``U`` rows touched by anyone.

    Parameters
    ----------
    x : RowSparse
        ``n`` clients' rows of an ``[n_rows, *row_shape]`` table.

    Yields
    ------
    rows : Tensor
        ``int64[B]`` table row ids.
    members : Tensor
        ``int64[B, C]`` client indices (see :func:`row_blocks`).
    counts : Tensor
        ``int64[B]`` touching clients per row.
    entries : Tensor
        ``int64[B, C]``: index into ``x.rows`` of ``members[b, p]``'s row ``rows[b]`` (0 on
        padding positions ``p >= counts[b]``).
    """
    uids, inv = x.touched_union()
    touched = torch.zeros(x.n, uids.numel(), dtype=torch.bool)
    touched[x.clients, inv] = True
    pos = torch.zeros(x.n, uids.numel(), dtype=torch.long)
    pos[x.clients, inv] = torch.arange(x.nnz)
    for cols, members, counts in row_blocks(touched, x.row_dim):
        valid = torch.arange(members.shape[1])[None, :] < counts[:, None]
        entries = torch.where(valid, pos[members, cols[:, None]], torch.zeros((), dtype=torch.long))
        yield uids[cols], members, counts, entries


def sparse_block_values(x: RowSparse, entries: Tensor, counts: Tensor) -> Tensor:
    """``[B, C, row_dim]`` values of a block from :func:`sparse_row_blocks` (zeros on padding,
    as the dense table holds there)."""
    valid = torch.arange(entries.shape[1])[None, :] < counts[:, None]
    values = x.flat_rows()[entries]
    return torch.where(valid[:, :, None], values, torch.zeros((), dtype=values.dtype))


def touched_rows(table: Tensor) -> Tensor:
    """``bool[n, n_rows]``: client ``i`` touches row ``r`` iff that row has a nonzero entry."""
    n, rows = table.shape[:2]
    # the L1 norm of a finite row is 0 iff every entry is 0; it is several times faster than
    # (x != 0).any() on CPU
    return torch.linalg.vector_norm(table.reshape(n, rows, -1), ord=1, dim=2) > 0


def row_sparse_gram(table: Tensor | RowSparse, touched: Tensor | None = None) -> Tensor:
    """Float64 Gram matrix of a table whose clients touch few rows, without densifying.

    ``G = sum_r X_r X_r^T`` where ``X_r`` holds row ``r`` of the clients touching it; the cost
    is ``sum_r count_r^2 * row_dim`` instead of ``n^2 * n_rows * row_dim``.

    Parameters
    ----------
    table : Tensor | RowSparse
        ``[n, n_rows, *row_shape]`` (a :class:`RowSparse` is used as stored).
    touched : Tensor | None
        ``bool[n, n_rows]`` (computed if omitted; ignored for a :class:`RowSparse`).

    Returns
    -------
    Tensor
        ``float64[n, n]``.
    """
    if isinstance(table, RowSparse):
        return _row_sparse_gram_stored(table)
    n, n_rows = table.shape[:2]
    x = table.reshape(n, n_rows, -1)
    if touched is None:
        touched = touched_rows(table)
    g = torch.zeros(n, n, dtype=torch.float64)
    for rows, members, counts in row_blocks(touched, x.shape[2]):
        cm = members.shape[1]
        valid = torch.arange(cm)[None, :] < counts[:, None]
        v = x[members, rows[:, None]].to(torch.float64) * valid[:, :, None]
        gb = torch.bmm(v, v.transpose(1, 2))
        ii = members[:, :, None].expand(-1, cm, cm).reshape(-1)
        jj = members[:, None, :].expand(-1, cm, cm).reshape(-1)
        g.index_put_((ii, jj), gb.reshape(-1), accumulate=True)
    return g


def _row_sparse_gram_stored(x: RowSparse) -> Tensor:
    """:func:`row_sparse_gram` of a :class:`RowSparse` (same blocks, same summation order)."""
    g = torch.zeros(x.n, x.n, dtype=torch.float64)
    for _, members, counts, entries in sparse_row_blocks(x):
        cm = members.shape[1]
        v = sparse_block_values(x, entries, counts).to(torch.float64)
        gb = torch.bmm(v, v.transpose(1, 2))
        ii = members[:, :, None].expand(-1, cm, cm).reshape(-1)
        jj = members[:, None, :].expand(-1, cm, cm).reshape(-1)
        g.index_put_((ii, jj), gb.reshape(-1), accumulate=True)
    return g


def gram(stacked: Stacked | Tensor, center: bool = False) -> Tensor:
    """Float64 Gram matrix ``G[i, j] = <x_i, x_j>`` over the concatenation of all params.

    Dense params are accumulated block-wise in float64 (no ``[n, D]`` float64 copy). A param
    with a row dimension whose (client, row) pairs are less than :data:`SPARSE_ROW_DENSITY`
    nonzero (an item-embedding update) goes through :func:`row_sparse_gram`.

    Parameters
    ----------
    stacked : Mapping[str, Tensor] | Tensor
        Stacked updates or an ``[n, D]`` matrix.
    center : bool (default: False)
        Subtract the (unweighted) mean update from every *dense* param first (row-sparse
        params are left as they are). The result is the Gram matrix of ``x_i - t`` for one
        fixed vector ``t``, so distances, and anything computed from convex combinations of
        the updates, are unchanged, while the cancellation error shrinks when the updates
        share a large common component. Cosines need ``center=False``.

    Returns
    -------
    Tensor
        ``float64[n, n]``.
    """
    tensors = [stacked] if isinstance(stacked, Tensor) else list(stacked.values())
    n = tensors[0].shape[0]
    g = torch.zeros(n, n, dtype=torch.float64)
    for t in tensors:
        if isinstance(t, RowSparse):  # already row-sparse: its stored rows only, never centred
            g += _row_sparse_gram_stored(t)
            continue
        if t.dim() >= 3 and t.shape[1] >= 8:
            touched = touched_rows(t)
            if float(touched.double().mean()) < SPARSE_ROW_DENSITY:
                g += row_sparse_gram(t, touched)
                continue
        mat = t.reshape(n, -1)
        for start in range(0, mat.shape[1], _GRAM_BLOCK):
            block = mat[:, start : start + _GRAM_BLOCK].to(torch.float64)
            if center:
                block = block - block.mean(dim=0, keepdim=True)
            g.addmm_(block, block.T)
    return g


def sq_dists_from_gram(g: Tensor) -> Tensor:
    """Pairwise squared L2 distances ``|x_i|^2 + |x_j|^2 - 2<x_i, x_j>``, clamped at 0.

    The diagonal is set to exactly 0.
    """
    sq = torch.diagonal(g)
    d = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    d.fill_diagonal_(0.0)
    return d


def pairwise_sq_dists(flat: Tensor) -> Tensor:
    """Pairwise squared L2 distances of the rows of ``flat`` (``[n, D]``), float64 ``[n, n]``.

    Uses the centred Gram matrix (see :func:`gram`).
    """
    return sq_dists_from_gram(gram(flat, center=True))


def client_sq_norms(stacked: Stacked, keys: list[str] | tuple[str, ...] | None = None) -> Tensor:
    """Squared L2 norm of each client's update over ``keys`` (default: all), float64 ``[n]``.

    Each param's norm is computed in its own dtype (``torch.linalg.vector_norm``), then
    squared and summed in float64 (a :class:`RowSparse` table: its stored rows, in float64).
    """
    keys = list(stacked) if keys is None else list(keys)
    n = stacked[keys[0]].shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    for k in keys:
        x = stacked[k]
        if isinstance(x, RowSparse):
            total += x.sq_norms()
            continue
        total += torch.linalg.vector_norm(x.reshape(n, -1), dim=1).double().pow(2)
    return total


def client_dots(x: Tensor, vec: Tensor) -> Tensor:
    """Inner products ``<x_i, vec>`` of every client's parameter with ``vec``, float64 ``[n]``.

    Parameters
    ----------
    x : Tensor | RowSparse
        ``[n, *shape]`` one stacked parameter.
    vec : Tensor
        ``[*shape]`` or flat vector of the same number of elements.
    """
    if isinstance(x, RowSparse):
        return x.dots(vec)
    n = x.shape[0]
    return (x.reshape(n, -1) @ vec.reshape(-1).to(x.dtype)).double()


def combine(stacked: Stacked, coef: Tensor, keys: list[str] | tuple[str, ...] | None = None
            ) -> dict[str, Tensor]:
    """``sum_i coef[i] * stacked[k][i]`` for each key (a matrix-vector product per param).

    Runs in the dtype of the updates and returns that dtype.
    """
    keys = list(stacked) if keys is None else list(keys)
    out: dict[str, Tensor] = {}
    for k in keys:
        x = stacked[k]
        if isinstance(x, RowSparse):
            out[k] = x.combine(coef)
            continue
        n = x.shape[0]
        out[k] = (coef.to(x.dtype) @ x.reshape(n, -1)).reshape(x.shape[1:])
    return out
