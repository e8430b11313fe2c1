"""`mode: multitask` runs GradCraft's multi-task setting through `fedrec run`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import load_config
from fedrec.errors import ConfigError

BASE = {"mode": "multitask", "multitask": {"dataset": "synthetic", "epochs": 2, "patience": 2,
                                           "synthetic": {"n_rows": 2000}, "batch_size": 512}}


def test_multitask_run_writes_summary(tmp_path):
    cfg = tmp_path / "mt.yaml"
    cfg.write_text(json.dumps(BASE))
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.0 <= summary["test"]["mean_AUC"] <= 1.0
    assert {k.split("/")[0] for k in summary["test"]} >= {"AUC", "GAUC", "mean_AUC"}
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == summary["steps_run"]


def test_multitask_seed_defaults_to_top_level_seed():
    cfg = load_config(base={**BASE, "seed": 7})
    assert cfg.multitask_config().seed == 7


@pytest.mark.parametrize("override,needle", [("multitask.epoch=3", "multitask.epoch"),
                                             ("multitask.lr=-1", "multitask.lr")])
def test_multitask_bad_keys_are_one_line_errors(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(base=BASE, overrides=[override])
