"""Command-line interface: ``fedrec run | bench | report | datasets``.

Errors caused by input (config keys, data files, run directories) are printed as one line
prefixed with ``error:`` and exit with status 2; ``-v`` shows detailed logs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fedrec.cli_datasets import app as datasets_app
from fedrec.errors import FedRecError
from fedrec.logs import setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fedrec: federated sequential recommendation security lab.")

app.add_typer(datasets_app, name="datasets")


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedrec")
    except PackageNotFoundError:
        from fedrec import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fedrec {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """fedrec: federated sequential recommendation security lab."""


def fail(exc: BaseException) -> None:
    """Print a one-line error and exit: status 1 for a run that failed (its results would not
    be true), 2 for bad input."""
    from fedrec.errors import RunFailedError

    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1 if isinstance(exc, RunFailedError) else 2)


def format_metrics(metrics: dict[str, float],
                   keys: tuple[str, ...] = ("HR@10", "NDCG@10", "ER@10", "mean_AUC", "mean_GAUC")) -> str:
    """Compact ``protocol/metric=value`` listing of the headline metrics (of every metric, at
    most 8, for a method that reports none of ``keys``, e.g. a classifier)."""
    shown = [f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.split("/")[-1] in keys]
    if not shown:
        shown = [f"{k}={v:.4f}" for k, v in sorted(metrics.items())
                 if isinstance(v, (int, float))][:8]
    return "  ".join(shown)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: a.b=value (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete an existing run directory first.")] = False,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: <output_dir>/<name>).")] = None,
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


@app.command()
def bench(
    grid: Annotated[str, typer.Argument(help="Grid YAML file, or a bundled grid's name (quickstart).")],
    ray_address: Annotated[str, typer.Option(
        "--ray-address",
        help="'local': start a fresh local Ray instance; 'auto' or HOST:PORT: attach to a running "
             "cluster (fedrec installed on every node, --out on a shared filesystem); 'inline': "
             "no Ray, cells one after another in this process (debugging).")] = "local",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <base output_dir>/<grid name>).")] = None,
    max_parallel: Annotated[int | None, typer.Option(help="At most N cells at once (default: as Ray's CPUs allow).")] = None,
    cpus_per_cell: Annotated[float, typer.Option(help="Ray CPUs per cell (also its torch threads).")] = 1.0,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key of the base config: a.b=value (repeatable).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Detailed logs, Ray's and the workers' output.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the grid's progress bar.")] = True,
    dry_run: Annotated[bool, typer.Option(help="List the cells and exit.")] = False,
    report: Annotated[bool, typer.Option(help="Render report.md and the plots at the end.")] = True,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Run only the cells whose config has KEY=VALUE (repeatable, all must hold), "
                       "e.g. --only seed=0 --only defense.name=krum; ids stay the grid's.")] = None,
) -> None:
    """Run a grid of experiments as Ray tasks; resumable; writes a tidy table and a report.

    GRID is a grid YAML file or a bundled grid's name (quickstart).

    A re-run skips finished cells, resumes interrupted ones from their checkpoint and retries
    failed ones. Exit status 1 when some cell failed.
    """
    setup_logging(verbose)
    from fedrec.bench.execute import cell_dir, run_grid
    from fedrec.bench.grid import load_grid, select_cells

    try:
        spec = load_grid(grid, set_ or [])
        cells = spec.cells()
        if not cells:
            raise FedRecError(f"{spec.source}: the grid has no cells")
        chosen = select_cells(cells, only) if only else cells
        if not chosen:
            raise FedRecError(f"{spec.source}: no cell has {' and '.join(only or [])}")
        folder = out or Path(str(spec.base.get("output_dir", "runs"))) / spec.name
        if dry_run:
            for c in chosen:
                state = "finished" if (cell_dir(folder, c.cell_id) / "summary.json").is_file() else "to run"
                typer.echo(f"{c.cell_id}  [{state}]")
            typer.echo(f"{len(chosen)} cells -> {folder / 'cells'}")
            return
        try:
            outcome = run_grid(spec, cells, folder, address=ray_address, max_parallel=max_parallel,
                               cpus_per_cell=cpus_per_cell, verbose=verbose,
                               progress=progress and sys.stderr.isatty(),
                               run_only=chosen if only else None)
        except KeyboardInterrupt:
            typer.echo("interrupted: re-run the same command to resume (finished cells are kept)",
                       err=True)
            raise typer.Exit(130) from None
        from fedrec.bench.report import render_report, results_pivot
        from fedrec.bench.table import build_table, write_table

        df = build_table(folder)
        parquet, _csv = write_table(df, folder)
    except FedRecError as exc:
        fail(exc)
        return
    where = f" (Ray at {outcome.ray_address})" if outcome.ray_address else ""
    typer.echo(f"bench {spec.name}: {outcome.total} cells: {outcome.finished} run, "
               f"{outcome.skipped} already finished, {len(outcome.failed)} failed; "
               f"{outcome.seconds:.1f} s{where}")
    n_neg = cells[0].config.eval.n_negatives
    typer.echo("\nfinal test metrics, mean over seeds; cell = ER@10 / HR@10")
    typer.echo("-- full ranking --")
    typer.echo(results_pivot(df, "full"))
    typer.echo(f"-- sampled ({n_neg} negatives) --")
    typer.echo(results_pivot(df, "sampled"))
    typer.echo(f"\ntable:  {parquet} (+ results.csv), {len(df)} rows")
    if report:
        path = render_report(folder, df)
        typer.echo(f"report: {path}")
    if outcome.failed:
        typer.echo(f"error: {len(outcome.failed)} of {outcome.total} cells failed (details in "
                   f"{folder / 'cells'}/<cell>/error.txt); re-run to retry them", err=True)
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    folder: Annotated[Path, typer.Argument(help="A `fedrec bench` output folder.")],
    plots: Annotated[bool, typer.Option(help="Also draw the PNG plots.")] = True,
) -> None:
    """Render FOLDER/report.md (mean ± std over seeds per attack × defense) and its plots.

    FOLDER is a `fedrec bench` output folder; the tidy table is rebuilt from its cells.
    """
    setup_logging(False)
    from fedrec.bench.report import render_report

    try:
        path = render_report(folder, plots=plots)
    except FedRecError as exc:
        fail(exc)
        return
    typer.echo(str(path))


def main() -> None:  # pragma: no cover
    """Entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
