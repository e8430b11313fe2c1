"""`model.bce_reduction`: BCE summed over a position's logits (SASRec paper) or averaged (DV-FSR)."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.data.random import stream_key
from fedrec.models import build_model


def test_mean_reduction_divides_by_number_of_logits():
    torch.manual_seed(0)
    model = build_model("sasrec", 30, hidden=8, blocks=1, max_len=10, dropout=0.0, n_neg=3)
    # float64: the hand-written BCE below reduces in another order than the model's loss, so
    # in float32 the gap depends on the CPU's kernels; in float64 it is ~1e-16
    model.double()
    seqs = [np.array([1, 5, 7, 9]), np.array([2, 3, 4, 8, 11, 12])]
    batch = model.prepare_batch(seqs, stream_key(0, np.arange(2)))
    summed = model.row_losses(batch)
    model.bce_reduction = "mean"
    averaged = model.row_losses(batch)
    torch.testing.assert_close(averaged, summed / 4)
    # a position's mean BCE equals torch's BCE over its 1 positive and 3 negative logits
    h = model.encode(batch["inputs"])
    pos = (h * model.item_emb.weight[batch["targets"]]).sum(-1)
    neg = (h.unsqueeze(-2) * model.item_emb.weight[batch["negatives"]]).sum(-1)
    logits = torch.cat([pos.unsqueeze(-1), neg], -1)
    labels = torch.zeros_like(logits)
    labels[..., 0] = 1
    per_pos = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
    mask = batch["targets"] > 0
    expected = (per_pos * mask).sum(-1) / mask.sum(-1)
    assert averaged.dtype == torch.float64
    torch.testing.assert_close(averaged, expected, atol=1e-12, rtol=1e-9)
