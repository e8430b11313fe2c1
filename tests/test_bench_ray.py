"""End to end through Ray: a 2×2×1 grid on a fresh local Ray instance (explicit address
``local``), killed after its first cell finishes, re-run: every cell present, the finished ones
not recomputed, and the rows equal to an uninterrupted run's (timing columns aside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedrec.bench.execute import read_cell_log, run_grid
from fedrec.bench.grid import load_grid
from fedrec.bench.table import TIMING_COLUMNS, build_table

pytestmark = pytest.mark.slow

GRID = {
    "name": "mustshow",
    "base": {
        "mode": "federated",
        "data": {"name": "synthetic", "synthetic": {"n_users": 40, "n_items": 30, "mean_len": 6,
                                                    "max_len": 10}},
        "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "heads": 1, "max_len": 8},
        "federation": {"epochs": 3, "clients_per_round": 10, "server_optimizer": "adam",
                       "server_lr": 0.01},
        "eval": {"n_negatives": 5},
    },
    "axes": {"defense.name": ["mean", "trimmed_mean"], "model.hidden": [8, 12], "seed": [0]},
}


def _bench_cmd(grid: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fedrec.cli", "bench", str(grid), "--out", str(out),
            "--ray-address", "local", "--cpus-per-cell", "1", "--max-parallel", "2"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL the bench's process group (driver, raylet, GCS, workers) until it is empty."""
    pgid = proc.pid
    os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=timeout)  # reap the driver (a zombie still counts as a group member)
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    assert not _group_alive(pgid), "Ray processes of the killed bench are still alive"


def _finished(out: Path) -> dict[str, tuple[int, str]]:
    return {p.parent.name: (p.stat().st_mtime_ns, p.read_text())
            for p in (out / "cells").glob("*/summary.json")}


@pytest.mark.timeout(400)
def test_killed_bench_resumes_without_recomputing_finished_cells(tmp_path: Path):
    grid_file = tmp_path / "mustshow.yaml"
    grid_file.write_text(yaml.safe_dump(GRID))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # 1) start, wait for the first finished cell, kill the whole process group
    proc = subprocess.Popen(_bench_cmd(grid_file, out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not _finished(out):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no cell finished in time"
            time.sleep(0.05)
    finally:
        _kill_group(proc)
    before = _finished(out)
    partial = {p.parent.name for p in (out / "cells").glob("*/checkpoint.pt")} - set(before)
    assert 1 <= len(before) < 4, f"the kill came too late: {sorted(before)}"
    for cid in before:
        assert len(read_cell_log(out / "cells" / cid)["attempts"]) == 1

    # 2) re-run the same command to the end
    res = subprocess.run(_bench_cmd(grid_file, out), capture_output=True, text=True, env=env,
                         timeout=300, start_new_session=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"4 cells: {4 - len(before)} run, {len(before)} already finished, 0 failed" in res.stdout
    assert "(Ray at " in res.stdout and "report: " in res.stdout
    after = _finished(out)
    assert len(after) == 4
    for cid, (mtime, text) in before.items():
        assert after[cid] == (mtime, text), f"{cid} was recomputed"
        log = read_cell_log(out / "cells" / cid)
        assert len(log["attempts"]) == 1, f"{cid} was started again"
    for cid in set(after) - set(before):
        attempts = read_cell_log(out / "cells" / cid)["attempts"]
        assert attempts[-1]["status"] == "finished"
        # a cell killed mid-way continued from its checkpoint instead of starting over
        assert attempts[-1]["resumed"] == (cid in partial)
        summary = json.loads((out / "cells" / cid / "summary.json").read_text())
        assert summary["steps_run"] == 12  # 3 epochs x 4 rounds of 10 clients

    # 3) same configs and seeds, uninterrupted and without Ray: identical rows
    table = build_table(out)
    assert (table["status"] == "finished").all()
    assert len(table["cell_id"].unique()) == 4
    grid = load_grid(grid_file)
    ref_out = tmp_path / "reference"
    run_grid(grid, grid.cells(), ref_out, address="inline", progress=False)
    ref = build_table(ref_out)
    pd.testing.assert_frame_equal(table.drop(columns=list(TIMING_COLUMNS)),
                                  ref.drop(columns=list(TIMING_COLUMNS)))
