"""Row-sparse stacks: the item-table updates of many clients as (client, row id, row values).

A client's update to an item embedding table ``[n_rows, *row_shape]`` is nonzero only in the
rows of the items it touched (its history, its targets, its sampled negatives). Stacking the
dense tables of ``n`` clients costs ``n * n_rows * row_dim`` floats (256 clients of a
10^6-item, d-64 table: 65 GB); :class:`RowSparse` keeps only the touched rows:

* ``clients int64[nnz]``: the client (0..n-1) each stored row belongs to, non-decreasing;
* ``ids int64[nnz]``: the row index, increasing within a client;
* ``rows [nnz, *row_shape]``: the values; no stored row is all zeros.

It stands for the dense tensor ``[n, n_rows, *row_shape]`` whose unstored rows are zero, and
offers the algebra the aggregation rules need without densifying: per-client squared norms and
inner products with a dense vector, linear combinations (one dense ``[n_rows, *row_shape]``
result), client selection, finiteness, the compact form over the union of touched rows (for
coordinate-wise rules), and :meth:`RowSparse.to_dense` for rules that need every coordinate.
Pairwise Gram matrices are in :mod:`defenses.linalg` (they share the row-block grouping of the
item-wise rules). Memory is ``O(nnz * row_dim)``.

In a Flower message one client's table travels as two arrays, ``<name>::row_ids`` (int64
``[k]``, increasing) and ``<name>::rows`` (``[k, *row_shape]``): :func:`encode_rows` /
:func:`decode_rows`. The tables of several clients (a Flower node holding a partition of the
users) travel as one stack of three arrays, ``<name>::clients`` (int64 ``[nnz]``,
non-decreasing), ``<name>::row_ids`` and ``<name>::rows``: :func:`encode_row_stack` /
:func:`decode_row_stack`.

"Touched" has one meaning everywhere: a row is stored iff it has a nonzero entry, exactly the
rows :func:`defenses.linalg.touched_rows` finds in the dense tensor, so every rule gives the
same result on a stack and on its row-sparse form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ROW_CLIENTS", "ROW_IDS", "ROW_VALUES", "RowSparse", "decode_row_stack", "decode_rows",
           "densify", "encode_row_stack", "encode_rows", "is_row_sparse"]

#: Suffix of the array holding a row-sparse table's row ids in a message.
ROW_IDS = "::row_ids"
#: Suffix of the array holding a row-sparse table's rows in a message.
ROW_VALUES = "::rows"
#: Suffix of the array holding, in a message carrying several clients' tables, the client
#: (0..n-1) of each stored row.
ROW_CLIENTS = "::clients"


def _nonzero_rows(rows: Tensor) -> Tensor:
    """``bool[nnz]``: which rows hold a nonzero entry (L1 norm > 0; NaN rows count as nonzero)."""
    flat = rows.reshape(rows.shape[0], int(torch.Size(rows.shape[1:]).numel()))
    l1 = torch.linalg.vector_norm(flat, ord=1, dim=1)
    return (l1 > 0) | torch.isnan(l1)


@dataclass(frozen=True, eq=False)
class RowSparse:
    """``n`` clients' updates of one ``[n_rows, *row_shape]`` table, stored by touched row.

    Build with :meth:`from_dense` or :meth:`build` (which sort and drop all-zero rows); the
    constructor trusts its arguments.

    Parameters
    ----------
    clients : Tensor
        ``int64[nnz]`` owning client of each stored row, non-decreasing.
    ids : Tensor
        ``int64[nnz]`` row index in ``[0, n_rows)``, increasing within a client.
    rows : Tensor
        ``[nnz, *row_shape]`` floating values.
    n : int
        Number of clients.
    n_rows : int
        Rows of the table.
    """

    clients: Tensor
    ids: Tensor
    rows: Tensor
    n: int
    n_rows: int

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, clients: Tensor, ids: Tensor, rows: Tensor, n: int, n_rows: int) -> RowSparse:
        """Sort entries by (client, id) and drop all-zero rows.

        Parameters
        ----------
        clients, ids : Tensor
            ``int64[m]`` client and row of each entry; (client, id) pairs must be distinct.
        rows : Tensor
            ``[m, *row_shape]``.
        n, n_rows : int
            Clients and table rows.

        Returns
        -------
        RowSparse

        Raises
        ------
        ValueError
            If an id is out of range or a client index is outside ``[0, n)``.
        """
        clients = clients.reshape(-1).long()
        ids = ids.reshape(-1).long()
        if clients.numel() != ids.numel() or rows.shape[0] != ids.numel():
            raise ValueError("RowSparse.build: clients, ids and rows have different lengths")
        if ids.numel():
            if int(ids.min()) < 0 or int(ids.max()) >= n_rows:
                raise ValueError(f"RowSparse.build: row ids must lie in [0, {n_rows})")
            if int(clients.min()) < 0 or int(clients.max()) >= n:
                raise ValueError(f"RowSparse.build: client indices must lie in [0, {n})")
        keep = _nonzero_rows(rows)
        clients, ids, rows = clients[keep], ids[keep], rows[keep]
        order = torch.argsort(clients * n_rows + ids, stable=True)
        return cls(clients[order], ids[order], rows[order], int(n), int(n_rows))

    @classmethod
    def from_dense(cls, x: Tensor, touched: Tensor | None = None) -> RowSparse:
        """The row-sparse form of a dense stack ``[n, n_rows, *row_shape]``; ``touched``
        (``bool[n, n_rows]``, optional) is its already computed mask of non-zero rows."""
        if x.dim() < 2:
            raise ValueError(
                f"RowSparse.from_dense: expected [n, n_rows, ...], got {tuple(x.shape)}")
        n, n_rows = x.shape[:2]
        if touched is None:
            flat = x.reshape(n, n_rows, int(torch.Size(x.shape[2:]).numel()))
            l1 = torch.linalg.vector_norm(flat, ord=1, dim=2)
            touched = (l1 > 0) | torch.isnan(l1)
        clients, ids = torch.nonzero(touched, as_tuple=True)  # row-major: sorted by (client, id)
        return cls(clients, ids, x[clients, ids].clone(), int(n), int(n_rows))

    @classmethod
    def concat(cls, parts: Sequence[RowSparse]) -> RowSparse:
        """Stack the clients of several parts (in order) into one."""
        if not parts:
            raise ValueError("RowSparse.concat: no parts")
        n_rows = parts[0].n_rows
        if any(p.n_rows != n_rows or p.row_shape != parts[0].row_shape for p in parts):
            raise ValueError("RowSparse.concat: parts have different table shapes")
        offsets = [0]
        for p in parts:
            offsets.append(offsets[-1] + p.n)
        clients = torch.cat([p.clients + off for p, off in zip(parts, offsets, strict=False)])
        return cls(clients, torch.cat([p.ids for p in parts]), torch.cat([p.rows for p in parts]),
                   offsets[-1], n_rows)

    # ------------------------------------------------------------------ tensor-like surface
    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row."""
        return tuple(self.rows.shape[1:])

    @property
    def row_dim(self) -> int:
        """Elements per row."""
        return int(torch.Size(self.row_shape).numel())

    @property
    def shape(self) -> torch.Size:
        """Shape of the dense tensor this stands for: ``(n, n_rows, *row_shape)``."""
        return torch.Size((self.n, self.n_rows, *self.row_shape))

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the values."""
        return self.rows.dtype

    @property
    def nnz(self) -> int:
        """Stored rows (over all clients)."""
        return int(self.ids.numel())

    def dim(self) -> int:
        """Number of dimensions of the dense tensor."""
        return 2 + len(self.row_shape)

    def is_floating_point(self) -> bool:
        """Whether the values are floating point."""
        return self.rows.is_floating_point()

    def to(self, dtype: torch.dtype) -> RowSparse:
        """Cast the values."""
        return RowSparse(self.clients, self.ids, self.rows.to(dtype), self.n, self.n_rows)

    def flat_rows(self) -> Tensor:
        """Values as ``[nnz, row_dim]``."""
        return self.rows.reshape(self.nnz, self.row_dim)

    def counts(self) -> Tensor:
        """``int64[n]`` stored rows per client."""
        return torch.bincount(self.clients, minlength=self.n)

    # ------------------------------------------------------------------ conversion
    def to_dense(self) -> Tensor:
        """The dense tensor ``[n, n_rows, *row_shape]`` (zeros outside the stored rows)."""
        out = torch.zeros((self.n, self.n_rows, *self.row_shape), dtype=self.dtype)
        out[self.clients, self.ids] = self.rows
        return out

    def client(self, i: int) -> Tensor:
        """Client ``i``'s dense table ``[n_rows, *row_shape]``."""
        if not -self.n <= i < self.n:
            raise IndexError(f"RowSparse.client: index {i} out of range for {self.n} clients")
        i = i % self.n
        sel = self.clients == i
        out = torch.zeros((self.n_rows, *self.row_shape), dtype=self.dtype)
        out[self.ids[sel]] = self.rows[sel]
        return out

    def select(self, index: Tensor) -> RowSparse:
        """The clients ``index`` (a ``bool[n]`` mask or an ``int64`` index, possibly reordering)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = torch.nonzero(index).reshape(-1)
        index = index.reshape(-1).long()
        counts = self.counts()
        starts = torch.cumsum(counts, 0) - counts
        c = counts[index]
        new_clients = torch.repeat_interleave(torch.arange(index.numel()), c)
        # entry e of new client j is old entry starts[index[j]] + (e - first entry of j)
        first = torch.cumsum(c, 0) - c
        pos = torch.arange(int(c.sum())) - torch.repeat_interleave(first, c)
        old = torch.repeat_interleave(starts[index], c) + pos
        return RowSparse(new_clients, self.ids[old], self.rows[old], int(index.numel()),
                         self.n_rows)

    def __getitem__(self, index: int | Tensor) -> Tensor | RowSparse:
        """``x[i]``: client ``i``'s dense table; ``x[mask]`` / ``x[idx]``: :meth:`select`."""
        if isinstance(index, int):
            return self.client(index)
        return self.select(index)

    def touched_union(self) -> tuple[Tensor, Tensor]:
        """Rows touched by any client and each entry's position among them.

        Returns
        -------
        uids : Tensor
            ``int64[U]`` sorted row ids touched by at least one client.
        inv : Tensor
            ``int64[nnz]``: ``uids[inv[e]] == ids[e]``.
        """
        return torch.unique(self.ids, sorted=True, return_inverse=True)

    def compact(self) -> tuple[Tensor, Tensor]:
        """Dense values over the union of touched rows.

        Returns
        -------
        uids : Tensor
            ``int64[U]`` the touched rows.
        values : Tensor
            ``[n, U, *row_shape]``: ``values[i, u]`` is client ``i``'s row ``uids[u]`` (zero
            when it did not touch it). Every other row of the table is zero for all clients.
        """
        uids, inv = self.touched_union()
        out = torch.zeros((self.n, uids.numel(), *self.row_shape), dtype=self.dtype)
        out[self.clients, inv] = self.rows
        return uids, out

    def scatter_rows(self, uids: Tensor, values: Tensor) -> Tensor:
        """A dense ``[n_rows, *row_shape]`` table holding ``values [U, *row_shape]`` at ``uids``."""
        out = torch.zeros((self.n_rows, *self.row_shape), dtype=values.dtype)
        out[uids] = values
        return out

    # ------------------------------------------------------------------ algebra
    def finite(self) -> Tensor:
        """``bool[n]``: whether each client's rows are all finite."""
        bad = ~torch.isfinite(self.flat_rows()).all(dim=1)
        out = torch.ones(self.n, dtype=torch.bool)
        out[self.clients[bad]] = False
        return out

    def sq_norms(self) -> Tensor:
        """Squared L2 norm of each client's table, float64 ``[n]``."""
        per_row = self.flat_rows().to(torch.float64).pow(2).sum(dim=1)
        return torch.zeros(self.n, dtype=torch.float64).index_add_(0, self.clients, per_row)

    def row_sq_norms(self) -> Tensor:
        """Squared L2 norm of every stored row, float64 ``[nnz]``."""
        return self.flat_rows().to(torch.float64).pow(2).sum(dim=1)

    def dots(self, vec: Tensor) -> Tensor:
        """Inner products ``<x_i, vec>`` with a dense table ``vec`` (``[n_rows, *row_shape]``
        or flat), float64 ``[n]``."""
        table = vec.reshape(self.n_rows, self.row_dim).to(torch.float64)
        per_row = (self.flat_rows().to(torch.float64) * table[self.ids]).sum(dim=1)
        return torch.zeros(self.n, dtype=torch.float64).index_add_(0, self.clients, per_row)

    def combine(self, coef: Tensor) -> Tensor:
        """``sum_i coef[i] * x_i`` as a dense ``[n_rows, *row_shape]`` table (input dtype)."""
        c = coef.to(self.dtype)[self.clients]
        scaled = self.flat_rows() * c[:, None]
        out = torch.zeros(self.n_rows, self.row_dim, dtype=self.dtype)
        out.index_add_(0, self.ids, scaled)
        return out.reshape(self.n_rows, *self.row_shape)

    def scale_rows(self, factor: Tensor) -> RowSparse:
        """Multiply every stored row by ``factor[nnz]`` (a per-row scale)."""
        f = factor.to(self.dtype).reshape(-1, *([1] * len(self.row_shape)))
        return RowSparse(self.clients, self.ids, self.rows * f, self.n, self.n_rows)


