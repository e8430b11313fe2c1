"""Client updates: the batched forms equal a per-client loop of the single-client form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import param_copy, small_model

from clients.update import (
    RoundConfig,
    batched_updates,
    client_update,
    combined_fedsgd_gradient,
    num_examples,
)
from fedrec.data.split import leave_one_out
from fedrec.data.synthetic import generate
from fedrec.models import build_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate(n_users=40, n_items=50, max_len=25, seed=3))


@pytest.fixture
def float64():
    """Run the test with float64 as torch's default dtype (restored afterwards).

    The equivalence tests below compare two computations of the same math whose float
    reductions run in different orders (vmapped/bucketed batches vs one client at a time), and
    the order and the kernels depend on the CPU (AVX-512 vs AVX2 oneDNN/ATen kernels): in
    float32 bert4rec's FedAvg deltas differ by up to ~1e-5 between the two forms on an AVX2
    kernel set. In float64 they agree to ~1e-15, so a 1e-10 tolerance is machine-independent.
    The default dtype (not just ``model.double()``) is needed because ``batched_updates``
    allocates its loss buffer with the default dtype (``torch.empty(n)``), which then refuses
    float64 losses.
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_batched_equals_per_client_loop(split, name, protocol, float64):
    model = small_model(name, split.n_items)
    params = param_copy(model)
    assert all(p.dtype == torch.float64 for p in params.values())
    ids = np.arange(0, 40, 3)
    seqs = [split.train[i] for i in ids]
    rc = RoundConfig(round=4, epoch=1, protocol=protocol, seed=7, local_epochs=2, local_lr=0.5)
    stacked, losses = batched_updates(model, params, seqs, ids, rc, chunk_size=5)
    for row, (cid, seq) in enumerate(zip(ids, seqs)):
        ref = client_update(model, params, seq, int(cid), rc)
        for n in params:
            torch.testing.assert_close(stacked[n][row], ref.params[n], atol=1e-10, rtol=1e-9)
        assert losses[row].item() == pytest.approx(ref.metrics["loss"], rel=1e-10, abs=1e-12)
    before = {n: p.clone() for n, p in params.items()}
    batched_updates(model, params, seqs, ids, rc)
    assert all(torch.equal(before[n], params[n]) for n in params)  # inputs not modified


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_combined_gradient_equals_weighted_sum_of_client_gradients(split, name, float64):
    model = small_model(name, split.n_items)
    params = param_copy(model)
    assert all(p.dtype == torch.float64 for p in params.values())
    ids = np.arange(10)
    seqs = [split.train[i] for i in ids]
    rc = RoundConfig(round=1, epoch=0, seed=2)
    coef = torch.linspace(0.5, 2.0, len(ids), dtype=torch.float64)
    combined, _ = combined_fedsgd_gradient(model, params, seqs, ids, coef, rc)
    for n in params:
        # coef[i].float(): combined_fedsgd_gradient rounds the coefficients to float32 (a
        # float32 0-d tensor times a float64 gradient is computed in float64)
        expected = sum(coef[i].float() * client_update(model, params, seqs[i], int(ids[i]), rc).params[n]
                       for i in range(len(ids)))
        assert combined[n].dtype == torch.float64
        torch.testing.assert_close(combined[n], expected, atol=1e-10, rtol=1e-9)


def test_client_randomness_depends_only_on_client_and_round(split):
    model = build_model("sasrec", split.n_items, hidden=8, blocks=1, max_len=10, dropout=0.0)
    params = param_copy(model)
    rc = RoundConfig(round=3, epoch=0, seed=1)
    a = client_update(model, params, split.train[5], 5, rc).params
    b = client_update(model, params, split.train[5], 5, RoundConfig(round=3, epoch=0, seed=1)).params
    c = client_update(model, params, split.train[5], 5, RoundConfig(round=4, epoch=0, seed=1)).params
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)  # new round, new negatives


def test_fedavg_delta_is_local_sgd(split):
    """One local epoch of FedAvg = one SGD step on the client's FedSGD gradient."""
    model = build_model("sasrec", split.n_items, hidden=8, blocks=1, max_len=10, dropout=0.0)
    params = param_copy(model)
    rc_sgd = RoundConfig(round=0, epoch=0, protocol="fedsgd", seed=0)
    rc_avg = RoundConfig(round=0, epoch=0, protocol="fedavg", seed=0, local_epochs=1, local_lr=0.3)
    g = client_update(model, params, split.train[2], 2, rc_sgd).params
    d = client_update(model, params, split.train[2], 2, rc_avg).params
    for n in params:
        # same gradient (same ops on the same batch) on both sides; d = (p - 0.3 g) - p differs
        # from -0.3 g only by the rounding of p - 0.3 g: <= ulp(|p|)/2 ~ 6e-8 for |p| <= 1
        torch.testing.assert_close(d[n], -0.3 * g[n], atol=1e-6, rtol=1e-5)


def test_num_examples_counts_targets():
    assert num_examples(np.array([1, 2, 3, 4])) == 3
    assert num_examples(np.array([5])) == 1
