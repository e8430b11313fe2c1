"""The EMA vector quantiser and CrossTimeNet's time-series tokenizer (fedrec.tokenizers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.tokenizers.timeseries import (
    TimeSeriesTokenizer,
    evaluate,
    scale_series,
    train_tokenizer,
)
from fedrec.tokenizers.vq import VectorQuantizer, ema_update, kmeans, nearest_code, perplexity

torch.set_num_threads(1)


def test_ema_update_matches_hand_computed_formula():
    # K = 3 codes in 2-d, decay g = 0.5, eps = 0.1; batch of 3 vectors, codes 0, 0, 2.
    size = torch.tensor([1.0, 2.0, 1.0])
    summed = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    z = torch.tensor([[2.0, 0.0], [4.0, 2.0], [1.0, 1.0]])
    ids = torch.tensor([0, 0, 2])
    new_size, new_sum, codes = ema_update(size, summed, z, ids, decay=0.5, eps=0.1)
    # N = 0.5 N + 0.5 n : n = (2, 0, 1)
    assert new_size.tolist() == [1.5, 1.0, 1.0]
    # m = 0.5 m + 0.5 s : s0 = (6, 2), s1 = 0, s2 = (1, 1)
    assert new_sum.tolist() == [[3.5, 1.0], [0.0, 1.0], [2.0, 2.0]]
    total = 3.5
    smoothed = [(v + 0.1) / (total + 0.3) * total for v in (1.5, 1.0, 1.0)]
    expect = [[3.5 / smoothed[0], 1.0 / smoothed[0]], [0.0, 1.0 / smoothed[1]],
              [2.0 / smoothed[2], 2.0 / smoothed[2]]]
    torch.testing.assert_close(codes, torch.tensor(expect))


def test_quantizer_training_step_applies_ema_and_eval_freezes():
    vq = VectorQuantizer(2, 3, decay=0.5, eps=0.1, kmeans_init=False, restart_after=0)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 0.0]]))
    vq.embed_sum.copy_(vq.codebook)
    z = torch.tensor([[1.0, 0.0], [9.0, 9.0], [11.0, 11.0]])
    out = vq(z)
    assert out.ids.tolist() == [0, 1, 1]
    torch.testing.assert_close(out.quantized, torch.tensor([[0.0, 0.0], [10.0, 10.0],
                                                            [10.0, 10.0]]))
    size, summed, codes = ema_update(torch.ones(3), torch.tensor(
        [[0.0, 0.0], [10.0, 10.0], [-10.0, 0.0]]), z, out.ids, 0.5, 0.1)
    torch.testing.assert_close(vq.codebook, codes)
    vq.eval()
    before = vq.codebook.clone()
    vq(z + 5)
    torch.testing.assert_close(vq.codebook, before)


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    enc = torch.nn.Linear(3, 4)
    vq = VectorQuantizer(4, 8, kmeans_init=False, restart_after=0)
    x = torch.randn(16, 3)
    out = vq(enc(x))
    target = torch.randn(16, 4)
    ((out.quantized - target) ** 2).sum().backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    # The gradient through the straight-through path equals d/dq, copied to z.
    z = enc(x).detach().requires_grad_(True)
    q = vq(z).quantized
    ((q - target) ** 2).sum().backward()
    torch.testing.assert_close(z.grad, 2 * (q.detach() - target))
    # The commitment term pulls z towards its code.
    z2 = z.detach().clone().requires_grad_(True)
    vq.eval()
    res = vq(z2)
    res.commitment.backward()
    torch.testing.assert_close(z2.grad, 2 * (z2.detach() - vq.lookup(res.ids)) / z2.numel())


def test_kmeans_init_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    z = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=g)
    vq = VectorQuantizer(2, 4, kmeans_init=True, restart_after=0, seed=3)
    vq(z)
    # every true centre has a code within 0.1 of it, one code each
    d = torch.cdist(centres, vq.codebook)
    assert (d.min(1).values < 0.1).all()
    assert len(set(d.argmin(1).tolist())) == 4
    c1 = kmeans(z, 4, 10, torch.Generator().manual_seed(5))
    c2 = kmeans(z, 4, 10, torch.Generator().manual_seed(5))
    torch.testing.assert_close(c1, c2)
    few = kmeans(z[:3], 5, 10, torch.Generator().manual_seed(0))  # fewer points than codes
    assert few.shape == (5, 2) and torch.equal(few[:3], z[:3])


def test_dead_code_is_restarted_from_encoder_outputs():
    vq = VectorQuantizer(2, 3, kmeans_init=False, restart_after=2, seed=0)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
    vq.embed_sum.copy_(vq.codebook)
    z = torch.tensor([[0.1, 0.0], [0.9, 1.0], [0.0, 0.1], [1.0, 0.9]])
    vq(z)
    assert vq.unused.tolist() == [0, 0, 1] and vq.restarts == 0
    vq(z)
    assert vq.restarts == 1 and vq.unused.tolist() == [0, 0, 0]
    restarted = vq.codebook[2]
    assert any(torch.equal(restarted, row) for row in z)  # re-seeded from an encoder output
    assert float(vq.cluster_size[2]) == 1.0


def test_perplexity_equals_formula():
    counts = torch.tensor([3, 1, 0, 4])
    p = np.array([3, 1, 4]) / 8
    assert math.isclose(float(perplexity(counts)), math.exp(-(p * np.log(p)).sum()), rel_tol=1e-6)
    assert math.isclose(float(perplexity(torch.tensor([5, 5, 5, 5]))), 4.0, rel_tol=1e-6)
    assert math.isclose(float(perplexity(torch.tensor([0, 7, 0]))), 1.0, rel_tol=1e-6)
    vq = VectorQuantizer(1, 4, kmeans_init=False, restart_after=0)
    vq.codebook.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    out = vq.eval()(torch.tensor([[0.0], [0.1], [1.0], [3.0]]))
    assert out.counts.tolist() == [2, 1, 0, 1] and out.usage == 0.75
    assert math.isclose(float(out.perplexity), float(perplexity(torch.tensor([2, 1, 1]))),
                        rel_tol=1e-6)


def test_nearest_code_and_parameter_checks():
    assert nearest_code(torch.tensor([[0.4], [0.6]]), torch.tensor([[0.0], [1.0]])).tolist() \
        == [0, 1]
    for kwargs, field in [({"decay": 1.0}, "decay"), ({"eps": 0.0}, "eps"),
                          ({"codebook_size": 1}, "codebook_size")]:
        with pytest.raises(ValueError, match=field):
            VectorQuantizer(**{"dim": 2, "codebook_size": 4, **kwargs})
    with pytest.raises(ValueError, match="wl: expected a divisor of length 30"):
        TimeSeriesTokenizer(1, 30, 7)
    tok = TimeSeriesTokenizer(2, 16, 4, codebook_size=8, d_model=8, n_blocks=1)
    with pytest.raises(ValueError, match=r"x: expected \[batch, 2, 16\]"):
        tok(torch.zeros(3, 1, 16))


def synthetic_domain(n: int, length: int, seed: int) -> torch.Tensor:
    """Two-channel sine mixtures and square waves with random frequency and phase."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)[None, :]
    f = rng.uniform(1, 4, (n, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 1))
    sine = np.sin(2 * np.pi * f * t + ph) + 0.5 * np.sin(2 * np.pi * 2 * f * t)
    square = np.sign(np.sin(2 * np.pi * f * t + ph))
    kind = rng.integers(0, 2, (n, 1))
    ch0 = np.where(kind == 1, square, sine)
    ch1 = np.cos(2 * np.pi * f * t + ph)
    return scale_series(np.stack([ch0, ch1], axis=1).astype(np.float32))


