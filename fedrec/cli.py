"""Command-line interface: ``fedrec run | bench | report | datasets``.

Errors caused by input (config keys, data files, run directories) are printed as one line
prefixed with ``error:`` and exit with status 2; ``-v`` shows detailed logs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedrec.errors import FedRecError
from fedrec.logs import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fedrec: federated sequential recommendation security lab.")

try:
    from fedrec.cli_datasets import app as datasets_app

    app.add_typer(datasets_app, name="datasets")
except ImportError:  # pragma: no cover - only while the module is being written
    pass


@app.callback()
def _root() -> None:
    """fedrec: federated sequential recommendation security lab."""


def fail(exc: BaseException) -> None:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def format_metrics(metrics: dict[str, float], keys: tuple[str, ...] = ("HR@10", "NDCG@10", "ER@10")) -> str:
    """Compact ``protocol/metric=value`` listing of the headline metrics."""
    shown = [f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.split("/")[-1] in keys]
    return "  ".join(shown)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a key: a.b=value (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing run directory first.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default: <output_dir>/<name>).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Detailed logs.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train and evaluate one experiment (centralized or federated) into a run directory."""
    setup_logging(verbose)
    from fedrec.config import load_config
    from fedrec.runner import default_run_dir, run_experiment

    try:
        cfg = load_config(config, set_ or [])
        path = out or default_run_dir(cfg)
        summary = run_experiment(cfg, path, resume=resume, overwrite=overwrite,
                                 progress=progress and sys.stderr.isatty())
    except FedRecError as exc:
        fail(exc)
        return
    typer.echo(f"run directory: {path}")
    test = summary.get("test", {})
    typer.echo(f"test: {format_metrics(test)}")
    if "best_step" in summary:
        typer.echo(f"best {summary['unit']}: {summary['best_step']}  "
                   f"({summary['steps_run']} run, {summary['seconds_per_step']:.2f} s/{summary['unit']})")


def main() -> None:  # pragma: no cover
    """Entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
