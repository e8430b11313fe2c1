"""Multi-objective gradient combiners: GradCraft, equal weighting, PCGrad and MGDA.

Every combiner is a pure function of a task-gradient matrix ``grads: Tensor[T, d]`` (row ``t`` is
the flattened gradient of task ``t``'s loss) and an optional mask ``has_grad: BoolTensor[T, d]``
(``has_grad[t, k]`` is True when task ``t`` touches coordinate ``k``; ``None`` means every task
touches everything). It returns one merged gradient ``Tensor[d]`` in the dtype of ``grads``.

Methods
-------
* GradCraft -- Y. Bai et al., "Elevating Multi-task Recommendations through Holistic Gradient
  Crafting", KDD 2024, arXiv:2407.19682. Magnitude alignment toward the largest task
  norm, then *global* direction deconfliction (each task projected against all tasks it
  conflicts with at once), then a mean/sum merge.
* PCGrad -- T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman, C. Finn, "Gradient Surgery for
  Multi-Task Learning", NeurIPS 2020, arXiv:2001.06782. One-vs-one sequential projection in a
  random task order.
* MGDA -- O. Sener, V. Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018, arXiv:1810.04650. Min-norm point of the convex hull of the task gradients,
  found with Frank--Wolfe on the Gram matrix.
* Equal weighting -- the plain sum of task gradients (the gradient of the summed loss).

Deviation from the GradCraft reference code (documented on purpose)
--------------------------------------------------------------------
The reference code inverts ``G Gᵀ`` with ``torch.inverse`` in float32. Here the T x T Gram matrix
of the aligned gradients is formed once in float64 and each task's small system is solved with
``torch.linalg.solve``; when the system is (numerically) rank deficient -- e.g. two conflicting
task gradients are parallel -- it falls back to the minimum-norm least-squares solution of
``torch.linalg.lstsq`` (driver ``gelsd``). With full-rank conflict sets the result is the same
as the reference; with rank-deficient ones the reference would return inf/NaN or garbage.
A parameter counts as "untouched" by a task when its gradient is ``None`` or *all* zero; the
reference tests ``grad.sum() == 0``, which can also fire by cancellation.

``Combiner`` is the thin, validated wrapper (name + params, plus the random generator PCGrad
needs); ``COMBINERS`` maps names to the pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from fedrec.errors import ConfigError

__all__ = [
    "COMBINERS",
    "Combiner",
    "align_magnitudes",
    "available_combiners",
    "conflict_sets",
    "deconflict",
    "equal_weighting",
    "get_combiner",
    "gradcraft",
    "merge_shared_mean",
    "mgda",
    "mgda_weights",
    "pcgrad",
]

# Relative eigenvalue threshold below which a conflict-set Gram matrix is treated as singular.
_RANK_RTOL = 1e-12


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not (0.0 <= tau <= 1.0):
        raise ConfigError(f"tau: expected a number in [0, 1], got {tau}")
    return tau


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ConfigError(f"eps: expected a finite number >= 0, got {eps}")
    return eps


def _check_inputs(grads: Tensor, has_grad: Tensor | None) -> Tensor:
    """Validate shapes; return a boolean mask [T, d] (all True when ``has_grad`` is None)."""
    if not isinstance(grads, Tensor) or grads.dim() != 2:
        shape = tuple(grads.shape) if isinstance(grads, Tensor) else type(grads).__name__
        raise ValueError(f"grads: expected a 2-D tensor [T, d], got {shape}")
    if grads.shape[0] < 1:
        raise ValueError("grads: expected at least one task row, got T = 0")
    if not torch.is_floating_point(grads):
        raise ValueError(f"grads: expected a floating-point tensor, got {grads.dtype}")
    if has_grad is None:
        return torch.ones(grads.shape, dtype=torch.bool, device=grads.device)
    if tuple(has_grad.shape) != tuple(grads.shape):
        raise ValueError(
            f"has_grad: expected shape {tuple(grads.shape)} like grads, got {tuple(has_grad.shape)}"
        )
    return has_grad.to(torch.bool)


# --------------------------------------------------------------------------------------------
# GradCraft building blocks
# --------------------------------------------------------------------------------------------
def align_magnitudes(grads: Tensor, tau: float = 0.1) -> Tensor:
    """Scale every task gradient toward the largest task norm.

    ``ĝ_i = τ · (max_j ‖g_j‖ / ‖g_i‖) · g_i + (1 − τ) · g_i``. Afterwards
    ``‖ĝ_i‖ = (τ · M + (1 − τ) · ‖g_i‖)`` with ``M = max_j ‖g_j‖``, so
    ``max_j ‖ĝ_j‖ / min_i ‖ĝ_i‖ ≤ 1/τ``; ``τ = 0`` is the identity and ``τ = 1`` gives every task
    the norm ``M``. Rows with zero norm stay zero.

    Parameters
    ----------
    grads : Tensor
        Task gradients, shape ``[T, d]``.
    tau : float
        Alignment strength in ``[0, 1]``.

    Returns
    -------
    Tensor
        Aligned gradients ``ĝ``, same shape and dtype as ``grads``.

    Raises
    ------
    ConfigError
        If ``tau`` is outside ``[0, 1]``.
    """
    tau = _check_tau(tau)
    _check_inputs(grads, None)
    norms = grads.norm(dim=1)
    top = norms.max()
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    scale = torch.where(norms > 0, tau * top / safe + (1.0 - tau), torch.ones_like(norms))
    return grads * scale[:, None]


def conflict_sets(g_hat: Tensor) -> list[list[int]]:
    """Conflict set of each task: ``C_i = {j : ⟨ĝ_i, ĝ_j⟩ < 0}`` (never contains ``i``).

    Parameters
    ----------
    g_hat : Tensor
        Task gradients, shape ``[T, d]``.

    Returns
    -------
    list of list of int
        ``C_i`` for every task, indices in increasing order.
    """
    gram = g_hat.to(torch.float64) @ g_hat.to(torch.float64).T
    return [torch.nonzero(gram[i] < 0).flatten().tolist() for i in range(g_hat.shape[0])]


def _solve_small(a: Tensor, b: Tensor) -> Tensor:
    """Solve the symmetric PSD system ``a w = b``; min-norm least squares if rank deficient."""
    eig = torch.linalg.eigvalsh(a)
    if eig.min() > _RANK_RTOL * max(float(eig.max()), 0.0) and eig.min() > 0:
        return torch.linalg.solve(a, b)
    # rank deficient (parallel / dependent conflicting gradients): minimum-norm LS solution
    return torch.linalg.lstsq(a[None], b[None, :, None], driver="gelsd").solution[0, :, 0]


def deconflict(g_hat: Tensor, eps: float = 1e-10) -> Tensor:
    """Global direction deconfliction of GradCraft.

    For every task ``i`` with conflict set ``C_i = {j : ⟨ĝ_i, ĝ_j⟩ < 0}`` and ``G_i`` the stacked
    rows ``ĝ_j, j ∈ C_i``, returns ``g̃_i = ĝ_i + G_iᵀ w`` where ``w`` solves
    ``G_i G_iᵀ w = −G_i ĝ_i + z`` with ``z_j = ε‖ĝ_i‖‖ĝ_j‖``; hence
    ``⟨g̃_i, ĝ_j⟩ = ε‖ĝ_i‖‖ĝ_j‖`` for every ``j ∈ C_i``. Every task is projected against the
    *original* ``ĝ`` (not sequentially), and tasks with an empty conflict set are unchanged.
    Computation is in float64 from the T x T Gram matrix, so the cost is one ``[T, d] x [d, T]``
    product plus T tiny solves.

    Parameters
    ----------
    g_hat : Tensor
        (Aligned) task gradients, shape ``[T, d]``.
    eps : float
        Small non-negative target for the projected inner products.

    Returns
    -------
    Tensor
        Projected gradients ``g̃``, same shape and dtype as ``g_hat``.

    Raises
    ------
    ConfigError
        If ``eps`` is negative or not finite.
    """
    eps = _check_eps(eps)
    _check_inputs(g_hat, None)
    g64 = g_hat.to(torch.float64)
    gram = g64 @ g64.T
    norms = gram.diagonal().clamp_min(0).sqrt()
    n_tasks = g_hat.shape[0]
    coef = torch.eye(n_tasks, dtype=torch.float64, device=g_hat.device)
    for i in range(n_tasks):
        idx = torch.nonzero(gram[i] < 0).flatten()
        if idx.numel() == 0:
            continue
        a = gram[idx][:, idx]
        rhs = -gram[idx, i] + eps * norms[i] * norms[idx]
        coef[i, idx] = _solve_small(a, rhs)
    return (coef @ g64).to(g_hat.dtype)


def merge_shared_mean(task_grads: Tensor, has_grad: Tensor | None = None) -> Tensor:
    """Merge rule of GradCraft: mean on coordinates every task touches, sum elsewhere.

    Parameters
    ----------
    task_grads : Tensor
        Per-task (projected) gradients, shape ``[T, d]``.
    has_grad : Tensor or None
        Boolean mask ``[T, d]``; a coordinate is *shared* when all tasks touch it.

    Returns
    -------
    Tensor
        Merged gradient, shape ``[d]``.
    """
    mask = _check_inputs(task_grads, has_grad)
    shared = mask.all(dim=0)
    return torch.where(shared, task_grads.mean(dim=0), task_grads.sum(dim=0))


def gradcraft(
    grads: Tensor, has_grad: Tensor | None = None, tau: float = 0.1, eps: float = 1e-10
) -> Tensor:
    """GradCraft (Bai et al., KDD 2024): align magnitudes, deconflict globally, merge.

    Parameters
    ----------
    grads : Tensor
        Task gradients, shape ``[T, d]``.
    has_grad : Tensor or None
        Boolean mask ``[T, d]`` of coordinates each task touches (``None``: all shared).
    tau : float
        Magnitude-alignment strength in ``[0, 1]`` (paper default 0.1).
    eps : float
        Target ``ε`` of the projected inner products, ``>= 0`` (paper default 1e-10).

    Returns
    -------
    Tensor
        Merged gradient, shape ``[d]``, dtype of ``grads``.

    Raises
    ------
    ConfigError
        If ``tau`` or ``eps`` is out of range.
    ValueError
        If the shapes of ``grads`` / ``has_grad`` are wrong.
    """
    tau, eps = _check_tau(tau), _check_eps(eps)
    mask = _check_inputs(grads, has_grad)
    return merge_shared_mean(deconflict(align_magnitudes(grads, tau), eps), mask)


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
_REDUCTIONS = ("sum", "mean", "shared_mean")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction: expected one of {list(_REDUCTIONS)}, got {reduction!r}")
    return reduction


def _reduce(task_grads: Tensor, mask: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return task_grads.sum(dim=0)
    if reduction == "mean":
        return task_grads.mean(dim=0)
    return merge_shared_mean(task_grads, mask)


def equal_weighting(
    grads: Tensor, has_grad: Tensor | None = None, reduction: str = "sum"
) -> Tensor:
    """Equal weighting: the sum (default) of the task gradients.

    The sum is the gradient of ``Σ_t L_t``, i.e. exactly what one backward pass on the summed
    loss gives, and it leaves each task-specific tower with its own unscaled gradient. ``"mean"``
    divides everything by ``T`` (a global rescaling that Adam essentially ignores);
    ``"shared_mean"`` applies GradCraft's merge rule for an ablation.

    Parameters
    ----------
    grads : Tensor
        Task gradients, shape ``[T, d]``.
    has_grad : Tensor or None
        Boolean mask ``[T, d]`` (only used by ``reduction="shared_mean"``).
    reduction : {"sum", "mean", "shared_mean"}
        How task gradients are merged.

    Returns
    -------
    Tensor
        Merged gradient, shape ``[d]``.

    Raises
    ------
    ConfigError
        If ``reduction`` is unknown.
    """
    reduction = _check_reduction(reduction)
    mask = _check_inputs(grads, has_grad)
    return _reduce(grads, mask, reduction)


def pcgrad(
    grads: Tensor,
    has_grad: Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "sum",
) -> Tensor:
    """PCGrad (Yu et al., NeurIPS 2020): one-vs-one projection in a random order, then merge.

    For each task ``i``, ``g_i^PC`` starts at ``g_i``; for every other task ``j`` in a random
    order (drawn independently per ``i`` from ``generator``), if ``⟨g_i^PC, g_j⟩ < 0`` then
    ``g_i^PC ← g_i^PC − ⟨g_i^PC, g_j⟩ / ‖g_j‖² · g_j``. Projections are always against the
    *original* ``g_j``. The result is merged by ``reduction`` (the paper sums).

    Parameters
    ----------
    grads : Tensor
        Task gradients, shape ``[T, d]``.
    has_grad : Tensor or None
        Boolean mask ``[T, d]`` (only used by ``reduction="shared_mean"``).
    generator : torch.Generator or None
        Source of the random task orders (global RNG when None).
    reduction : {"sum", "mean", "shared_mean"}
        Merge rule for the projected gradients.

    Returns
    -------
    Tensor
        Merged gradient, shape ``[d]``, dtype of ``grads``.
    """
    reduction = _check_reduction(reduction)
    mask = _check_inputs(grads, has_grad)
    g64 = grads.to(torch.float64)
    sq = (g64 * g64).sum(dim=1)
    n_tasks = grads.shape[0]
    out = g64.clone()
    for i in range(n_tasks):
        order = torch.randperm(n_tasks, generator=generator).tolist()
        gi = out[i]
        for j in order:
            if j == i or sq[j] == 0:
                continue
            dot = torch.dot(gi, g64[j])
            if dot < 0:
                gi = gi - (dot / sq[j]) * g64[j]
        out[i] = gi
    return _reduce(out, mask, reduction).to(grads.dtype)


def _min_norm_2(g11: float, g12: float, g22: float) -> float:
    """argmin_{γ∈[0,1]} ‖γ a + (1−γ) b‖² given ⟨a,a⟩, ⟨a,b⟩, ⟨b,b⟩; returns γ."""
    denom = g11 - 2.0 * g12 + g22
    if denom <= 0:  # a == b
        return 0.5
    return min(1.0, max(0.0, (g22 - g12) / denom))


def mgda_weights(gram: Tensor, max_iter: int = 250, tol: float = 1e-10) -> Tensor:
    """Frank--Wolfe for ``min_{α ∈ simplex} αᵀ M α`` on a Gram matrix ``M`` (Sener & Koltun).

    Starts from the best pair's closed-form 2-task solution (or ``e_0`` for a single task),
    then repeats: pick ``t = argmin_r (Mα)_r`` and do an exact line search between the current
    point ``Σ α_r g_r`` and ``g_t``.

    Parameters
    ----------
    gram : Tensor
        ``M = G Gᵀ``, shape ``[T, T]``.
    max_iter : int
        Maximum number of Frank--Wolfe iterations.
    tol : float
        Stop when the step changes ``α`` by less than this (L1).

    Returns
    -------
    Tensor
        Weights ``α`` on the simplex, shape ``[T]``, float64.
    """
    m = gram.to(torch.float64)
    n = m.shape[0]
    alpha = torch.zeros(n, dtype=torch.float64, device=m.device)
    if n == 1:
        alpha[0] = 1.0
        return alpha
    best, best_pair = math.inf, (0, 1, 0.5)
    for a in range(n):
        for b in range(a + 1, n):
            gam = _min_norm_2(float(m[a, a]), float(m[a, b]), float(m[b, b]))
            val = gam * gam * m[a, a] + 2 * gam * (1 - gam) * m[a, b] + (1 - gam) ** 2 * m[b, b]
            if float(val) < best:
                best, best_pair = float(val), (a, b, gam)
    a, b, gam = best_pair
    alpha[a], alpha[b] = gam, 1.0 - gam
    for _ in range(max_iter):
        m_alpha = m @ alpha
        t = int(torch.argmin(m_alpha))
        v1v1 = float(alpha @ m_alpha)  # ‖current‖²
        v1v2 = float(m_alpha[t])  # ⟨current, g_t⟩
        v2v2 = float(m[t, t])
        gam = _min_norm_2(v1v1, v1v2, v2v2)
        new = gam * alpha
        new[t] += 1.0 - gam
        change = float((new - alpha).abs().sum())
        alpha = new
        if change < tol:
            break
    return alpha


def mgda(
    grads: Tensor,
    has_grad: Tensor | None = None,
    scope: str = "shared",
    max_iter: int = 250,
    tol: float = 1e-10,
) -> Tensor:
    """MGDA (Sener & Koltun, NeurIPS 2018): min-norm point of the convex hull of task gradients.

    The simplex weights ``α`` are found by :func:`mgda_weights` on the Gram matrix. With
    ``scope="shared"`` (the paper's formulation) the Gram matrix uses only coordinates every task
    touches; shared coordinates get ``Σ α_t g_t`` and task-specific ones get the plain sum of the
    task gradients there (each task's own gradient on its tower). With ``scope="all"`` the whole
    vector is used and the result is ``Σ α_t g_t`` everywhere (what the GradCraft repository's
    baseline does via a weighted loss). No gradient normalization is applied.

    Parameters
    ----------
    grads : Tensor
        Task gradients, shape ``[T, d]``.
    has_grad : Tensor or None
        Boolean mask ``[T, d]``; ``None`` means every coordinate is shared.
    scope : {"shared", "all"}
        Which coordinates define the min-norm problem (see above).
    max_iter : int
        Maximum Frank--Wolfe iterations.
    tol : float
        Convergence tolerance on the change of ``α``.

    Returns
    -------
    Tensor
        Merged gradient, shape ``[d]``, dtype of ``grads``.

    Raises
    ------
    ConfigError
        If ``scope`` is unknown or ``max_iter`` < 1.
    """
    if scope not in ("shared", "all"):
        raise ConfigError(f"scope: expected 'shared' or 'all', got {scope!r}")
    if int(max_iter) < 1:
        raise ConfigError(f"max_iter: expected an integer >= 1, got {max_iter}")
    mask = _check_inputs(grads, has_grad)
    g64 = grads.to(torch.float64)
    if scope == "all":
        alpha = mgda_weights(g64 @ g64.T, int(max_iter), float(tol))
        return (alpha @ g64).to(grads.dtype)
    shared = mask.all(dim=0)
    gs = g64[:, shared]
    alpha = mgda_weights(gs @ gs.T, int(max_iter), float(tol))
    merged = torch.where(shared, alpha @ g64, g64.sum(dim=0))
    return merged.to(grads.dtype)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
COMBINERS: dict[str, Callable[..., Tensor]] = {
    "gradcraft": gradcraft,
    "equal_weighting": equal_weighting,
    "pcgrad": pcgrad,
    "mgda": mgda,
}

# name -> {param: validator}; validators return the cleaned value or raise ConfigError.
def _check_int_ge1(name: str) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < 1:
            raise ConfigError(f"{name}: expected an integer >= 1, got {v!r}")
        return int(v)

    return check


def _check_pos_float(name: str) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not (v > 0):
            raise ConfigError(f"{name}: expected a number > 0, got {v!r}")
        return float(v)

    return check


def _check_choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ConfigError(f"{name}: expected one of {list(choices)}, got {v!r}")
        return str(v)

    return check


def _check_number(name: str, fn: Callable[[float], float]) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{name}: expected a number, got {v!r}")
        return fn(v)

    return check


def _check_seed(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {v!r}")
    return int(v)


_PARAM_CHECKS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "gradcraft": {"tau": _check_number("tau", _check_tau), "eps": _check_number("eps", _check_eps)},
    "equal_weighting": {"reduction": _check_choice("reduction", _REDUCTIONS)},
    "pcgrad": {"reduction": _check_choice("reduction", _REDUCTIONS), "seed": _check_seed},
    "mgda": {
        "scope": _check_choice("scope", ("shared", "all")),
        "max_iter": _check_int_ge1("max_iter"),
        "tol": _check_pos_float("tol"),
    },
}


def available_combiners() -> list[str]:
    """Names accepted by :class:`Combiner` / :func:`get_combiner`, sorted."""
    return sorted(COMBINERS)


class Combiner:
    """A named combiner with validated parameters; call it as ``combiner(grads, has_grad)``.

    Parameters
    ----------
    name : str
        One of :func:`available_combiners`.
    **params
        Keyword parameters of the underlying function. ``pcgrad`` additionally takes ``seed``
        (int, default 0) for its private ``torch.Generator``, so runs are reproducible.

    Raises
    ------
    ConfigError
        Unknown name, unknown parameter, or a parameter out of range (message names it).
    """

    def __init__(self, name: str, **params: Any) -> None:
        if name not in COMBINERS:
            raise ConfigError(
                f"combiner: unknown name {name!r}; expected one of {available_combiners()}"
            )
        checks = _PARAM_CHECKS[name]
        clean: dict[str, Any] = {}
        for key, value in params.items():
            if key not in checks:
                raise ConfigError(
                    f"combiner.{key}: unknown parameter for {name!r}; "
                    f"expected one of {sorted(checks)}"
                )
            clean[key] = checks[key](value)
        self.name = name
        self.params = clean
        self._fn = COMBINERS[name]
        self._generator: torch.Generator | None = None
        if name == "pcgrad":
            self._generator = torch.Generator().manual_seed(clean.get("seed", 0))

    def __call__(self, grads: Tensor, has_grad: Tensor | None = None) -> Tensor:
        """Merge ``grads [T, d]`` (with mask ``has_grad [T, d]``) into one gradient ``[d]``."""
        kwargs = {k: v for k, v in self.params.items() if k != "seed"}
        if self._generator is not None:
            kwargs["generator"] = self._generator
        return self._fn(grads, has_grad, **kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Combiner({self.name!r}{', ' if args else ''}{args})"


def get_combiner(name: str, params: Mapping[str, Any] | None = None) -> Combiner:
    """Build a validated :class:`Combiner` from a name and a parameter mapping.

    Parameters
    ----------
    name : str
        Combiner name.
    params : Mapping or None
        Parameters (see :class:`Combiner`).

    Returns
    -------
    Combiner
        The callable combiner.

    Raises
    ------
    ConfigError
        See :class:`Combiner`.
    """
    return Combiner(name, **dict(params or {}))
