"""Drive a trainer through the step loop and write the run's summary (both engines, every mode
that trains a sequential recommender)."""

from __future__ import annotations

from typing import Any

from fedrec.config import ExperimentConfig
from fedrec.engine.converged import save_model
from fedrec.engine.loop import run_loop
from fedrec.results import RunDir


def finish_run(cfg: ExperimentConfig, ctx: Any, trainer: Any, run: RunDir, *, resume: bool,
               progress: bool) -> dict[str, Any]:
    """Drive ``trainer`` through the step loop and write the summary.

    Centralized runs select the model on validation and report test metrics of the best
    epoch; federated runs track test metrics over rounds (the attack literature's protocol)
    and report those of the final global model, unless ``federation.early_stop_metric`` asks
    for model selection on validation (the converged protocol's pre-training). Federated runs
    write their global parameters (selected or final) to ``model.pt``.
    """
    if cfg.mode == "centralized":
        summary = run_loop(trainer, run, resume=resume, eval_split="valid",
                           early_stop_metric=cfg.train.metric, patience=cfg.train.patience,
                           progress=progress)
    elif cfg.federation.early_stop_metric is not None:  # benign pre-training to convergence
        summary = run_loop(trainer, run, resume=resume, eval_split="valid",
                           early_stop_metric=cfg.federation.early_stop_metric,
                           patience=cfg.federation.patience,
                           checkpoint_every=cfg.federation.checkpoint_every, progress=progress)
        save_model(run.path, trainer.model_state())
    else:
        summary = run_loop(trainer, run, resume=resume, eval_split="test",
                           checkpoint_every=cfg.federation.checkpoint_every, progress=progress,
                           final_test=False)
        summary["test"] = trainer.final_metrics()
        save_model(run.path, trainer.model_state())
    summary.update(name=cfg.name, mode=cfg.mode, dataset=ctx.split.name,
                   n_users=ctx.split.n_users, n_items=ctx.split.n_items,
                   n_parameters=sum(p.numel() for p in ctx.model.parameters()),
                   targets=list(ctx.targets))
    run.write_summary(summary)
    return summary