def test_scale_series():
    x = scale_series(np.array([[[0.0, 2.0], [4.0, 1.0]], [[3.0, 3.0], [3.0, 3.0]]]))
    torch.testing.assert_close(x[0], torch.tensor([[-2.5, 0.0], [2.5, -1.25]]))
    assert torch.equal(x[1], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="finite"):
        scale_series(np.array([[[np.nan]]]))


def _train(seed: int):
    X = synthetic_domain(64, 32, seed=0)
    tok = TimeSeriesTokenizer(2, 32, 4, codebook_size=16, d_model=16, n_blocks=1, seed=seed)
    before = evaluate(tok, X)["mse"]
    stats = train_tokenizer(tok, X, epochs=12, batch_size=16, lr=3e-3, seed=seed, X_val=X[:16])
    return tok, X, before, stats


def test_training_reconstructs_better_and_uses_several_codes():
    tok, X, before, stats = _train(seed=0)
    after = evaluate(tok, X)
    assert after["mse"] < 0.5 * before
    assert stats[-1].recon_mse < stats[0].recon_mse
    assert stats[-1].usage * 16 > 1 and stats[-1].perplexity > 1.5 and after["perplexity"] > 1.5
    ids = tok.tokenize(X[:4])
    assert ids.shape == (4, 8) and ids.dtype == torch.long
    np.testing.assert_allclose(float(((tok.decode(ids) - X[:4]) ** 2).mean()),
                               evaluate(tok, X[:4])["mse"], rtol=1e-5)


def test_training_is_deterministic_with_a_seed():
    a, _, _, sa = _train(seed=1)
    b, _, _, sb = _train(seed=1)
    assert [s.loss for s in sa] == [s.loss for s in sb]
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    _, _, _, sc = _train(seed=2)
    assert [s.loss for s in sa] != [s.loss for s in sc]
