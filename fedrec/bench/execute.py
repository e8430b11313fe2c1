"""Run a grid's cells as Ray tasks, with resume, failure isolation and one progress bar.

Every cell is an ordinary run directory, ``<out>/cells/<cell-id>/`` (see
:mod:`fedrec.results`), produced by :func:`fedrec.runner.run_experiment` inside a Ray task
(``ray.remote(num_cpus=C)``) on

* a fresh local Ray instance (``address="local"``: never attaches to whatever cluster a stale
  ``ray_current_cluster`` file points at), or
* an existing cluster (``"auto"``, ``"host:port"``, ``"ray://host:port"``); the fedrec package
  must be installed in the same environment on every node, and ``<out>`` must be on a
  filesystem that every node sees at the same path (workers write the cell directories, the
  driver reads them).

Resume is by directory state: a cell with ``summary.json`` is finished and skipped; any other
cell is (re)submitted and :func:`run_experiment` continues it from its checkpoint. A failing
cell writes ``error.txt`` (message, then traceback) and the others go on. Each start of a cell
is recorded in its ``bench.json`` (host, pid, start/end, wall time, peak memory), which is
where the tidy table's timing columns come from.

Cells with ``federation.engine: flower`` are refused when the grid is expanded: the Flower
engine starts its own Ray instance, and Ray cannot be nested inside a Ray task.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.bench.grid import Cell, Grid
from fedrec.errors import ConfigError
from fedrec.logs import quiet_third_party
from fedrec.results import atomic_write_text

log = logging.getLogger("fedrec")

CELLS_DIR = "cells"
CELLS_FILE = "cells.json"
CELL_LOG = "bench.json"
LOCK_FILE = ".bench.lock"


def cell_dir(out: str | Path, cell_id: str) -> Path:
    """Run directory of a cell."""
    return Path(out) / CELLS_DIR / cell_id


# ---------------------------------------------------------------------------- memory


def reset_peak_memory() -> bool:
    """Reset this process's peak RSS (Linux ``/proc/self/clear_refs``); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(reset_worked: bool) -> float:
    """Peak RSS in MiB since :func:`reset_peak_memory` (else since the process started)."""
    if reset_worked:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------- one cell


