"""Safe and consistent resume: checkpoints never execute code, a resumed run is the same run,
run directories left by runs that never started do not block, progress reaches a log file."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from helpers import config_with, strip_timing
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.errors import ConfigError, FedRecError
from fedrec.results import RunDir
from fedrec.runner import run_experiment

torch.set_num_threads(1)

TINY = {
    "mode": "centralized",
    "data": {"synthetic": {"n_users": 60, "n_items": 40, "max_len": 20, "mean_len": 8}},
    "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "dropout": 0.1, "max_len": 10},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "patience": 50},
    "eval": {"n_negatives": 10, "ks": [10]},
}


def _cfg(**over):
    return config_with(json.loads(json.dumps(TINY)), **over)


class _Planted:
    """A pickle that runs a shell command when loaded with a plain unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_is_refused_without_running_it(tmp_path):
    run = RunDir(tmp_path / "r")
    marker = tmp_path / "pwned"
    with open(run.checkpoint_path, "wb") as fh:
        pickle.dump({"trainer": _Planted(marker)}, fh, protocol=2)
    with pytest.raises(FedRecError, match="refused to load: the checkpoint names .*system"):
        run.load_checkpoint()
    with open(run.checkpoint_path, "wb") as fh:  # newer pickle protocols are refused too
        pickle.dump({"trainer": _Planted(marker)}, fh, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(FedRecError, match="unreadable checkpoint"):
        run.load_checkpoint()
    torch.save({"trainer": _Planted(marker)}, run.checkpoint_path)  # a torch-format file
    with pytest.raises(FedRecError, match="refused to load: the checkpoint names .*system"):
        run.load_checkpoint()
    assert not marker.exists()


def test_resume_of_a_planted_checkpoint_is_one_line_exit_2(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(TINY))
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["run", str(cfg_path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    marker = tmp_path / "pwned"
    (out / "summary.json").unlink()
    torch.save({"trainer": _Planted(marker), "loop": {}}, out / "checkpoint.pt")
    res = CliRunner().invoke(app, ["run", str(cfg_path), "--out", str(out), "--resume", "--no-progress"])
    assert res.exit_code == 2 and "refused to load" in res.output and "Traceback" not in res.output
    assert not marker.exists()


def test_resume_with_a_different_config_is_refused_naming_the_keys(tmp_path):
    run_experiment(_cfg(), tmp_path / "r", progress=False)
    (tmp_path / "r" / "summary.json").unlink()  # as if interrupted
    with pytest.raises(ConfigError, match=r"differs .* in seed \(0 -> 3\), train.lr"):
        run_experiment(_cfg(seed=3, **{"train.lr": 0.5}), tmp_path / "r", resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"train.epochs \(2 -> 1\)"):  # a step count may not shrink
        run_experiment(_cfg(**{"train.epochs": 1}), tmp_path / "r", resume=True, progress=False)
    # keys that change only speed, the output place or where the data directory is mounted may
    # differ (the Flower engine makes data.root absolute; CI sets FEDREC_DATA)
    run_experiment(_cfg(threads=1, name="other", **{"eval.batch_users": 7,
                                                    "data.root": str(tmp_path / "elsewhere")}),
                   tmp_path / "r", resume=True, progress=False)


def test_resume_with_more_epochs_continues_to_the_longer_run(tmp_path, caplog):
    run_experiment(_cfg(), tmp_path / "short", progress=False)
    with caplog.at_level("WARNING", logger="fedrec"):
        extended = run_experiment(_cfg(**{"train.epochs": 3}), tmp_path / "short", resume=True,
                                  progress=False)
    assert any("continuing the run with train.epochs: 2 -> 3" in r.message for r in caplog.records)
    fresh = run_experiment(_cfg(**{"train.epochs": 3}), tmp_path / "long", progress=False)
    assert extended["steps_run"] == 3 and extended["test"] == fresh["test"]
    assert (strip_timing(RunDir(tmp_path / "short").read_metrics())
            == strip_timing(RunDir(tmp_path / "long").read_metrics()))


def test_a_run_that_failed_before_its_first_step_does_not_block_the_rerun(tmp_path):
    bad = _cfg(**{"data.name": "sequences", "data.path": str(tmp_path / "missing.txt")})
    with pytest.raises(FedRecError):
        run_experiment(bad, tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "error.txt").is_file()
    summary = run_experiment(_cfg(), tmp_path / "r", progress=False)  # no flag needed
    assert summary["steps_run"] == 2 and not (tmp_path / "r" / "error.txt").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_cannot_be_a_run_directory_is_one_line(tmp_path, where):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(TINY))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    res = CliRunner().invoke(app, ["run", str(cfg_path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "run directory" in lines[0]


def test_progress_lines_reach_run_log_and_a_non_terminal(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(TINY))
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["run", str(cfg_path), "--out", str(out)])  # not a terminal
    assert res.exit_code == 0, res.output
    assert "epoch 1/2" in res.output and "epoch 2/2" in res.output
    log = (out / "run.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "full/NDCG@10=" in log


def test_flwr_run_out_dir_follows_the_run_directory_rule(tmp_path):
    """`flwr run` with an out-dir that holds a run: refused (no appending to metrics.jsonl);
    with the run config's ``resume`` a finished run returns its summary."""
    from flwr.app import Context, RecordDict

    from fedrec.engine.flower import make_server_app, portable_config

    fed = {**TINY, "mode": "federated", "federation": {"rounds": 2, "clients_per_round": 20,
                                                       "engine": "flower"}}
    cfg = config_with(json.loads(json.dumps(fed)))
    out = tmp_path / "out"
    run = RunDir(out)
    run.write_config("name: x\n")
    run.log({"step": 0, "train/loss": 1.0})

    def call(resume):
        results = {}
        app = make_server_app(portable_config(cfg), run_dir=None, results=results)
        ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"out-dir": str(out), "resume": resume})
        app._main(None, ctx)  # refused or answered before any message is sent
        return results

    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        call(False)
    assert [r["step"] for r in run.read_metrics()] == [0]
    from fedrec.config import dump_config

    run.write_config(dump_config(cfg))
    run.write_summary({"test": {"full/HR@10": 0.5}})
    assert call(True)["summary"] == {"test": {"full/HR@10": 0.5}}
