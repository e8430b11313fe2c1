"""Generic properties of every registered aggregation rule.

Permutation invariance, output layout, determinism, behaviour on identical updates,
idempotence, positive homogeneity, state round trips and the linear-rule contract.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defenses import DEFENSES, AggregationContext, build_defense
from defenses.testing import ITEM_KEY, example_params, make_context, random_stacked
from example_rules import EXAMPLE_RULES

# Every registered rule, plus the tests' example rules (tests/example_rules.py: a rule added
# the way docs/contributing.md says is covered here with nothing else to write). Which
# properties a rule must satisfy comes from its traits (defenses.base.Defense).
RULES = {**DEFENSES, **EXAMPLE_RULES}
ALL = sorted(RULES)
HOMOGENEOUS = [n for n in ALL if RULES[n].homogeneous]
CONSENSUS = [n for n in ALL if RULES[n].consensus]
IDEMPOTENT = [n for n in ALL if RULES[n].idempotent]


def _build(name: str, n: int):
    return RULES[name](**example_params(name, n))


def _weights(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 7)
    return torch.randint(1, 20, (n,), generator=gen).float()


# The checks that compare two aggregations of the same updates (permuted, scaled, re-aggregated,
# or the rule vs its coefficients) run on float64 updates: in float32 the rules' sums and
# Gram/distance matmuls round differently in another order or on another CPU (AVX-512 vs AVX2
# kernels); in float64 the gap is ~1e-15 on these unit-scale values, so TIGHT holds anywhere.
TIGHT = {"atol": 1e-12, "rtol": 1e-9}


def _stacked64(n: int, **kw) -> dict[str, torch.Tensor]:
    """``random_stacked`` in float64."""
    return {k: v.double() for k, v in random_stacked(n, **kw).items()}


def _close(a: dict, b: dict, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", ALL)
def test_output_layout_and_info(name):
    n = 11
    stacked = random_stacked(n, seed=1)
    out, info = _build(name, n)(stacked, _weights(n, 1), make_context(stacked))
    assert list(out) == list(stacked)
    for k, v in stacked.items():
        assert out[k].shape == v.shape[1:]
        assert out[k].dtype == v.dtype
        assert torch.isfinite(out[k]).all()
    assert info.kept.dtype == torch.bool and info.kept.shape == (n,)
    assert info.weights.shape == (n,) and bool((info.weights >= 0).all())
    assert all(isinstance(v, float) for v in info.extra.values())


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), perm_seed=st.integers(0, 10_000))
def test_permutation_invariance(name, seed, perm_seed):
    n = 11
    stacked = _stacked64(n, seed=seed)
    w = _weights(n, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    ids = torch.arange(100, 100 + n)
    out1, info1 = _build(name, n)(stacked, w, make_context(stacked, client_ids=ids))
    permuted = {k: v[perm] for k, v in stacked.items()}
    out2, info2 = _build(name, n)(permuted, w[perm], make_context(permuted, client_ids=ids[perm]))
    _close(out1, out2, **TIGHT)
    if not RULES[name].rowwise:
        # per-client info on dense data (no tied values, whose attribution is arbitrary)
        stacked = _stacked64(n, seed=seed, n_rows=0)
        permuted = {k: v[perm] for k, v in stacked.items()}
        _, info1 = _build(name, n)(stacked, w, make_context(stacked, client_ids=ids))
        _, info2 = _build(name, n)(permuted, w[perm], make_context(permuted, client_ids=ids[perm]))
    torch.testing.assert_close(info1.weights[perm], info2.weights, **TIGHT)
    assert torch.equal(info1.kept[perm], info2.kept)


@pytest.mark.parametrize("name", ALL)
def test_deterministic(name):
    n = 9
    stacked = random_stacked(n, seed=3)
    ctx = make_context(stacked, seed=5, round=2)
    a, _ = _build(name, n)(stacked, _weights(n, 3), ctx)
    b, _ = _build(name, n)(stacked, _weights(n, 3), ctx)
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("name", CONSENSUS)
def test_identical_updates_give_that_update(name):
    n = 9
    one = _stacked64(1, seed=4, rows_per_client=24)  # every item row touched
    stacked = {k: v.expand(n, *v.shape[1:]).clone() for k, v in one.items()}
    out, _ = _build(name, n)(stacked, _weights(n, 4), make_context(stacked))
    _close(out, {k: v[0] for k, v in one.items()}, **TIGHT)


def test_identical_updates_exceptions():
    n = 9
    one = _stacked64(1, seed=4, rows_per_client=24)
    stacked = {k: v.expand(n, *v.shape[1:]).clone() for k, v in one.items()}
    ctx = make_context(stacked)
    w = _weights(n, 4)
    # sum: n times the update
    out, _ = build_defense("sum", {})(stacked, w, ctx)
    _close(out, {k: n * v[0] for k, v in one.items()}, **TIGHT)
    # FLAME without noise: the update itself; with noise: the update plus N(0, (0.01 |x|)^2)
    out, _ = build_defense("flame", {"noise_factor": 0.0})(stacked, w, ctx)
    _close(out, {k: v[0] for k, v in one.items()}, **TIGHT)
    out, info = build_defense("flame", {})(stacked, w, ctx)
    resid = torch.cat([(out[k] - one[k][0]).reshape(-1) for k in out])
    assert 0.5 * info.extra["noise_std"] < float(resid.std()) < 1.5 * info.extra["noise_std"]
    # FoolsGold: identical updates are perfect sybils; every weight is 0 and the result is 0
    out, info = build_defense("foolsgold", {})(stacked, w, ctx)
    assert info.extra["all_zero"] == 1.0 and not info.kept.any()
    assert all(torch.count_nonzero(v) == 0 for v in out.values())


@pytest.mark.parametrize("name", IDEMPOTENT)
def test_idempotent(name):
    """Aggregating n copies of the rule's own output returns that output."""
    n = 11
    stacked = _stacked64(n, seed=8, rows_per_client=24)
    w = _weights(n, 8)
    rule = _build(name, n)
    out, _ = rule(stacked, w, make_context(stacked))
    again = {k: v.expand(n, *v.shape).clone() for k, v in out.items()}
    out2, _ = _build(name, n)(again, w, make_context(again))
    _close(out, out2, **TIGHT)


