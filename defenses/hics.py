"""HiCS: hierarchical gradient clipping with sparsified updating, as a server rule.

Paper: Wei Yuan, Quoc Viet Hung Nguyen, Tieke He, Liang Chen, Hongzhi Yin, "Manipulating
Federated Recommender Systems: Poisoning with Synthetic Users and Its Countermeasures" (PSMU),
SIGIR 2023, arXiv:2304.03054. The authors released no code; this rule follows the ``hics``
aggregator of the public PoisonFRS code (github.com/mingyin1/PoisonFRS, WWW 2024), which
approximates the paper's defense.

Adaptation (after PoisonFRS's approximation): for each item table, the example-weighted
mean over touching clients of every row, each aggregated row clipped to L2 ``<= tau_item``,
added to a per-table gradient bank (state); then only the ``k`` bank rows with the largest L2
norm (or ``ceil(fraction * n_rows)`` rows; rows with an empty bank are never applied) are
output and removed from the bank; all other rows of the table output zero this round. Non-item
params: every client's non-item update is clipped to ``tau_other`` (default ``tau_item``) and
the clipped updates are averaged with example weights; ``AggregationInfo.weights`` are these
non-item coefficients. The paper's client-side clipping level is not part of this server rule.

Item tables are the params named in ``ctx.item_param_names`` (``stacked[name]`` has shape
``[n, n_rows, *row_shape]``); a client touches row ``r`` iff its row ``r`` has a nonzero entry.
The bank is the rule's state (:meth:`HiCS.state_dict`), so a resumed run continues with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedrec.errors import ConfigError
from fedrec.rowsparse import RowSparse

from .base import AggregationContext, AggregationInfo, Defense, Stacked, all_kept, check_item_params
from .clipping import clip_scales
from .linalg import client_sq_norms, combine, touched_rows

__all__ = ["HiCS", "hics_select"]


def hics_select(bank_norms: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` rows with the largest bank norm, excluding empty rows.

    Parameters
    ----------
    bank_norms : Tensor
        ``[n_rows]`` L2 norms of the bank rows.
    k : int
        Maximum number of rows to apply.

    Returns
    -------
    Tensor
        ``int64[<= k]`` row indices (largest norm first, ties by lower index).
    """
    k = min(k, bank_norms.numel())
    order = torch.sort(-bank_norms, stable=True).indices[:k]
    return order[bank_norms[order] > 0]


