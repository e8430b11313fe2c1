"""Tests for the GradCraft combiner, its baselines (EW, PCGrad, MGDA), the multi-loss backward step
and the AUC/GAUC metrics (fedrec.baselines.gradcraft)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.baselines.gradcraft.combiners import (
    Combiner,
    align_magnitudes,
    conflict_sets,
    deconflict,
    equal_weighting,
    get_combiner,
    gradcraft,
    merge_shared_mean,
    mgda,
    mgda_weights,
    pcgrad,
)
from fedrec.baselines.gradcraft.metrics import auc, gauc
from fedrec.baselines.gradcraft.mtl import PLE
from fedrec.baselines.gradcraft.step import multi_objective_backward
from fedrec.errors import ConfigError


def random_task_grads(seed: int, n_tasks: int = 6, dim: int = 40) -> torch.Tensor:
    """Correlated task gradients (shared component +/- private parts), norms over 4 decades."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=gen, dtype=torch.float64)
    signs = torch.where(torch.rand(n_tasks, generator=gen) < 0.4, -1.0, 1.0).double()
    private = torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
    g = signs[:, None] * common + 1.2 * private
    scales = 10.0 ** torch.empty(n_tasks, dtype=torch.float64).uniform_(-2, 2, generator=gen)
    return g * scales[:, None]


def pcgrad_pair(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """PCGrad projection of g against h (only when they conflict)."""
    dot = g @ h
    return g - dot / (h @ h) * h if dot < 0 else g


# --------------------------------------------------------------------------------------------
# GradCraft: magnitude alignment
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.1, 0.3, 0.5, 1.0])
def test_alignment_norm_ratio_bounded_by_inverse_tau(tau: float) -> None:
    worst = 0.0
    for seed in range(20):
        g = random_task_grads(seed)
        norms = align_magnitudes(g, tau).norm(dim=1)
        ratio = float(norms.max() / norms.min())
        assert ratio <= 1.0 / tau * (1 + 1e-12)
        worst = max(worst, ratio)
    # a task with a vanishing norm drives the ratio to the bound itself
    g = torch.tensor([[1e6, 0.0], [0.0, 1e-9]], dtype=torch.float64)
    norms = align_magnitudes(g, tau).norm(dim=1)
    assert float(norms.max() / norms.min()) == pytest.approx(1.0 / tau, rel=1e-6)
    assert worst > 1.0


def test_alignment_tau_zero_is_identity_and_tau_one_equalises() -> None:
    g = random_task_grads(3)
    assert torch.equal(align_magnitudes(g, 0.0), g)
    norms = align_magnitudes(g, 1.0).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(g.norm(dim=1).max())))
    # directions never change
    cos = F.cosine_similarity(align_magnitudes(g, 0.4), g, dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_alignment_keeps_zero_rows_zero() -> None:
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    out = align_magnitudes(g, 0.5)
    assert torch.equal(out[1], torch.zeros(2, dtype=torch.float64))
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# GradCraft: global deconfliction
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 1e-10, 1e-3])
def test_projection_hits_eps_target_on_every_conflicting_pair(eps: float) -> None:
    checked = 0
    for seed in range(40):
        g_hat = align_magnitudes(random_task_grads(seed), 0.1)
        norms = g_hat.norm(dim=1)
        sets = conflict_sets(g_hat)  # computed on ĝ before projection
        g_tilde = deconflict(g_hat, eps)
        for i, c_i in enumerate(sets):
            for j in c_i:
                scale = float(norms[i] * norms[j])
                got = float(g_tilde[i] @ g_hat[j])
                assert abs(got - eps * scale) <= 1e-6 * scale, (seed, i, j)
                checked += 1
    assert checked > 50  # the random draws really contain conflicts