@pytest.mark.parametrize("name", HOMOGENEOUS)
@pytest.mark.parametrize("c", [0.25, 7.0])
def test_positive_homogeneity(name, c):
    n = 11
    stacked = _stacked64(n, seed=9)
    w = _weights(n, 9)
    ctx = make_context(stacked, seed=1, round=3)
    out, _ = _build(name, n)(stacked, w, ctx)
    scaled = {k: c * v for k, v in stacked.items()}
    ctx_c = AggregationContext(
        round=3, seed=1, item_param_names=ctx.item_param_names, client_ids=ctx.client_ids,
        root_update={k: c * v for k, v in ctx.root_update.items()},
    )
    out_c, info_c = _build(name, n)(scaled, w, ctx_c)
    # a rule that adds noise (FLAME) draws it in float32 (defenses/similarity.py), so even on
    # float64 updates out_c and c * out differ by the float32 rounding of noise_std * z:
    # at most eps32 * noise_std * |z|, with |z| < 8 for these few hundred draws
    eps32 = torch.finfo(torch.float32).eps
    atol = 1e-12 * max(1.0, c) + eps32 * 8 * info_c.extra.get("noise_std", 0.0)
    _close(out_c, {k: c * v for k, v in out.items()}, atol=atol, rtol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_state_round_trip(name):
    """Checkpoint after round 1, restore into a fresh instance: round 2 matches exactly."""
    n = 9
    s1, s2 = random_stacked(n, seed=10), random_stacked(n, seed=11)
    w = _weights(n, 10)
    rule = _build(name, n)
    rule(s1, w, make_context(s1, round=1))
    state = copy.deepcopy(rule.state_dict())
    expected, _ = rule(s2, w, make_context(s2, round=2))
    fresh = _build(name, n)
    fresh.load_state_dict(state)
    got, _ = fresh(s2, w, make_context(s2, round=2))
    for k in expected:
        assert torch.equal(expected[k], got[k])


@pytest.mark.parametrize("name", [n for n in ALL if RULES[n].linear])
def test_linear_rules_match_coefficients(name):
    n = 7
    stacked = _stacked64(n, seed=12)
    w = _weights(n, 12)
    rule = _build(name, n)
    out, info = rule(stacked, w)
    coef = rule.coefficients(w)
    torch.testing.assert_close(info.weights, coef)
    for k, v in stacked.items():
        ref = torch.einsum("i,i...->...", coef, v)
        torch.testing.assert_close(out[k], ref, **TIGHT)


def test_linear_flags():
    assert {n for n, c in DEFENSES.items() if c.linear} == {"mean", "unweighted_mean", "sum"}
    with pytest.raises(NotImplementedError):
        build_defense("median", {}).coefficients(torch.ones(3))


def test_mean_weighting():
    stacked = {"p": torch.tensor([[0.0], [10.0]])}
    out, _ = build_defense("mean", {})(stacked, torch.tensor([3.0, 1.0]))
    assert out["p"].item() == pytest.approx(2.5)
    out, _ = build_defense("unweighted_mean", {})(stacked, torch.tensor([3.0, 1.0]))
    assert out["p"].item() == pytest.approx(5.0)
    out, _ = build_defense("sum", {})(stacked, torch.tensor([3.0, 1.0]))
    assert out["p"].item() == pytest.approx(10.0)


def test_weights_are_shares_for_coordinate_rules():
    n = 10
    stacked = random_stacked(n, seed=13, n_rows=0)
    w = _weights(n, 13)
    for name in ("median", "trimmed_mean", "bulyan", "itemwise_median"):
        st_ = random_stacked(n, seed=13) if name.startswith("itemwise") else stacked
        _, info = _build(name, n)(st_, w, make_context(st_))
        assert float(info.weights.sum()) == pytest.approx(1.0)
    # the median of 3 scalar clients: all weight on the middle one
    _, info = build_defense("median", {})({"p": torch.tensor([[1.0], [5.0], [3.0]])},
                                           torch.ones(3))
    torch.testing.assert_close(info.weights, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_item_key_constant_matches_context():
    stacked = random_stacked(5, seed=0)
    assert make_context(stacked).item_param_names == (ITEM_KEY,)