def read_cell_log(path: Path) -> dict[str, Any]:
    """A cell's ``bench.json`` (empty record when absent or torn)."""
    try:
        return json.loads((path / CELL_LOG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"attempts": []}


def _write_cell_log(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path / CELL_LOG, json.dumps(record, indent=2, sort_keys=True))


def portable_raw(cell: Cell) -> dict[str, Any]:
    """The cell's resolved config as JSON with data locations made absolute (workers may run
    in another folder or on another node)."""
    from fedrec.data.registry import data_root

    raw = cell.config.model_dump(mode="json")
    data = raw["data"]
    if data.get("path"):
        data["path"] = str(Path(data["path"]).expanduser().resolve())
    root = data_root(data.get("root"))
    if root is not None:
        data["root"] = str(root.resolve())
    return raw


def run_cell(payload: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) one cell; never raises for a failing experiment.

    Parameters
    ----------
    payload : dict
        ``cell_id``, ``run_dir`` (absolute), ``config`` (resolved config JSON), ``threads``,
        ``verbose`` (the worker logs fedrec's INFO messages).

    Returns
    -------
    dict
        ``cell_id``, ``status`` (``finished``/``failed``), ``error``, ``wall_time_s``,
        ``peak_memory_mb``, ``skipped`` (already finished), ``host``.
    """
    if payload.get("verbose"):
        from fedrec.logs import setup_logging

        setup_logging(True)
    else:
        quiet_third_party()
    from fedrec.config import validate_config
    from fedrec.results import RunDir
    from fedrec.runner import run_experiment

    path = Path(payload["run_dir"])
    out = {"cell_id": payload["cell_id"], "status": "finished", "error": None, "skipped": False,
           "wall_time_s": None, "peak_memory_mb": None, "host": socket.gethostname()}
    path.mkdir(parents=True, exist_ok=True)
    if (path / "summary.json").is_file():
        out["skipped"] = True
        return out
    record = read_cell_log(path)
    record["cell_id"] = payload["cell_id"]
    attempt = {"start": time.time(), "host": out["host"], "pid": os.getpid(),
               "resumed": (path / "checkpoint.pt").is_file()}
    record.setdefault("attempts", []).append(attempt)
    _write_cell_log(path, record)
    (path / "error.txt").unlink(missing_ok=True)

    threads = int(payload.get("threads") or 0)
    t0 = time.perf_counter()
    reset = reset_peak_memory()
    try:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        cfg = validate_config(payload["config"], f"cell {payload['cell_id']}")
        run_experiment(cfg, path, resume=True, progress=False)
    except Exception as exc:  # noqa: BLE001 - a cell's failure must not stop the grid
        message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        out.update(status="failed", error=message)
        try:
            RunDir(path).write_error(message + "\n\n" + traceback.format_exc().rstrip())
        except OSError:
            pass
    except BaseException:  # interrupted: not a failure; the next bench resumes it
        out["status"] = "interrupted"
        raise
    finally:
        attempt.update(end=time.time(), seconds=time.perf_counter() - t0,
                       peak_memory_mb=peak_memory_mb(reset), status=out["status"])
        out["wall_time_s"] = sum(a.get("seconds") or 0.0 for a in record["attempts"])
        out["peak_memory_mb"] = max((a.get("peak_memory_mb") or 0.0) for a in record["attempts"])
        record.update(wall_time_s=out["wall_time_s"], peak_memory_mb=out["peak_memory_mb"])
        try:
            _write_cell_log(path, record)
        except OSError:
            pass
    return out


# ---------------------------------------------------------------------------- grid


@dataclass
class BenchOutcome:
    """What :func:`run_grid` did."""

    total: int
    skipped: int
    finished: int
    failed: list[tuple[str, str]]
    seconds: float
    ray_address: str | None = None


@contextmanager
def bench_lock(out: Path) -> Iterator[None]:
    """Exclusive lock on ``<out>`` (released when the process ends, even by SIGKILL)."""
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / LOCK_FILE, "w", encoding="ascii")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another `fedrec bench` is writing to this folder") from None
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def write_cells_file(grid: Grid, cells: list[Cell], out: Path) -> None:
    """Store the expanded grid (``<out>/cells.json``): the table and report read it."""
    payload = {"grid": grid.name, "source": grid.source, "description": grid.description,
               "axes": list(grid.axes),
               "cells": [c.to_json() for c in cells]}
    atomic_write_text(out / CELLS_FILE, json.dumps(payload, indent=2, default=str))


def check_ray_address(address: str, timeout: float = 5.0) -> str | None:
    """Fail fast on a cluster address nobody answers at; return the resolved ``host:port``.

    ``ray.init`` keeps retrying a dead GCS for minutes (e.g. when ``auto`` reads a stale
    ``ray_current_cluster`` file left by a crashed cluster); one TCP connection attempt tells
    the user at once. ``local`` and ``ray://`` addresses are not checked (None).

    Raises
    ------
    ConfigError
        No cluster found (``auto``), a malformed address, or nothing listening there.
    """
    if address == "local" or address.startswith("ray://"):
        return None
    from ray._private import services

    try:
        resolved = services.canonicalize_bootstrap_address(address)
    except ConnectionError as exc:
        raise ConfigError(f"--ray-address {address}: {str(exc).splitlines()[0]} (start one with "
                          "`ray start --head`, or use --ray-address local)") from None
    except Exception as exc:  # noqa: BLE001 - malformed address
        raise ConfigError(f"--ray-address {address}: expected local, auto, HOST:PORT or "
                          f"ray://HOST:PORT ({exc})") from None
    if resolved is None:
        raise ConfigError(f"--ray-address {address}: no running Ray cluster found (start one "
                          "with `ray start --head`, or use --ray-address local)")
    host, _, port = resolved.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        hint = (" (the address came from Ray's cluster file or RAY_ADDRESS and may be stale: "
                "`ray stop` removes it; or pass HOST:PORT)") if address == "auto" else ""
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers at {resolved} "
                          f"({exc}){hint}") from None
    return resolved


def _init_ray(address: str, verbose: bool) -> tuple[Any, bool]:
    """``(ray, started_here)``: connect to ``address`` (``local`` starts a fresh instance)."""
    quiet_third_party()
    import ray

    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose,
                                  logging_level=logging.INFO if verbose else logging.ERROR,
                                  namespace="fedrec-bench")
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"--ray-address {address}: cannot connect to Ray "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                          "start the cluster (`ray start --head`) or use --ray-address local"
                          ) from None
    except ValueError as exc:
        raise ConfigError(f"--ray-address {address}: {str(exc).splitlines()[0]}") from None
    return ray, True


def _ray_failure(exc: BaseException) -> str:
    """One line for an exception ray.get raised (worker crash, import failure)."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}".strip().splitlines()
    line = text[0] if text else type(cause).__name__
    if isinstance(cause, ModuleNotFoundError) or "No module named" in line:
        line += (" (the Ray worker cannot import fedrec: install the package in the same "
                 "environment on every node, e.g. `pip install -e .`)")
    return line


def run_grid(
    grid: Grid,
    cells: list[Cell],
    out: str | Path,
    *,
    address: str = "local",
    max_parallel: int | None = None,
    cpus_per_cell: float = 1.0,
    verbose: bool = False,
    progress: bool = True,
    run_only: list[Cell] | None = None,
) -> BenchOutcome:
    """Run every unfinished cell of ``cells`` (or of the slice ``run_only``) into
    ``<out>/cells/``.

    Parameters
    ----------
    grid : Grid
        The grid (its name and axes are stored with the cells).
    cells : list of Cell
        The expanded cells (:meth:`Grid.cells`).
    out : str or Path
        Output folder.
    address : str
        ``local`` (fresh local Ray instance), ``auto`` or ``host:port`` (existing cluster), or
        ``inline`` (no Ray: cells run one after another in this process; for debugging).
    max_parallel : int, optional
        At most this many cells in flight (default: as many as Ray's CPUs allow).
    cpus_per_cell : float
        Ray CPUs per cell (``ray.remote(num_cpus=C)``); also the cell's torch thread count.
    verbose : bool
        Show Ray's logs and the workers' output.
    progress : bool
        Show the grid's progress bar.
    run_only : list of Cell, optional
        Run only these cells (a slice of ``cells``, e.g. ``fedrec bench --only``); ``cells``
        is still what ``<out>/cells.json`` records, so the table and report cover the grid.

    Raises
    ------
    ConfigError
        The address cannot be reached, another bench holds ``out``, bad parameters.
    """
    from tqdm.auto import tqdm

    out = Path(out).expanduser().resolve()
    if cpus_per_cell <= 0:
        raise ConfigError(f"--cpus-per-cell: expected a positive number (got {cpus_per_cell})")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel: expected a positive integer (got {max_parallel})")
    t_start = time.perf_counter()
    if address != "inline":
        quiet_third_party()
        import ray

        if not ray.is_initialized():
            check_ray_address(address)
    with bench_lock(out):
        write_cells_file(grid, cells, out)
        cells = cells if run_only is None else run_only
        todo = [c for c in cells if not (cell_dir(out, c.cell_id) / "summary.json").is_file()]
        skipped = len(cells) - len(todo)
        failed: list[tuple[str, str]] = []
        finished = 0
        threads = max(1, int(cpus_per_cell))
        payloads = [{"cell_id": c.cell_id, "run_dir": str(cell_dir(out, c.cell_id)),
                     "config": portable_raw(c), "threads": threads, "verbose": verbose}
                    for c in todo]
        bar = tqdm(total=len(cells), initial=skipped, unit="cell", desc=f"bench {grid.name}",
                   disable=not progress, dynamic_ncols=True)

        def done(res: dict[str, Any]) -> None:
            nonlocal finished
            path = cell_dir(out, res["cell_id"])
            if res["status"] == "finished" and not (path / "summary.json").is_file():
                res = {**res, "status": "failed",
                       "error": f"cell finished on host {res.get('host')} but {path}/summary.json "
                                "is not visible here: --out must be on a filesystem shared by "
                                "all Ray nodes"}
                atomic_write_text(path / "error.txt", res["error"] + "\n")
            if res["status"] == "failed":
                failed.append((res["cell_id"], res["error"] or "failed"))
                bar.write(f"failed: {res['cell_id']}: {res['error']}", file=sys.stderr)
            else:
                finished += 1
            bar.set_postfix(failed=len(failed), refresh=False)
            bar.update(1)

        ray_address: str | None = None
        try:
            if not payloads:
                pass
            elif address == "inline":
                for p in payloads:
                    done(run_cell(p))
            else:
                ray, started = _init_ray(address, verbose)
                ray_address = ray.get_runtime_context().gcs_address
                try:
                    _run_on_ray(ray, payloads, done, max_parallel, cpus_per_cell, out)
                finally:
                    if started:
                        ray.shutdown()
        finally:
            bar.close()
    return BenchOutcome(len(cells), skipped, finished, failed, time.perf_counter() - t_start,
                        ray_address)


def _run_on_ray(ray: Any, payloads: list[dict[str, Any]], done: Any, max_parallel: int | None,
                cpus_per_cell: float, out: Path) -> None:
    """Submit the payloads as Ray tasks (a window of ``max_parallel``) and collect them."""
    task = ray.remote(run_cell).options(num_cpus=cpus_per_cell, max_retries=0,
                                        retry_exceptions=False, name="fedrec-bench-cell")
    queue = list(payloads)
    limit = max_parallel or len(queue)
    pending: dict[Any, dict[str, Any]] = {}
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                p = queue.pop(0)
                pending[task.remote(p)] = p
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                p = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - worker crash, import error: record it
                    message = _ray_failure(exc)
                    path = Path(p["run_dir"])
                    path.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(path / "error.txt", message + "\n")
                    res = {"cell_id": p["cell_id"], "status": "failed", "error": message}
                done(res)
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        raise
