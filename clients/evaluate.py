"""Client-side evaluation: a client ranks its own held-out (test) item with the global model.

The client scores all items after its history (train items + validation item), removes its
history items from the ranking, and reports HR@K / NDCG@K of its test item (full ranking). The
server averages the reports over the clients asked. Because it is the same computation as the
server-side full-ranking evaluation restricted to those clients, the two agree exactly; the
option exists to exercise the federated evaluation path (Flower ``@app.evaluate``) the way a
deployment would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedrec.evaluation import EvalProtocol, evaluate
from fedrec.models import SequentialRecommender
from fedrec.models.base import load_params


def client_evaluate(model: SequentialRecommender, params: Mapping[str, torch.Tensor],
                    histories: Sequence[np.ndarray], held_out: np.ndarray,
                    ks: Sequence[int]) -> dict[str, float]:
    """Mean full-ranking HR@K/NDCG@K/MRR of ``held_out`` over the given clients.

    Parameters
    ----------
    model : SequentialRecommender
        Scratch model; its parameters are overwritten with ``params``.
    params : mapping
        Global parameters.
    histories : sequence of numpy.ndarray
        Each client's history (train + validation items).
    held_out : numpy.ndarray
        Each client's test item.
    ks : sequence of int
        Cut-offs.
    """
    load_params(model, params)
    model.eval()
    protocol = EvalProtocol(ks=tuple(ks), full=True, sampled=False, exclude_history=True)
    out = evaluate(model.scores, histories, held_out, protocol, model.max_len, model.n_items)
    return {k.split("/", 1)[1]: v for k, v in out.items()}
