"""Generic multi-objective backward pass: per-task gradients -> combiner -> ``.grad``.

Works with any model that produces several scalar losses (multi-task rankers, or a sequential
recommender trained with next-item + contrastive + MMD losses). It runs one
``torch.autograd.grad`` pass per loss, flattens the gradients of all parameters into a
``[T, d]`` matrix with a per-parameter ``has_grad`` mask, merges them with a combiner from
:mod:`fedrec.baselines.gradcraft.combiners` (GradCraft, Bai et al., KDD 2024, arXiv:2407.19682,
or a baseline) and writes the result into ``p.grad`` so any ``torch.optim`` optimizer can step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fedrec.baselines.gradcraft.combiners import Combiner, get_combiner

__all__ = ["collect_task_gradients", "multi_objective_backward"]


def _as_params(model_or_params: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(model_or_params, nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = [p for p in model_or_params if p.requires_grad]
    if not params:
        raise ValueError("model_or_params: expected at least one tensor with requires_grad=True")
    return params


def collect_task_gradients(
    params: Sequence[Tensor], losses: Sequence[Tensor], retain_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-task flattened gradients and per-parameter "touched" mask.

    Parameters
    ----------
    params : Sequence[Tensor]
        Parameters to differentiate (all with ``requires_grad``).
    losses : Sequence[Tensor]
        ``T`` scalar losses.
    retain_graph : bool
        Keep the graph after the last pass (earlier passes always retain it).

    Returns
    -------
    grads : Tensor
        ``[T, d]`` with ``d = Σ p.numel()``, dtype of the first parameter; untouched parameters
        contribute zeros.
    touched : Tensor
        ``[T, P]`` boolean: ``touched[t, k]`` is False when parameter ``k``'s gradient for task
        ``t`` is ``None`` or all zero.

    Raises
    ------
    ValueError
        If ``losses`` is empty or a loss is not a scalar.
    """
    if len(losses) == 0:
        raise ValueError("losses: expected at least one loss, got an empty sequence")
    n_tasks = len(losses)
    sizes = [p.numel() for p in params]
    dtype = params[0].dtype
    device = params[0].device
    grads = torch.zeros(n_tasks, sum(sizes), dtype=dtype, device=device)
    touched = torch.zeros(n_tasks, len(params), dtype=torch.bool, device=device)
    for t, loss in enumerate(losses):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"losses[{t}]: expected a scalar tensor")
        task_grads = torch.autograd.grad(
            loss.reshape(()),
            params,
            allow_unused=True,
            retain_graph=retain_graph or t < n_tasks - 1,
        )
        offset = 0
        for k, (g, n) in enumerate(zip(task_grads, sizes, strict=True)):
            if g is not None:
                flat = g.reshape(-1)
                if bool(flat.any()):
                    touched[t, k] = True
                    grads[t, offset : offset + n] = flat
            offset += n
    return grads, touched


def multi_objective_backward(
    model_or_params: nn.Module | Iterable[Tensor],
    losses: Sequence[Tensor],
    combiner: Combiner | Callable[[Tensor, Tensor], Tensor] | str,
    *,
    retain_graph: bool = False,
) -> dict[str, Any]:
    """Compute task gradients, merge them with ``combiner`` and write the result into ``.grad``.

    Runs ``T`` backward passes (``torch.autograd.grad(..., allow_unused=True,
    retain_graph=True)``), builds the ``[T, d]`` gradient matrix and the ``[T, d]`` mask (expanded
    from whole-tensor "touched" flags), calls ``combiner(grads, has_grad)`` and **overwrites**
    ``p.grad`` of every parameter with its slice of the merged vector. Call
    ``optimizer.step()`` afterwards; no ``zero_grad`` is needed.

    Parameters
    ----------
    model_or_params : nn.Module or iterable of Tensor
        The model (its parameters with ``requires_grad``) or the parameters themselves.
    losses : Sequence[Tensor]
        ``T >= 1`` scalar losses built from the same forward pass.
    combiner : Combiner, callable or str
        ``(grads [T, d], has_grad [T, d]) -> merged [d]``; a string is passed to
        :func:`~fedrec.baselines.gradcraft.combiners.get_combiner` with default parameters.
    retain_graph : bool
        Keep the autograd graph after the last pass.

    Returns
    -------
    dict
        ``losses`` (list of float), ``task_grad_norms`` (list of float), ``merged_grad_norm``
        (float), ``num_conflicting_pairs`` (int, pairs ``i < j`` with ``⟨g_i, g_j⟩ < 0`` before
        combination), ``num_backward_passes`` (int, ``T``) and ``touched`` (``[T, P]`` bool).

    Raises
    ------
    ValueError
        If there are no trainable parameters, no losses, or the combiner output has the wrong
        shape.
    """
    params = _as_params(model_or_params)
    if isinstance(combiner, str):
        combiner = get_combiner(combiner)
    grads, touched = collect_task_gradients(params, losses, retain_graph=retain_graph)
    sizes = torch.tensor([p.numel() for p in params], device=grads.device)
    has_grad = torch.repeat_interleave(touched, sizes, dim=1)
    merged = combiner(grads, has_grad)
    if tuple(merged.shape) != (grads.shape[1],):
        raise ValueError(
            f"combiner: expected a merged gradient of shape ({grads.shape[1]},), "
            f"got {tuple(merged.shape)}"
        )
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = merged[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    g64 = grads.to(torch.float64)
    gram = g64 @ g64.T
    n_conflicts = int(torch.triu(gram < 0, diagonal=1).sum())
    return {
        "losses": [float(v.detach()) for v in losses],
        "task_grad_norms": gram.diagonal().sqrt().tolist(),
        "merged_grad_norm": float(merged.norm()),
        "num_conflicting_pairs": n_conflicts,
        "num_backward_passes": len(losses),
        "touched": touched,
    }
