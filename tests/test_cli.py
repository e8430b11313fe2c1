"""The ``fedrec run`` command (fedrec.cli) through typer's CliRunner."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from fedrec.cli import app

torch.set_num_threads(1)

TINY = """\
mode: centralized
seed: 1
threads: 1
data:
  synthetic: {n_users: 120, n_items: 60, mean_len: 8}
model: {name: sasrec, hidden: 8, blocks: 1, max_len: 10, dropout: 0.1}
train: {epochs: 2, batch_size: 32, lr: 0.01}
eval: {ks: [10], n_negatives: 10}
"""


def write(tmp_path, text=TINY, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_run_prints_run_directory_and_test_metrics(tmp_path):
    cfg = write(tmp_path)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"run directory: {out}" in res.output
    test_line = next(ln for ln in res.output.splitlines() if ln.startswith("test:"))
    for key in ("full/HR@10=", "full/NDCG@10=", "sampled/HR@10=", "sampled/NDCG@10="):
        assert key in test_line
    assert "best epoch:" in res.output and "(2 run" in res.output
    assert (out / "summary.json").is_file() and (out / "config.yaml").is_file()

    # a second run into the same folder is refused with one error line, exit status 2
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2
    assert "--resume" in res.output and "Traceback" not in res.output
    # --overwrite and --set work
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(out), "--overwrite",
                                   "--set", "train.epochs=1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "(1 run" in res.output


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


def test_bad_key_is_one_error_line_with_exit_status_2(tmp_path):
    cfg = write(tmp_path, TINY.replace("hidden: 8", "hiden: 8"))
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    lines = error_lines(res.output)
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and "model.hiden" in lines[0]
    assert "did you mean 'hidden'" in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_bad_set_and_missing_file_are_one_line_errors(tmp_path):
    cfg = write(tmp_path)
    for args, needle in (
        (["run", str(cfg), "--set", "model.hidden"], "expected KEY=VALUE"),
        (["run", str(cfg), "--set", "train.lr=-1"], "train.lr"),
        (["run", str(tmp_path / "missing.yaml")], "config file not found"),
    ):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        lines = error_lines(res.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_version_prints_the_version_and_exits_0():
    from importlib.metadata import version

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"fedrec {version('fedrec')}"
