"""The step loop every run goes through: train steps, periodic evaluation, early stopping,
checkpoints, resume and the metrics log.

A *trainer* (centralized: one step = one epoch over all users; federated: one step = one
server round) implements :class:`Trainer`; :func:`run_loop` drives it. Resuming restores the
trainer state from the last checkpoint, cuts the metrics log back to that step, and continues,
so an interrupted run ends with exactly the metrics of an uninterrupted one.

A number the loop logs is true or absent: after every step the model's parameters are checked,
and every evaluation refuses non-finite scores (:func:`fedrec.evaluation.check_scores`). A
model that became non-finite stops the run with a :class:`~fedrec.errors.NonFiniteError`
naming the step; the metrics log and checkpoint of the steps before it are kept.

Progress: a tqdm bar when ``progress`` is set (a terminal), and one line per step on the
``fedrec.progress`` logger (shown on the console when there is no bar, always written to the
run's ``run.log`` by :mod:`fedrec.runner`).
"""

from __future__ import annotations

import logging
import resource
import time
from abc import ABC, abstractmethod
from typing import Any

import torch
from tqdm.auto import tqdm

from fedrec.errors import ConfigError, NonFiniteError
from fedrec.logs import BAR
from fedrec.results import RunDir

log = logging.getLogger("fedrec")
progress_log = logging.getLogger("fedrec.progress")


