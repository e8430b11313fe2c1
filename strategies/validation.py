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
        if not bool(torch.isfinite(value).all()):
            return f"{name}: non-finite values"
    return None


def finite_rows(stacked: Mapping[str, torch.Tensor | RowSparse]) -> torch.Tensor:
    """``bool[n]``: which clients' stacked updates are entirely finite (a
    :class:`~fedrec.rowsparse.RowSparse` table is checked on its stored rows)."""
    ok = None
    for value in stacked.values():
        if isinstance(value, RowSparse):
            row_ok = value.finite()
        else:
            row_ok = torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
        ok = row_ok if ok is None else ok & row_ok
    assert ok is not None
    return ok


def nonfinite_keys(tensors: Mapping[str, torch.Tensor]) -> str:
    """Comma-separated names of the tensors holding NaN or an infinity ('' when all finite)."""
    bad = [n for n, v in tensors.items() if not bool(torch.isfinite(v).all())]
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def log_rejections(round_idx: int, client_ids: Sequence[int], reasons: Sequence[str]) -> None:
    """One warning line per rejected update."""
    for cid, why in zip(client_ids, reasons):
        log.warning("round %d: dropped update of client %d (%s)", round_idx, cid, why)
