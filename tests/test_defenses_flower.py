"""Cross-check against Flower 1.42's Message-API robust strategies.

The same random updates go to our rules (stacked tensors) and to
``flwr.serverapp.strategy.{FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan}`` (reply
messages). Flower pops arrays from the replies, so every call gets a freshly built reply list.
Replies are ``Mock(spec=Message)`` objects, as in Flower's own strategy tests, which avoids
setting the process-wide ``TaskIdentity``.

Mapping (see the module docstrings of ``defenses.coordinate`` and ``defenses.distance``):
``median`` == FedMedian; ``trimmed_mean(beta)`` == FedTrimmedAvg(beta) (``int(beta * n)``
values cut per end); ``krum(f)`` == Krum(num_malicious_nodes=f); ``multi_krum(f, m)`` ==
MultiKrum(f, m) including its example-weighted average; ``bulyan(f)`` == Bulyan(f).
"""

from __future__ import annotations

import logging
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from defenses import build_defense

logging.getLogger("flwr").setLevel(logging.WARNING)


def _updates(
    n: int, seed: int, n_outliers: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    stacked = {
        "emb": torch.randn(n, 6, 4, generator=gen),
        "w": torch.randn(n, 5, 3, generator=gen),
        "b": torch.randn(n, 3, generator=gen),
    }
    for i in range(n_outliers):  # a few far, different outliers so the selection matters
        for k in stacked:
            stacked[k][i] = stacked[k][i] * 30 + 5
    weights = torch.randint(1, 50, (n,), generator=gen).float()
    return stacked, weights


def _replies(stacked: dict[str, torch.Tensor], weights: torch.Tensor) -> list[Message]:
    n = weights.shape[0]
    out = []
    for i in range(n):
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v[i].numpy().copy()) for k, v in stacked.items()}),
                "metrics": MetricRecord({"num-examples": int(weights[i]), "loss": float(i)}),
            }
        )
        msg = Mock(spec=Message)
        msg.content = content
        msg.has_error.side_effect = lambda: False
        out.append(msg)
    return out


def _flower(strategy, stacked, weights) -> dict[str, np.ndarray]:
    arrays, _ = strategy.aggregate_train(1, _replies(stacked, weights))
    assert arrays is not None
    return {k: arrays[k].numpy() for k in stacked}


def _ours(name, params, stacked, weights) -> dict[str, np.ndarray]:
    out, _ = build_defense(name, params)(stacked, weights)
    return {k: v.numpy() for k, v in out.items()}


#: most clients aggregated by a test here (bounds the float32 summation error below)
N_MAX = 30
EPS32 = float(np.finfo(np.float32).eps)


def _assert_same(ours: dict, ref: dict, rtol: float = 1e-5, atol: float | None = None) -> None:
    """Equal up to float32 summation order: two implementations summing at most ``N_MAX``
    float32 values of magnitude at most ``M`` differ by at most about ``N_MAX * eps32 * M``
    (the default ``atol``, with a factor 2 for the final scaling)."""
    assert ours.keys() == ref.keys()
    for k in ours:
        assert ours[k].shape == ref[k].shape
        tol = atol
        if tol is None:
            mag = max(float(np.abs(ours[k]).max()), float(np.abs(ref[k]).max()), 1.0)
            tol = 2 * N_MAX * EPS32 * mag
        np.testing.assert_allclose(ours[k], ref[k], rtol=rtol, atol=tol, err_msg=k)


@pytest.mark.parametrize("n", [1, 4, 7, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_median_matches_fedmedian(n, seed):
    stacked, w = _updates(n, seed, n_outliers=n // 3)
    _assert_same(_ours("median", {}, stacked, w), _flower(FedMedian(), stacked, w))


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.3, 0.45])
@pytest.mark.parametrize("n", [5, 10, 13])
def test_trimmed_mean_matches_fedtrimmedavg(beta, n):
    stacked, w = _updates(n, 2, n_outliers=2)
    ours = _ours("trimmed_mean", {"beta": beta}, stacked, w)
    _assert_same(ours, _flower(FedTrimmedAvg(beta=beta), stacked, w))


@pytest.mark.parametrize("f", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_krum_matches_flower_krum(f, seed):
    n = 10
    stacked, w = _updates(n, seed, n_outliers=f)
    ours = _ours("krum", {"f": f}, stacked, w)
    _assert_same(ours, _flower(Krum(num_malicious_nodes=f), stacked, w), rtol=0, atol=0)


@pytest.mark.parametrize("f,m", [(0, 3), (1, 5), (2, 6), (3, 1), (2, 10)])
@pytest.mark.parametrize("seed", [0, 1])
def test_multikrum_matches_flower_multikrum_weighted(f, m, seed):
    n = 10
    stacked, w = _updates(n, seed, n_outliers=f)
    ours = _ours("multi_krum", {"f": f, "m": m}, stacked, w)
    ref = _flower(MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m), stacked, w)
    _assert_same(ours, ref)
    # the mapping is the example-weighted mean: with unequal counts it differs from the plain one
    if 1 < m:
        _, info = build_defense("multi_krum", {"f": f, "m": m})(stacked, w)
        sel = info.kept
        plain = {k: v[sel].mean(0).numpy() for k, v in stacked.items()}
        assert not all(np.allclose(plain[k], ref[k], rtol=1e-5) for k in ref)


# Flower's Bulyan takes about 1 s per call here, so the grid is small.
@pytest.mark.parametrize("f,n,seed", [(0, 5, 0), (1, 7, 1), (1, 10, 0), (2, 11, 1)])
def test_bulyan_matches_flower_bulyan(f, n, seed):
    stacked, w = _updates(n, seed, n_outliers=f)
    ours = _ours("bulyan", {"f": f}, stacked, w)
    _assert_same(ours, _flower(Bulyan(num_malicious_nodes=f), stacked, w))


def test_bulyan_too_few_replies_flower_skips_we_raise():
    from fedrec.errors import ConfigError

    stacked, w = _updates(10, 0)
    arrays, _ = Bulyan(num_malicious_nodes=2).aggregate_train(1, _replies(stacked, w))
    assert arrays is None
    with pytest.raises(ConfigError, match="4f\\+3"):
        build_defense("bulyan", {"f": 2})(stacked, w)
