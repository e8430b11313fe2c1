"""Server-side validation of client updates.

Every update must have exactly the expected parameter names, the expected shapes, and only
finite values; otherwise it is dropped (with a log line) and the round goes on with the rest.
A table may come row-sparse, as the pair ``<name>::row_ids`` / ``<name>::rows``
(:func:`fedrec.rowsparse.decode_rows`), instead of ``<name>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from fedrec.rowsparse import ROW_IDS, ROW_VALUES, RowSparse, decode_rows

log = logging.getLogger("fedrec")


def all_finite(value: torch.Tensor) -> bool:
    """Whether every value of a floating tensor is finite.

    A finite sum means finite values (an infinity or a NaN makes every partial sum that holds
    it non-finite), and the sum is one vectorised pass; only when the sum is not finite (a
    non-finite value, or finite values whose sum overflows) are the values checked one by one.
    """
    if bool(torch.isfinite(value.sum())):
        return True
    return bool(torch.isfinite(value).all())


def check_update(update: Mapping[str, object], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why ``update`` is malformed, or None when it is fine.

    Parameters
    ----------
    update : mapping
        ``name -> Tensor`` from one client.
    shapes : mapping
        Expected ``name -> shape``.
    """
    sent = set(update)
    as_rows = set()
    for name, shape in shapes.items():
        pair = {name + ROW_IDS, name + ROW_VALUES}
        if not pair & sent:
            continue
        if name in sent:
            return f"{name}: sent both dense and as rows"
        try:
            decode_rows(update, name, shape)  # type: ignore[arg-type]
        except ValueError as exc:
            return str(exc)
        sent = (sent - pair) | {name}
        as_rows.add(name)
    missing = [n for n in shapes if n not in sent]
    extra = [n for n in sent if n not in shapes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if extra:
            parts.append(f"unexpected {extra[:3]}")
        return "wrong keys: " + ", ".join(parts)
    for name, shape in shapes.items():
        if name in as_rows:
            continue
        value = update[name]
        if not isinstance(value, torch.Tensor):
            return f"{name}: not a tensor"
        if tuple(value.shape) != tuple(shape):
            return f"{name}: shape {tuple(value.shape)}, expected {tuple(shape)}"
        if not value.is_floating_point():
            return f"{name}: dtype {value.dtype}, expected floating point"
        if not all_finite(value):
            return f"{name}: non-finite values"
    return None


def finite_dense_rows(value: torch.Tensor) -> torch.Tensor:
    """``bool[n]``: which rows ``value[i]`` of a stacked tensor are entirely finite (the sum
    test of :func:`all_finite` per row; rows whose sum is not finite are checked value by
    value)."""
    flat = value.reshape(value.shape[0], -1)
    ok = torch.isfinite(flat.sum(dim=1))
    if not bool(ok.all()):
        unsure = (~ok).nonzero().flatten()
        ok[unsure] = torch.isfinite(flat[unsure]).all(dim=1)
    return ok


def finite_rows(stacked: Mapping[str, torch.Tensor | RowSparse]) -> torch.Tensor:
    """``bool[n]``: which clients' stacked updates are entirely finite (a
    :class:`~fedrec.rowsparse.RowSparse` table is checked on its stored rows)."""
    ok = None
    for value in stacked.values():
        if isinstance(value, RowSparse):
            row_ok = value.finite()
        else:
            row_ok = finite_dense_rows(value)
        ok = row_ok if ok is None else ok & row_ok
    assert ok is not None
    return ok


def nonfinite_keys(tensors: Mapping[str, torch.Tensor]) -> str:
    """Comma-separated names of the tensors holding NaN or an infinity ('' when all finite)."""
    bad = [n for n, v in tensors.items() if not all_finite(v)]
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def log_rejections(round_idx: int, client_ids: Sequence[int], reasons: Sequence[str]) -> None:
    """One warning line per rejected update."""
    for cid, why in zip(client_ids, reasons, strict=True):
        log.warning("round %d: dropped update of client %d (%s)", round_idx, cid, why)