class Trainer(ABC):
    """What :func:`run_loop` needs from a training procedure."""

    #: name of one step in progress bars and logs ("epoch" or "round")
    unit: str = "step"

    @property
    @abstractmethod
    def n_steps(self) -> int:
        """Total number of steps."""

    @abstractmethod
    def train_step(self, step: int) -> dict[str, float]:
        """Run step ``step`` (0-based); return training metrics."""

    @abstractmethod
    def evaluate(self, split: str) -> dict[str, float]:
        """Evaluate the current model on ``"valid"`` or ``"test"``."""

    def is_eval_step(self, step: int) -> bool:
        """Whether to evaluate after step ``step``."""
        return True

    def step_info(self, step: int) -> dict[str, Any]:
        """Extra fields (e.g. epoch of a round) logged with step ``step``."""
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def model_state(self) -> dict[str, Any]:
        """The model parameters (kept for the best validation step)."""
        return {}

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Restore model parameters from :meth:`model_state`."""

    def parameters_to_check(self) -> dict[str, Any]:
        """The tensors checked for NaN/inf after every step (default: :meth:`model_state`)."""
        return self.model_state()


def nonfinite_names(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding NaN or an infinity."""
    return [n for n, v in tensors.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _evaluate_checked(trainer: Trainer, split: str, when: str) -> dict[str, float]:
    """``trainer.evaluate(split)``, with ``when`` (e.g. "round 3") added to a non-finite error."""
    try:
        return trainer.evaluate(split)
    except NonFiniteError as exc:
        raise NonFiniteError(f"{when}: {exc}; the run stopped and is marked failed (metrics and "
                             "checkpoint of the steps before are kept)") from None


def _progress_line(trainer: Trainer, step: int, record: dict[str, Any]) -> str:
    """One human line for step ``step``: counters, train loss, headline metrics."""
    parts = [f"{trainer.unit} {step + 1}/{trainer.n_steps}"]
    if "epoch" in record and trainer.unit != "epoch":
        parts.append(f"epoch {record['epoch']}")
    loss = record.get("train/loss")
    if isinstance(loss, float):
        parts.append(f"loss={loss:.4f}")
    parts += [f"{k}={v:.4f}" for k, v in record.items()
              if k.endswith("@10") and isinstance(v, float) and "/" in k and "client/" not in k][:4]
    parts.append(f"{record['seconds']:.1f}s")
    return "  ".join(parts)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_loop(
    trainer: Trainer,
    run: RunDir,
    *,
    resume: bool = False,
    eval_split: str = "valid",
    early_stop_metric: str | None = None,
    patience: int | None = None,
    checkpoint_every: int = 1,
    progress: bool = True,
    final_test: bool = True,
) -> dict[str, Any]:
    """Drive ``trainer`` to the end (or early stop) and return the summary.

    Parameters
    ----------
    trainer : Trainer
        The training procedure.
    run : RunDir
        Where metrics, checkpoints and the summary go.
    resume : bool
        Continue from ``run``'s checkpoint when there is one.
    eval_split : str
        Split evaluated at evaluation steps (``"valid"`` for model selection, ``"test"`` for
        attack studies that track test metrics over rounds).
    early_stop_metric : str, optional
        Metric (higher is better) for keeping the best model and early stopping; None keeps the
        last model.
    patience : int, optional
        Evaluations without improvement before stopping.
    checkpoint_every : int
        Checkpoint after every this many steps (and always after evaluations and at the end).
    progress : bool
        Show a progress bar.
    final_test : bool
        Evaluate the selected model on the test split at the end.
    """
    state = {"next_step": 0, "best": None, "best_step": -1, "bad_evals": 0,
             "best_model": None, "train_seconds": 0.0, "stopped_early": False}
    if resume:
        ckpt = run.load_checkpoint()
        if ckpt is not None:
            trainer.load_state_dict(ckpt["trainer"])
            state.update(ckpt["loop"])
            run.truncate_metrics(state["next_step"] - 1)
            log.info("resumed from %s at %s %d", run.checkpoint_path, trainer.unit, state["next_step"])
    if state["stopped_early"] and state["next_step"] < trainer.n_steps:
        log.warning("the run had stopped early (best %s: %d); more %ss do not continue it",
                    trainer.unit, state["best_step"], trainer.unit)
    bar = tqdm(total=trainer.n_steps, initial=state["next_step"], unit=trainer.unit,
               disable=not progress, dynamic_ncols=True, leave=False)
    BAR.active = progress

    def checkpoint() -> None:
        run.save_checkpoint({"trainer": trainer.state_dict(), "loop": dict(state)})

    try:
        step = state["next_step"]
        while step < trainer.n_steps and not state["stopped_early"]:
            t0 = time.perf_counter()
            train_metrics = trainer.train_step(step)
            broken = nonfinite_names(trainer.parameters_to_check())
            if broken:
                shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
                raise NonFiniteError(
                    f"{trainer.unit} {step}: the model's parameters became non-finite ({shown}); "
                    "the run stopped and is marked failed (metrics and checkpoint of the steps "
                    "before are kept)")
            state["train_seconds"] += time.perf_counter() - t0
            record: dict[str, Any] = {"step": step, **trainer.step_info(step),
                                      "seconds": time.perf_counter() - t0}
            record.update({f"train/{k}": v for k, v in train_metrics.items()})
            evaluated = trainer.is_eval_step(step) or step == trainer.n_steps - 1
            if evaluated:
                metrics = _evaluate_checked(trainer, eval_split, f"{trainer.unit} {step}")
                record.update({f"{eval_split}/{k}": v for k, v in metrics.items()})
                if early_stop_metric is not None:
                    if early_stop_metric not in metrics:
                        raise ConfigError(
                            f"train.metric={early_stop_metric!r}: not among evaluated metrics "
                            f"({', '.join(sorted(metrics))})"
                        )
                    value = metrics[early_stop_metric]
                    if state["best"] is None or value > state["best"]:
                        state.update(best=value, best_step=step, bad_evals=0,
                                     best_model=trainer.model_state())
                    else:
                        state["bad_evals"] += 1
                        if patience is not None and state["bad_evals"] >= patience:
                            state["stopped_early"] = True
                shown = {k: v for k, v in metrics.items() if k.endswith("@10")}
                bar.set_postfix({k.split("/")[-1] if "ER" not in k else k: f"{v:.4f}"
                                 for k, v in list(shown.items())[:4]})
                log.info("%s %d: %s", trainer.unit, step,
                         " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
            run.log(record)
            progress_log.info("%s", _progress_line(trainer, step, record))
            state["next_step"] = step + 1
            if evaluated or (step + 1) % checkpoint_every == 0 or step + 1 == trainer.n_steps:
                checkpoint()
            bar.update(1)
            step += 1
    finally:
        bar.close()
        BAR.active = False

    summary: dict[str, Any] = {
        "steps_run": state["next_step"],
        "unit": trainer.unit,
        "train_seconds": state["train_seconds"],
        "seconds_per_step": state["train_seconds"] / max(1, state["next_step"]),
        "stopped_early": state["stopped_early"],
    }
    if early_stop_metric is not None:
        summary.update(best_step=state["best_step"], best_valid=state["best"],
                       early_stop_metric=early_stop_metric)
        if state["best_model"] is not None:
            trainer.load_model_state(state["best_model"])
    if final_test:
        summary["test"] = _evaluate_checked(trainer, "test", "final test evaluation")
    summary["peak_rss_mb"] = peak_rss_mb()
    return summary
