"""Bench without Ray (``address="inline"``): tidy table schema and content, failure isolation,
skip/retry on re-run, determinism, the report and the CLI."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedrec.bench.execute import cell_dir, read_cell_log, run_grid
from fedrec.bench.grid import parse_grid
from fedrec.bench.report import render_report, results_pivot
from fedrec.bench.table import (
    STANDARD_COLUMNS,
    TIMING_COLUMNS,
    build_table,
    columns_for,
    read_table,
    split_metric,
    write_table,
)
from fedrec.cli import app

TINY = {
    "mode": "federated",
    "data": {"name": "synthetic", "synthetic": {"n_users": 40, "n_items": 30, "mean_len": 6,
                                                "max_len": 10}},
    "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "heads": 1, "max_len": 8},
    "federation": {"epochs": 2, "clients_per_round": 20, "server_optimizer": "adam",
                   "server_lr": 0.01},
    "eval": {"n_negatives": 5},
}


def tiny_grid(axes, **extra):
    return parse_grid({"name": "tiny", "base": TINY, "axes": axes, **extra}, "tiny.yaml")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A 3-cell grid run inline: 2 good cells, 1 that fails when it runs (an attack that needs
    knowledge the threat model does not grant; unknown names fail earlier, at load_grid)."""
    out = tmp_path_factory.mktemp("bench")
    g = tiny_grid({"attack.name": ["none", "fedrecattack"],
                   "defense": [{"name": "mean"},
                               {"name": "trimmed_mean", "params": {"beta": 0.1}}]},
                  exclude=[{"attack.name": "fedrecattack", "defense.name": "trimmed_mean"}])
    cells = g.cells()
    outcome = run_grid(g, cells, out, address="inline", progress=False)
    return g, cells, out, outcome


def test_split_metric():
    assert split_metric("test/full/ER@10") == ("test", "full", "ER@10")
    assert split_metric("test/sampled/HR@10") == ("test", "sampled", "HR@10")
    assert split_metric("train/defense/detect_precision") == \
        ("train", "defense", "detect_precision")
    assert split_metric("train/loss") == ("train", "train", "loss")
    assert split_metric("valid/full/NDCG@10") == ("valid", "full", "NDCG@10")


def test_failed_cell_is_recorded_and_does_not_stop_the_others(ran):
    g, cells, out, outcome = ran
    assert outcome.total == 3 and outcome.finished == 2 and len(outcome.failed) == 1
    bad = [c for c in cells if c.config.attack.name == "fedrecattack"][0]
    assert outcome.failed[0][0] == bad.cell_id
    assert "attack 'fedrecattack' needs public interactions" in outcome.failed[0][1]
    err = (cell_dir(out, bad.cell_id) / "error.txt").read_text()
    assert err.splitlines()[0] == outcome.failed[0][1] and "Traceback" in err
    for c in cells:
        if c is not bad:
            assert (cell_dir(out, c.cell_id) / "summary.json").is_file()


def test_tidy_table_schema_and_rows(ran):
    g, cells, out, _ = ran
    df = build_table(out)
    assert list(df.columns) == columns_for(list(g.axes))
    assert list(df.columns) == ["cell_id", "attack.name", "axis:defense", *STANDARD_COLUMNS]
    assert str(df["step"].dtype) == "Int64" and str(df["epoch"].dtype) == "Int64"
    assert df["value"].dtype == "float64"
    good = df[df["status"] == "finished"]
    assert set(good["cell_id"]) == {c.cell_id for c in cells if c.config.attack.name == "none"}
    # one row per run x logged metric x step
    for cid, part in good.groupby("cell_id"):
        records = [json.loads(line) for line in
                   (cell_dir(out, cid) / "metrics.jsonl").read_text().splitlines()]
        n_metrics = sum(len([k for k in r if k not in ("step", "epoch", "seconds")])
                        for r in records)
        assert len(part) == n_metrics
        assert not part.duplicated(["step", "split", "protocol", "metric"]).any()
        # the final evaluation equals summary.json's test metrics
        summary = json.loads((cell_dir(out, cid) / "summary.json").read_text())
        last = part[(part["split"] == "test") & (part["step"] == part["step"].max())]
        got = {f"{r.protocol}/{r.metric}": r.value for r in last.itertuples()}
        assert got == pytest.approx(summary["test"])
        assert (part["wall_time_s"] > 0).all() and (part["peak_memory_mb"] > 50).all()
    assert set(good["protocol"]) == {"full", "sampled", "train", "defense"}
    er = good[(good["metric"] == "ER@10") & (good["protocol"] == "full")]
    assert len(er) == 2 * 2  # 2 cells x 2 epoch-end evaluations
    assert set(good.loc[good["protocol"] == "defense", "metric"]) >= {"detect_precision",
                                                                      "detect_recall"}
    assert set(good["defense"]) == {"mean", "trimmed_mean(beta=0.1)"}
    assert set(good["axis:defense"]) == {"mean", "trimmed_mean(beta=0.1)"}
    assert (good["seed"] == 0).all() and (good["dataset"] == "synthetic").all()
    assert (good["model"] == "sasrec").all() and good["error"].isna().all()
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1 and math.isnan(failed["value"].iloc[0])
    assert "fedrecattack" in failed["error"].iloc[0]
    assert failed["attack"].iloc[0] == "fedrecattack"


