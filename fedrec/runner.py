"""Run one experiment config end to end into a run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedrec.config import ExperimentConfig, dump_config
from fedrec.engine.finish import finish_run
from fedrec.logs import log_to_file
from fedrec.results import RunDir, open_run_dir

log = logging.getLogger("fedrec")


def default_run_dir(cfg: ExperimentConfig) -> Path:
    """``<output_dir>/<name>``."""
    return Path(cfg.output_dir) / cfg.name


def build_trainer(cfg: ExperimentConfig, ctx: Any) -> Any:
    """The trainer for ``cfg.mode``."""
    if cfg.mode == "centralized":
        make = getattr(ctx.model, "make_trainer", None)  # methods with their own training loop
        if make is not None:
            return make(ctx)
        from fedrec.engine.centralized import CentralizedTrainer

        return CentralizedTrainer(ctx)
    if cfg.federation.engine == "distributed":
        from fedrec.engine.distributed import build_distributed_trainer

        return build_distributed_trainer(ctx)
    from fedrec.engine.federated import build_federated_trainer

    return build_federated_trainer(ctx)


def run_multitask(cfg: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """GradCraft's multi-task ranking setting (``mode: multitask``).

    Runs are short and keep no checkpoint: an interrupted run restarts from scratch on
    ``--resume``. Per-epoch history goes to ``metrics.jsonl``; test AUC/GAUC per task to the
    summary as ``test/AUC/<task>``, ``test/GAUC/<task>``, ``test/mean_AUC``, ``test/mean_GAUC``.
    """
    from fedrec.baselines.gradcraft.train import train_multitask

    if run.metrics_path.exists():
        run.metrics_path.unlink()
    res = train_multitask(cfg.multitask_config())
    for record in res["history"]:
        run.log({"step": record["epoch"], **record})
    test = {f"AUC/{t}": v for t, v in res["test"]["auc"].items()}
    test.update({f"GAUC/{t}": v for t, v in res["test"]["gauc"].items()})
    test.update(mean_AUC=res["mean_auc"], mean_GAUC=res["mean_gauc"])
    summary = {"name": cfg.name, "mode": cfg.mode, "test": test, "unit": "epoch",
               "steps_run": res["epochs"], "best_step": res["best_epoch"],
               "seconds_per_step": res["seconds_per_epoch"],
               "positive_rates": res["positive_rates"], "rows": res["rows"],
               "n_parameters": res["num_params"]}
    run.write_summary(summary)
    return summary


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate ``cfg``; return the summary (also written to ``summary.json``).

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    run_dir : str or Path, optional
        Output folder (default ``<output_dir>/<name>``).
    resume : bool
        Continue an interrupted run from its checkpoint; a finished run is returned as is, or
        continued when the config raises its number of epochs/rounds.
    overwrite : bool
        Delete an existing run directory first.
    progress : bool
        Show progress bars.

    Raises
    ------
    ConfigError
        The run directory already holds a run and neither ``resume`` nor ``overwrite`` is set,
        or ``resume`` meets a config that may not continue the stored run
        (:func:`fedrec.results.open_run_dir`).
    """
    path = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    run, finished = open_run_dir(path, cfg.model_dump(mode="json"), dump_config(cfg),
                                 resume=resume, overwrite=overwrite)
    if finished is not None:
        return finished
    with log_to_file(run.path / "run.log"):
        return _run_in(cfg, run, resume=resume, progress=progress)


def _run_in(cfg: ExperimentConfig, run: RunDir, *, resume: bool, progress: bool) -> dict[str, Any]:
    """Run ``cfg`` in the opened ``run``; an error is written to ``error.txt`` and re-raised."""
    path = run.path
    try:
        if cfg.mode == "multitask":
            return run_multitask(cfg, run)
        if cfg.mode == "federated" and cfg.federation.engine == "flower":
            from fedrec.engine.flower import run_flower

            return run_flower(cfg, path, resume=resume, progress=progress)
        from fedrec.device import device_scope
        from fedrec.engine.context import RunContext

        # the run's tensors are created on cfg.device (the Flower engine scopes its clients)
        with device_scope(cfg.device):
            ctx = RunContext.build(cfg)
            return finish_run(cfg, ctx, build_trainer(cfg, ctx), run, resume=resume,
                              progress=progress)
    except Exception as exc:
        run.write_error(f"{type(exc).__name__}: {exc}")
        raise