def test_tasks_without_conflicts_are_unchanged() -> None:
    seen_empty = 0
    for seed in range(40):
        g_hat = random_task_grads(seed)
        g_tilde = deconflict(g_hat, 1e-10)
        for i, c_i in enumerate(conflict_sets(g_hat)):
            if not c_i:
                assert torch.equal(g_tilde[i], g_hat[i])
                seen_empty += 1
    assert seen_empty > 0
    # a hand-made case: task 0 agrees with both others, tasks 1 and 2 conflict
    g = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.5, 0.0, -1.0]], dtype=torch.float64)
    out = deconflict(g, 0.0)
    assert torch.equal(out[0], g[0])
    assert not torch.equal(out[1], g[1])


def test_guarantee_is_only_on_the_conflict_set() -> None:
    # Spec warning: a pair that did not conflict before projection CAN conflict afterwards, so
    # "no negative inner products after projection" is not a property of GradCraft. Show that
    # such cases exist (while every conflicting pair still hits its target).
    turned_negative = 0
    for seed in range(30):
        g_hat = align_magnitudes(random_task_grads(seed), 0.1)
        g_tilde = deconflict(g_hat, 1e-10)
        for i, c_i in enumerate(conflict_sets(g_hat)):
            others = [j for j in range(g_hat.shape[0]) if j != i and j not in c_i]
            turned_negative += int(sum(float(g_tilde[i] @ g_hat[j]) < 0 for j in others))
    assert turned_negative > 0


def test_projection_stays_in_span_of_conflict_set() -> None:
    for seed in range(30):
        g_hat = align_magnitudes(random_task_grads(seed), 0.2)
        g_tilde = deconflict(g_hat, 1e-10)
        for i, c_i in enumerate(conflict_sets(g_hat)):
            if not c_i:
                continue
            delta = g_tilde[i] - g_hat[i]
            basis = g_hat[c_i].T  # [d, n]
            coef = torch.linalg.lstsq(basis, delta[:, None]).solution
            residual = (basis @ coef)[:, 0] - delta
            assert float(residual.norm()) <= 1e-9 * float(delta.norm() + g_hat[i].norm())


def test_projection_is_against_original_set_not_sequential() -> None:
    # three mutually conflicting tasks: each projected vector is orthogonal (eps = 0) to BOTH
    # original others -- a sequential one-vs-one scheme generally is not.
    g = torch.tensor([[1.0, 0.0, 0.2], [-0.6, 1.0, 0.1], [-0.5, -0.9, 0.3]], dtype=torch.float64)
    assert conflict_sets(g) == [[1, 2], [0, 2], [0, 1]]
    out = deconflict(g, 0.0)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert abs(float(out[i] @ g[j])) < 1e-12
    seq = pcgrad_pair(pcgrad_pair(g[0], g[1]), g[2])
    assert abs(float(seq @ g[1])) > 1e-3


def test_two_tasks_reduce_exactly_to_pcgrad() -> None:
    gen = torch.Generator().manual_seed(0)
    n_conflicting = 0
    for _ in range(20):
        g = torch.randn(2, 30, generator=gen, dtype=torch.float64)
        expected = torch.stack([pcgrad_pair(g[0], g[1]), pcgrad_pair(g[1], g[0])])
        n_conflicting += int(g[0] @ g[1] < 0)
        torch.testing.assert_close(deconflict(g, 0.0), expected, rtol=1e-12, atol=1e-12)
        # the whole combiner (tau = 0, eps = 0, all shared) == PCGrad with the same merge
        torch.testing.assert_close(
            gradcraft(g, None, tau=0.0, eps=0.0),
            pcgrad(g, None, generator=gen, reduction="mean"),
            rtol=1e-12,
            atol=1e-12,
        )
    assert n_conflicting > 0


def test_rank_deficient_conflict_set_is_solved_without_nans() -> None:
    # task 0 conflicts with two identical gradients: G Gᵀ is singular (torch.inverse would fail)
    g = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    eps = 1e-3
    out = deconflict(g, eps)
    assert torch.isfinite(out).all()
    for j in (1, 2):
        assert float(out[0] @ g[j]) == pytest.approx(eps * float(g[0].norm() * g[j].norm()))
    # more conflicting tasks than dimensions
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [-1.0, -0.5], [-0.5, 2.0]], dtype=torch.float64)
    assert torch.isfinite(gradcraft(g)).all()