class HiCS(Defense):
    """HiCS (Yuan et al., SIGIR 2023): clipped item-row means through a sparsified bank.

    Parameters
    ----------
    tau_item : float (default: 3.0)
        L2 bound of each aggregated item row, ``> 0``.
    k : int | None (default: None)
        Rows applied per table and round, ``>= 1``. Give ``k`` or ``fraction``, not both.
    fraction : float | None (default: None)
        Applied rows as a fraction of the table's rows, ``0 < fraction <= 1``
        (``ceil(fraction * n_rows)``). If neither ``k`` nor ``fraction`` is given, 0.1.
    tau_other : float | None (default: None)
        L2 bound of each client's non-item update before the weighted mean; ``None`` uses
        ``tau_item``.
    """

    name = "hics"
    homogeneous = False  # fixed item radius tau_item
    idempotent = False
    rowwise = True
    sparse_rows = True

    def __init__(
        self,
        tau_item: float = 3.0,
        k: int | None = None,
        fraction: float | None = None,
        tau_other: float | None = None,
    ) -> None:
        for field, value in (("tau_item", tau_item), ("tau_other", tau_other)):
            if value is None and field == "tau_other":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0
            ):
                raise ConfigError(f"defense.hics.{field}={value!r}: expected a finite float > 0")
        if k is not None and fraction is not None:
            raise ConfigError("defense.hics: give either k or fraction, not both")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"defense.hics.k={k!r}: expected an integer >= 1")
        if fraction is not None and (
            isinstance(fraction, bool) or not isinstance(fraction, int | float)
            or not 0 < fraction <= 1
        ):
            raise ConfigError(f"defense.hics.fraction={fraction!r}: expected 0 < fraction <= 1")
        self.tau_item = float(tau_item)
        self.k = k
        self.fraction = None if fraction is None else float(fraction)
        self.tau_other = None if tau_other is None else float(tau_other)
        self._bank: dict[str, Tensor] = {}

    def rows_per_round(self, n_rows: int) -> int:
        """Rows applied per table and round for a table of ``n_rows`` rows."""
        if self.k is not None:
            return min(self.k, n_rows)
        frac = 0.1 if self.fraction is None else self.fraction
        return min(n_rows, max(1, math.ceil(frac * n_rows)))

    def _aggregate(
        self, stacked: Stacked, weights: Tensor, ctx: AggregationContext
    ) -> tuple[dict[str, Tensor], AggregationInfo]:
        items = check_item_params(self.name, stacked, ctx)
        n = weights.shape[0]
        dense_keys = [k for k in stacked if k not in items]
        result: dict[str, Tensor] = {}
        coef = torch.zeros(n, dtype=torch.float64)
        kept = all_kept(n)
        if dense_keys:
            tau = self.tau_item if self.tau_other is None else self.tau_other
            scale = clip_scales(client_sq_norms(stacked, dense_keys), tau)
            coef = weights / weights.sum() * scale
            result.update(combine(stacked, coef, dense_keys))
        applied = clipped_rows = touched_rows_total = 0
        w64 = weights.to(torch.float64)
        for key in items:
            table = stacked[key]
            rows = table.shape[1]
            if isinstance(table, RowSparse):  # the touched rows as stored
                row_dim = table.row_dim
                denom = torch.zeros(rows, dtype=torch.float64).index_add_(
                    0, table.ids, w64[table.clients])
                sums = table.combine(w64).reshape(rows, row_dim).to(torch.float64)
            else:
                x = table.reshape(n, rows, -1)
                row_dim = x.shape[2]
                touched = touched_rows(table)
                denom = w64 @ touched.to(torch.float64)  # example weight touching each row
                sums = combine({key: x}, w64)[key].to(torch.float64)  # [rows, d]
            mean = torch.where(denom[:, None] > 0, sums / denom.clamp_min(1e-300)[:, None],
                               torch.zeros((), dtype=torch.float64))
            row_scale = clip_scales(mean.pow(2).sum(dim=1), self.tau_item)
            clipped_rows += int(((row_scale < 1) & (denom > 0)).sum())
            touched_total_rows = int((denom > 0).sum())
            touched_rows_total += touched_total_rows
            bank = self._bank.get(key)
            if bank is None:
                bank = torch.zeros(rows, row_dim, dtype=torch.float64)
            elif bank.shape != (rows, row_dim):
                raise ValueError(
                    f"hics: stored bank of {key!r} has shape {tuple(bank.shape)}, "
                    f"expected {(rows, row_dim)}"
                )
            bank = bank + mean * row_scale[:, None]
            sel = hics_select(bank.pow(2).sum(dim=1).sqrt(), self.rows_per_round(rows))
            out = torch.zeros_like(bank)
            out[sel] = bank[sel]
            bank[sel] = 0.0
            self._bank[key] = bank
            applied += sel.numel()
            result[key] = out.to(table.dtype).reshape(table.shape[1:])
        extra = {
            "rows_applied": float(applied),
            "row_clip_fraction": clipped_rows / max(1, touched_rows_total),
            "bank_rows_nonzero": float(
                sum(int((b != 0).any(dim=1).sum()) for b in self._bank.values())
            ),
        }
        return {k: result[k] for k in stacked}, AggregationInfo(kept, coef, extra)

    def state_dict(self) -> dict[str, Any]:
        """``{"bank": {table_name: float64[n_rows, row_dim]}}``."""
        return {"bank": {k: v.clone() for k, v in self._bank.items()}}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore the bank saved by :meth:`state_dict`."""
        if set(d) != {"bank"}:
            raise ValueError(f"hics state: expected key 'bank', got {sorted(d)}")
        self._bank = {k: v.clone().to(torch.float64) for k, v in d["bank"].items()}