def is_row_sparse(x: object) -> bool:
    """Whether ``x`` is a :class:`RowSparse`."""
    return isinstance(x, RowSparse)


def densify(stacked: dict[str, Tensor | RowSparse]) -> dict[str, Tensor]:
    """The same mapping with every :class:`RowSparse` value made dense."""
    return {k: (v.to_dense() if isinstance(v, RowSparse) else v) for k, v in stacked.items()}


def encode_rows(name: str, table: Tensor) -> dict[str, Tensor]:
    """One client's table ``[n_rows, *row_shape]`` as the two message arrays of its touched rows.

    Returns
    -------
    dict
        ``{name + ROW_IDS: int64[k], name + ROW_VALUES: [k, *row_shape]}``.
    """
    rs = RowSparse.from_dense(table.unsqueeze(0))
    return {name + ROW_IDS: rs.ids.contiguous(), name + ROW_VALUES: rs.rows.contiguous()}


def decode_rows(arrays: Mapping[str, Tensor], name: str, shape: Sequence[int]) -> RowSparse:
    """One client's row-sparse table (``n = 1``) from its message arrays.

    Parameters
    ----------
    arrays : Mapping[str, Tensor]
        The reply's arrays, holding ``name + ROW_IDS`` and ``name + ROW_VALUES``.
    name : str
        Parameter name.
    shape : sequence of int
        Expected dense shape ``(n_rows, *row_shape)``.

    Returns
    -------
    RowSparse

    Raises
    ------
    ValueError
        One line naming the array: missing, wrong dtype or shape, ids out of range or not
        strictly increasing, non-finite rows.
    """
    ids_key, rows_key = name + ROW_IDS, name + ROW_VALUES
    if ids_key not in arrays or rows_key not in arrays:
        raise ValueError(f"{name}: row-sparse update needs both {ids_key!r} and {rows_key!r}")
    ids, rows = arrays[ids_key], arrays[rows_key]
    n_rows, row_shape = int(shape[0]), tuple(int(s) for s in shape[1:])
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.dim() != 1:
        raise ValueError(f"{ids_key}: expected a 1-D int64 tensor")
    if not isinstance(rows, Tensor) or not rows.is_floating_point():
        raise ValueError(f"{rows_key}: expected a floating tensor")
    if tuple(rows.shape) != (ids.numel(), *row_shape):
        raise ValueError(f"{rows_key}: shape {tuple(rows.shape)}, expected "
                         f"{(ids.numel(), *row_shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_rows):
        raise ValueError(f"{ids_key}: row ids must lie in [0, {n_rows})")
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise ValueError(f"{ids_key}: row ids must be strictly increasing")
    if not bool(torch.isfinite(rows).all()):
        raise ValueError(f"{rows_key}: non-finite values")
    return RowSparse.build(torch.zeros_like(ids), ids, rows, 1, n_rows)


def encode_row_stack(name: str, stack: RowSparse) -> dict[str, Tensor]:
    """Several clients' tables (a :class:`RowSparse` of ``n`` clients) as three message arrays.

    Parameters
    ----------
    name : str
        Parameter name.
    stack : RowSparse
        The clients' tables (its entries sorted by client, then row id, as a RowSparse is).

    Returns
    -------
    dict
        ``{name + ROW_CLIENTS: int64[nnz], name + ROW_IDS: int64[nnz],
        name + ROW_VALUES: [nnz, *row_shape]}`` (on the CPU, contiguous). The number of
        clients is not sent: the receiver knows it from the message's client list.
    """
    return {name + ROW_CLIENTS: stack.clients.detach().cpu().long().contiguous(),
            name + ROW_IDS: stack.ids.detach().cpu().long().contiguous(),
            name + ROW_VALUES: stack.rows.detach().cpu().contiguous()}


def decode_row_stack(arrays: Mapping[str, Tensor], name: str, shape: Sequence[int],
                     n: int) -> RowSparse:
    """``n`` clients' row-sparse tables from the three message arrays of
    :func:`encode_row_stack` (untrusted input: every structural property is checked).

    Parameters
    ----------
    arrays : Mapping[str, Tensor]
        The message's arrays, holding ``name + ROW_CLIENTS``, ``name + ROW_IDS`` and
        ``name + ROW_VALUES``.
    name : str
        Parameter name.
    shape : sequence of int
        Expected dense shape of one client's table ``(n_rows, *row_shape)``.
    n : int
        Number of clients the message carries.

    Returns
    -------
    RowSparse
        ``n`` clients (all-zero rows dropped). Values are not checked for finiteness: a
        non-finite client is the per-client validation's business
        (:func:`strategies.validation.check_update`), so it does not take the others down.

    Raises
    ------
    ValueError
        One line naming the array: missing, wrong dtype or shape, lengths that differ, client
        indices outside ``[0, n)`` or decreasing, row ids outside ``[0, n_rows)`` or not
        strictly increasing within a client.
    """
    keys = (name + ROW_CLIENTS, name + ROW_IDS, name + ROW_VALUES)
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{name}: a row-sparse stack needs {list(keys)}; missing {missing}")
    clients, ids, rows = (arrays[k] for k in keys)
    n_rows, row_shape = int(shape[0]), tuple(int(s) for s in shape[1:])
    for key, value in zip(keys[:2], (clients, ids), strict=True):
        if not isinstance(value, Tensor) or value.dtype != torch.int64 or value.dim() != 1:
            raise ValueError(f"{key}: expected a 1-D int64 tensor")
    if not isinstance(rows, Tensor) or not rows.is_floating_point():
        raise ValueError(f"{keys[2]}: expected a floating tensor")
    if clients.numel() != ids.numel():
        raise ValueError(f"{keys[0]}: {clients.numel()} entries, {keys[1]} has {ids.numel()}")
    if tuple(rows.shape) != (ids.numel(), *row_shape):
        raise ValueError(f"{keys[2]}: shape {tuple(rows.shape)}, expected "
                         f"{(ids.numel(), *row_shape)}")
    if ids.numel():
        if int(clients.min()) < 0 or int(clients.max()) >= n:
            raise ValueError(f"{keys[0]}: client indices must lie in [0, {n})")
        if int(ids.min()) < 0 or int(ids.max()) >= n_rows:
            raise ValueError(f"{keys[1]}: row ids must lie in [0, {n_rows})")
        if ids.numel() > 1:
            step = clients[1:] - clients[:-1]
            if bool((step < 0).any()):
                raise ValueError(f"{keys[0]}: client indices must be non-decreasing")
            same = step == 0
            if bool((ids[1:][same] <= ids[:-1][same]).any()):
                raise ValueError(f"{keys[1]}: row ids must be strictly increasing within a client")
    return RowSparse.build(clients, ids, rows, int(n), n_rows)