# --------------------------------------------------------------------------------------------
# merge rule
# --------------------------------------------------------------------------------------------
def test_merge_mean_on_shared_sum_on_task_specific() -> None:
    gen = torch.Generator().manual_seed(1)
    n_tasks, d_shared, d_tower = 3, 8, 4
    d = d_shared + n_tasks * d_tower
    grads = torch.zeros(n_tasks, d, dtype=torch.float64)
    has = torch.zeros(n_tasks, d, dtype=torch.bool)
    for t in range(n_tasks):
        tower = range(d_shared + t * d_tower, d_shared + (t + 1) * d_tower)
        cols = list(range(d_shared)) + list(tower)
        grads[t, cols] = torch.randn(len(cols), generator=gen, dtype=torch.float64)
        has[t, cols] = True
    grads[1, :d_shared] = -grads[0, :d_shared]  # make sure some projection happens
    tau, eps = 0.3, 1e-10
    projected = deconflict(align_magnitudes(grads, tau), eps)
    merged = gradcraft(grads, has, tau=tau, eps=eps)
    torch.testing.assert_close(merged[:d_shared], projected[:, :d_shared].mean(0))
    torch.testing.assert_close(merged[d_shared:], projected[:, d_shared:].sum(0))
    torch.testing.assert_close(merge_shared_mean(projected, has), merged)


def test_merge_keeps_own_tower_gradient_when_nothing_conflicts() -> None:
    # no conflicts: a tower only task k touches receives exactly ĝ_k there (not ĝ_k / T)
    grads = torch.tensor([[1.0, 0.5, 2.0, 0.0], [1.0, 0.2, 0.0, -3.0]], dtype=torch.float64)
    has = grads != 0
    has[:, :2] = True
    out = gradcraft(grads, has, tau=0.0)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.35, 2.0, -3.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
def test_equal_weighting_sum_and_mean() -> None:
    g = random_task_grads(0, n_tasks=3)
    torch.testing.assert_close(equal_weighting(g), g.sum(0))
    torch.testing.assert_close(equal_weighting(g, reduction="mean"), g.mean(0))


