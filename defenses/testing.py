"""Helpers shared by the defense tests and benchmark: random stacked updates and valid params.

Not used by the rules themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import AggregationContext

__all__ = ["ITEM_KEY", "example_params", "make_context", "random_stacked"]

ITEM_KEY = "item_emb.weight"


def random_stacked(
    n: int,
    *,
    seed: int = 0,
    n_rows: int = 24,
    row_dim: int = 4,
    rows_per_client: int = 6,
    dense_shapes: tuple[tuple[int, ...], ...] = ((3, 5), (5,)),
    scale: float = 1.0,
) -> dict[str, Tensor]:
    """Random float32 updates: a sparse item table plus dense params.

    Each client's item-table update is nonzero on ``rows_per_client`` random rows.

    Parameters
    ----------
    n : int
        Number of clients.
    seed : int
        Generator seed.
    n_rows, row_dim, rows_per_client : int
        Item table shape and per-client sparsity (``n_rows=0`` omits the table).
    dense_shapes : tuple of shapes
        Shapes of the dense params ``dense0``, ``dense1``, ...
    scale : float
        Multiplies every value.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    if n_rows > 0:
        table = torch.zeros(n, n_rows, row_dim)
        for i in range(n):
            rows = torch.randperm(n_rows, generator=gen)[:rows_per_client]
            table[i, rows] = torch.randn(rows_per_client, row_dim, generator=gen)
        out[ITEM_KEY] = table * scale
    for j, shape in enumerate(dense_shapes):
        out[f"dense{j}"] = torch.randn(n, *shape, generator=gen) * scale
    return out


def example_params(name: str, n: int) -> dict[str, Any]:
    """Parameters that make rule ``name`` valid for ``n`` clients (``f`` as large as allowed,
    capped at 2; clipping radii large enough not to bind on unit-scale data)."""
    f_krum = max(0, min(2, (n - 3) // 2))
    f_bulyan = max(0, min(2, (n - 3) // 4))
    table: dict[str, dict[str, Any]] = {
        "krum": {"f": f_krum},
        "multi_krum": {"f": f_krum},
        "bulyan": {"f": f_bulyan},
        "itemwise_krum": {"f": f_krum},
        "norm_bound": {"tau": 1e3},
        "centered_clipping": {"tau": 1e3},
        "itemwise_norm_bound": {"tau": 1e3},
        "hics": {"tau_item": 1e3, "fraction": 1.0},
    }
    return dict(table.get(name, {}))


def make_context(
    stacked: dict[str, Tensor], *, seed: int = 0, round: int = 0, client_ids: Tensor | None = None
) -> AggregationContext:
    """Context with the item table marked, client ids ``0..n-1`` and a root update equal to the
    unweighted mean (so FLTrust has positive trust on typical data)."""
    n = next(iter(stacked.values())).shape[0]
    items = (ITEM_KEY,) if ITEM_KEY in stacked else ()
    return AggregationContext(
        round=round,
        seed=seed,
        item_param_names=items,
        root_update={k: v.mean(dim=0) for k, v in stacked.items()},
        client_ids=torch.arange(n) if client_ids is None else client_ids,
    )
