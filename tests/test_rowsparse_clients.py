"""Row-sparse client updates equal the dense ones.

:func:`clients.update.batched_updates` with ``sparse_items`` differentiates only the item rows
each client's batch reads; its item table (a RowSparse) must equal the dense path's table, row
for row, and every other parameter and loss must be unchanged (float64, so the comparison does
not depend on the CPU's float32 summation order; dropout on, since both paths draw the same
masks from the same stream).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import param_copy, small_model

from clients.update import RoundConfig, batched_updates, sparse_item_support
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import generate
from fedrec.rowsparse import RowSparse

torch.set_num_threads(1)
TIGHT = {"atol": 1e-12, "rtol": 1e-9}


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate(n_users=40, n_items=300, max_len=25, seed=3))


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_sparse_item_updates_equal_dense(split, name, protocol, float64):
    model = small_model(name, split.n_items, dropout=0.2)
    params = param_copy(model)
    ids = np.arange(0, 40, 3)
    seqs = [split.train[i] for i in ids]
    rc = RoundConfig(round=4, epoch=1, protocol=protocol, seed=7, local_epochs=2, local_lr=0.5)
    torch.manual_seed(11)
    dense, loss_d = batched_updates(model, params, seqs, ids, rc, chunk_size=5)
    torch.manual_seed(11)
    sparse, loss_s = batched_updates(model, params, seqs, ids, rc, chunk_size=5,
                                     sparse_items=True)
    key = model.item_param_names[0]
    table = sparse[key]
    assert isinstance(table, RowSparse)
    # only rows a client read are stored, far fewer than the catalog
    assert table.nnz == int((dense[key].abs().sum(-1) > 0).sum())
    assert table.nnz < len(ids) * split.n_items / 4
    torch.testing.assert_close(table.to_dense(), dense[key], **TIGHT)
    for n in dense:
        if n != key:
            torch.testing.assert_close(sparse[n], dense[n], **TIGHT)
    torch.testing.assert_close(loss_s, loss_d, **TIGHT)


def test_full_softmax_models_are_refused(split):
    ce = small_model("sasrec", split.n_items)
    ce.loss_type = "ce"
    assert "full softmax" in sparse_item_support(ce)
    bert = small_model("bert4rec", split.n_items)
    assert sparse_item_support(bert) is not None
    rc = RoundConfig(round=0, epoch=0)
    with pytest.raises(ValueError, match="sparse item updates"):
        batched_updates(bert, param_copy(bert), [split.train[0]], np.array([0]), rc,
                        sparse_items=True)


def test_no_clients_give_an_empty_stack(split):
    model = small_model("sasrec", split.n_items)
    rc = RoundConfig(round=0, epoch=0)
    stacked, losses = batched_updates(model, param_copy(model), [], np.array([], dtype=np.int64),
                                      rc, sparse_items=True)
    table = stacked[model.item_param_names[0]]
    assert isinstance(table, RowSparse) and table.n == 0 and table.nnz == 0
    assert table.shape == (0, *model.item_emb.weight.shape) and len(losses) == 0