def test_pcgrad_projects_one_vs_one_against_original_gradients() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    # task 0 conflicts only with task 1, task 1 only with task 0, task 2 with nobody
    expected = pcgrad_pair(g[0], g[1]) + pcgrad_pair(g[1], g[0]) + g[2]
    torch.testing.assert_close(pcgrad(g, generator=torch.Generator().manual_seed(0)), expected)
    # no conflicts at all: PCGrad is plain summation
    h = torch.tensor([[1.0, 0.2], [0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(pcgrad(h), h.sum(0))


def test_pcgrad_order_depends_on_generator_and_is_reproducible() -> None:
    g = torch.tensor([[1.0, 0.0, 0.0], [-0.8, 1.0, 0.0], [-0.3, -1.0, 0.5]], dtype=torch.float64)
    outs = {
        tuple(pcgrad(g, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(20)
    }
    assert len(outs) > 1  # the order matters for mutually conflicting tasks
    a = Combiner("pcgrad", seed=7)
    b = Combiner("pcgrad", seed=7)
    for _ in range(5):
        torch.testing.assert_close(a(g), b(g), rtol=0, atol=0)


def test_mgda_two_vectors_closed_form() -> None:
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        g = torch.randn(2, 5, generator=gen, dtype=torch.float64)
        g1, g2 = g
        gamma = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
        gamma = min(1.0, max(0.0, gamma))
        torch.testing.assert_close(mgda(g), gamma * g1 + (1 - gamma) * g2)
    # a vertex solution: g1 lies "inside" towards the origin -> min-norm point is g1 itself
    g = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(mgda(g), g[0])
    # opposite unit vectors -> the origin
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(mgda(g), torch.zeros(2, dtype=torch.float64))


def test_mgda_frank_wolfe_satisfies_min_norm_optimality() -> None:
    # w = Σ α_t g_t is the min-norm hull point iff ⟨w, g_t⟩ >= ‖w‖² for all t (= on the support)
    for seed in range(10):
        g = random_task_grads(seed, n_tasks=5, dim=12) / 10
        alpha = mgda_weights(g @ g.T, max_iter=5000, tol=1e-15)
        assert float(alpha.sum()) == pytest.approx(1.0)
        assert (alpha >= 0).all()
        w = alpha @ g
        slack = g @ w - w @ w
        assert float(slack.min()) >= -1e-6 * float((g @ g.T).diagonal().max())
        # brute force over a grid on the simplex cannot beat it
        best = min(
            float(((torch.tensor(a, dtype=torch.float64) / 10) @ g).norm())
            for a in itertools.product(range(11), repeat=5)
            if sum(a) == 10
        )
        assert float(w.norm()) <= best + 1e-9


def test_mgda_shared_scope_leaves_towers_with_their_own_gradient() -> None:
    grads = torch.tensor([[1.0, 0.0, 2.0, 0.0], [-1.0, 1.0, 0.0, -3.0]], dtype=torch.float64)
    has = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    out = mgda(grads, has)
    shared = grads[:, :2]
    alpha = mgda_weights(shared @ shared.T)
    torch.testing.assert_close(out[:2], alpha @ shared)
    torch.testing.assert_close(out[2:], torch.tensor([2.0, -3.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# registry / validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("gradcraft", {"tau": 1.5}, "tau"),
        ("gradcraft", {"tau": -0.1}, "tau"),
        ("gradcraft", {"eps": -1e-9}, "eps"),
        ("gradcraft", {"eps": float("nan")}, "eps"),
        ("gradcraft", {"gamma": 1.0}, "gamma"),
        ("mgda", {"max_iter": 0}, "max_iter"),
        ("pcgrad", {"reduction": "median"}, "reduction"),
        ("cagrad", {}, "cagrad"),
    ],
)
def test_registry_rejects_bad_params_with_one_line_message(name, params, field) -> None:
    with pytest.raises(ConfigError) as info:
        get_combiner(name, params)
    msg = str(info.value)
    assert field in msg and "\n" not in msg


def test_pure_function_validates_tau_too() -> None:
    with pytest.raises(ConfigError, match="tau"):
        gradcraft(torch.ones(2, 3), tau=2.0)
    with pytest.raises(ValueError, match="has_grad"):
        gradcraft(torch.ones(2, 3), torch.ones(2, 4, dtype=torch.bool))


def test_registry_combiner_matches_pure_function() -> None:
    g = random_task_grads(5, n_tasks=4)
    has = torch.ones_like(g, dtype=torch.bool)
    c = get_combiner("gradcraft", {"tau": 0.2, "eps": 1e-8})
    torch.testing.assert_close(c(g, has), gradcraft(g, has, tau=0.2, eps=1e-8))


# --------------------------------------------------------------------------------------------
# multi_objective_backward
# --------------------------------------------------------------------------------------------
def _tiny_ple(n_tasks: int = 3) -> PLE:
    torch.manual_seed(0)
    return PLE(
        [10, 12, 3], n_tasks, n_dense=2, embedding_dim=4, expert_units=(16,), tower_units=(8,)
    )


def _batch(n: int = 64, n_tasks: int = 3):
    gen = torch.Generator().manual_seed(1)
    cat = torch.stack(
        [torch.randint(0, v, (n,), generator=gen) for v in (10, 12, 3)], dim=1
    )
    dense = torch.rand(n, 2, generator=gen)
    y = (torch.rand(n, n_tasks, generator=gen) < torch.tensor([0.5, 0.2, 0.05])[:n_tasks]).float()
    y[0] = 1.0  # every task has a positive
    return cat, dense, y


def _losses(model, cat, dense, y):
    logits = model(cat, dense)
    return [F.binary_cross_entropy_with_logits(logits[:, t], y[:, t]) for t in range(y.shape[1])]


def test_training_step_runs_t_backward_passes_and_changes_parameters() -> None:
    model = _tiny_ple()
    cat, dense, y = _batch()
    passes = []
    model.embed.tables[0].weight.register_hook(lambda g: passes.append(1))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    info = multi_objective_backward(model, _losses(model, cat, dense, y), get_combiner("gradcraft"))
    opt.step()
    assert len(passes) == 3 and info["num_backward_passes"] == 3
    assert all(np.isfinite(info["losses"]))
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)  # every parameter has a (merged) gradient
    # has_grad: tower t is touched only by task t, shared parts by all tasks
    names = [n for n, _ in model.named_parameters()]
    touched = info["touched"]
    for k, name in enumerate(names):
        if name.startswith(("towers.", "gates.", "specific_experts.")):
            owner = int(name.split(".")[1])
            assert touched[:, k].tolist() == [t == owner for t in range(3)], name
        else:
            assert touched[:, k].all(), name


def test_equal_weighting_step_equals_backward_on_summed_loss() -> None:
    # float64: per-task gradients summed vs backward() of the summed loss reduce in another
    # order, so their float32 gap depends on the CPU's kernels; in float64 it is ~1e-17
    model = _tiny_ple().double()
    cat, dense, y = _batch()
    dense, y = dense.double(), y.double()
    sum(_losses(model, cat, dense, y)).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    multi_objective_backward(model, _losses(model, cat, dense, y), "equal_weighting")
    for ref, p in zip(reference, model.parameters(), strict=True):
        assert p.grad.dtype == torch.float64
        torch.testing.assert_close(p.grad, ref, rtol=1e-9, atol=1e-12)


def test_step_treats_none_and_all_zero_gradients_as_untouched() -> None:
    w_shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    w_a = torch.nn.Parameter(torch.tensor([0.5]))
    w_unused = torch.nn.Parameter(torch.tensor([3.0]))
    loss_a = (w_shared.sum() * w_a).sum()
    loss_b = (w_shared**2).sum() + 0.0 * w_a.sum()  # all-zero gradient on w_a
    info = multi_objective_backward(
        [w_shared, w_a, w_unused], [loss_a, loss_b], Combiner("gradcraft", tau=0.0)
    )
    assert info["touched"].tolist() == [[True, True, False], [True, False, False]]
    # no conflict (⟨g_a, g_b⟩ > 0): shared -> mean, w_a -> task a's gradient, unused -> 0
    expected_shared = (torch.tensor([0.5, 0.5]) + torch.tensor([2.0, 4.0])) / 2
    torch.testing.assert_close(w_shared.grad, expected_shared)
    torch.testing.assert_close(w_a.grad, torch.tensor([3.0]))
    torch.testing.assert_close(w_unused.grad, torch.tensor([0.0]))


def test_step_rejects_empty_losses() -> None:
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="losses"):
        multi_objective_backward([w], [], "gradcraft")


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60),
)
def test_auc_matches_brute_force_pairwise_count(rows) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float)  # small integer range -> many ties
    if y.min() == y.max():
        assert np.isnan(auc(y, s))
    else:
        assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_gauc_matches_weighted_per_user_brute_force() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 15, size=400)
    y = (rng.random(400) < 0.3).astype(int)
    y[users == 3] = 0  # a single-class user is skipped
    s = np.round(rng.normal(size=400) + y, 1)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if y[m].min() != y[m].max():
            num += m.sum() * brute_auc(y[m], s[m])
            den += m.sum()
    assert gauc(y, s, users) == pytest.approx(num / den, abs=1e-12)
    assert np.isnan(gauc(np.zeros(5), np.arange(5.0), np.zeros(5)))


def test_auc_known_values() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="y_true"):
        auc([0, 2], [0.1, 0.2])