def test_table_files_round_trip(ran, tmp_path):
    _, _, out, _ = ran
    df = build_table(out)
    parquet, csv = write_table(df, out)
    back = pd.read_parquet(parquet)
    pd.testing.assert_frame_equal(back, df)
    assert len(pd.read_csv(csv)) == len(df)
    pd.testing.assert_frame_equal(read_table(out), df)
    assert not list(out.glob(".results*"))  # no temp files left behind


def test_rerun_skips_finished_cells_and_retries_failed_ones(ran):
    g, cells, out, _ = ran
    before = {c.cell_id: (cell_dir(out, c.cell_id) / "summary.json").stat().st_mtime_ns
              for c in cells if c.config.attack.name == "none"}
    outcome = run_grid(g, cells, out, address="inline", progress=False)
    assert outcome.skipped == 2 and outcome.finished == 0 and len(outcome.failed) == 1
    for cid, mtime in before.items():
        assert (cell_dir(out, cid) / "summary.json").stat().st_mtime_ns == mtime
        assert len(read_cell_log(cell_dir(out, cid))["attempts"]) == 1
    bad = outcome.failed[0][0]
    assert len(read_cell_log(cell_dir(out, bad))["attempts"]) == 2


def test_same_config_and_seed_give_identical_rows(ran, tmp_path):
    g, cells, out, _ = ran
    good = [c for c in cells if c.config.attack.name == "none"]
    run_grid(g, good, tmp_path, address="inline", progress=False)
    a = build_table(out)
    a = a[a["status"] == "finished"].drop(columns=list(TIMING_COLUMNS)).reset_index(drop=True)
    b = build_table(tmp_path).drop(columns=list(TIMING_COLUMNS)).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    c = build_table(tmp_path).drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(b, c)  # rebuilding is deterministic too


def test_report_and_pivot(ran):
    _, cells, out, _ = ran
    path = render_report(out)
    text = path.read_text()
    assert path == out / "report.md"
    assert "## Attack success" in text and "## Utility" in text
    assert "| none | mean | 1 |" in text and "| none | trimmed_mean(beta=0.1) | 1 |" in text
    assert "Cells not finished" in text and "fedrecattack" in text
    for name in ("er10_heatmap.png", "curves.png", "utility_vs_robustness.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in text
    df = read_table(out)
    final = df[(df["status"] == "finished") & (df["split"] == "test") & (df["protocol"] == "full")]
    final = final[final["step"] == final["step"].max()]
    er = final[(final["metric"] == "ER@10") & (final["defense"] == "mean")]["value"].iloc[0]
    hr = final[(final["metric"] == "HR@10") & (final["defense"] == "mean")]["value"].iloc[0]
    pivot = results_pivot(df, "full")
    assert "attack \\ defense" in pivot and f"{er:.3f} / {hr:.3f}" in pivot


def test_report_lists_an_interrupted_cell_without_error(ran, tmp_path):
    """A cell stopped mid-run (no summary, no error file) is listed, not a crash."""
    import shutil

    _, cells, out, _ = ran
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    finished = [c for c in cells if (copy / "cells" / c.cell_id / "summary.json").is_file()]
    victim = finished[0].cell_id
    (copy / "cells" / victim / "summary.json").unlink()
    text = render_report(copy).read_text()
    section = text.split("## Cells not finished", 1)[1]
    assert f"`{victim}`" in section and "fedrecattack" in section


def test_cli_bench_inline_report_and_dry_run(tmp_path):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump({"base": TINY, "axes": {"seed": [0, 1]}}))
    runner = CliRunner()
    # a slice first (--only): the full grid then runs only the rest
    res = runner.invoke(app, ["bench", str(grid_file), "--out", str(tmp_path / "o"),
                              "--ray-address", "inline", "--no-progress", "--set",
                              "federation.epochs=1", "--only", "seed=1", "--no-report"])
    assert res.exit_code == 0, res.output
    assert "1 cells: 1 run, 0 already finished, 0 failed" in res.output
    # the folder still records the whole grid, so its table and report cover every cell
    assert len(json.loads((tmp_path / "o" / "cells.json").read_text())["cells"]) == 2
    res = runner.invoke(app, ["bench", str(grid_file), "--only", "seed=3", "--dry-run"])
    assert res.exit_code == 2 and "no cell has seed=3" in res.output
    res = runner.invoke(app, ["bench", str(grid_file), "--out", str(tmp_path / "o"),
                              "--ray-address", "inline", "--no-progress", "--set",
                              "federation.epochs=1"])
    assert res.exit_code == 0, res.output
    assert "2 cells: 1 run, 1 already finished, 0 failed" in res.output
    assert "attack \\ defense" in res.output and "report: " in res.output
    assert (tmp_path / "o" / "results.parquet").is_file()
    text = (tmp_path / "o" / "report.md").read_text()
    assert "| none | mean | 2 |" in text and " ± " in text  # 2 seeds: mean ± std
    res = runner.invoke(app, ["bench", str(grid_file), "--out", str(tmp_path / "o"),
                              "--set", "federation.epochs=1", "--dry-run"])
    assert res.exit_code == 0 and res.output.count("[finished]") == 2
    res = runner.invoke(app, ["report", str(tmp_path / "o"), "--no-plots"])
    assert res.exit_code == 0 and res.output.strip() == str(tmp_path / "o" / "report.md")
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a bench output folder" in res.output
    res = runner.invoke(app, ["bench", str(grid_file), "--set", "federation.epoch=1"])
    assert res.exit_code == 2 and "unknown key 'federation.epoch'" in res.output
    res = runner.invoke(app, ["bench", str(grid_file), "--ray-address", "127.0.0.1:1",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no Ray cluster answers" in res.output
