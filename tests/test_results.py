"""Run directories (fedrec.results): atomic writes, the metrics log, checkpoints, summary."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedrec.errors import FedRecError
from fedrec.results import RunDir, atomic_write, atomic_write_text


class Boom(RuntimeError):
    pass


def test_atomic_write_leaves_no_partial_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "out.txt"

    def half(fh):
        fh.write("partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, half)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind

    atomic_write_text(target, "old")
    with pytest.raises(Boom):
        atomic_write(target, half)
    assert target.read_text() == "old"  # the previous version survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]

    # binary mode and parent creation
    atomic_write(tmp_path / "sub" / "b.bin", lambda fh: fh.write(b"\x00\x01"), "wb")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"


def test_metrics_log_round_trip_and_torn_last_line(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.read_metrics() == []
    for step in range(3):
        run.log({"step": step, "loss": 1.0 / (step + 1), "t": torch.tensor(2.5),
                 "bad": float("nan"), "nested": {"x": float("inf")}})
    recs = run.read_metrics()
    assert [r["step"] for r in recs] == [0, 1, 2]
    assert recs[1]["loss"] == 0.5 and recs[0]["t"] == 2.5
    assert recs[0]["bad"] is None and recs[0]["nested"] == {"x": None}  # valid JSON
    # a crash in the middle of a write leaves a torn last line: it is ignored
    with open(run.metrics_path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 3, "loss": 0.2')
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    # every written line is strict JSON
    lines = run.metrics_path.read_text().splitlines()[:3]
    assert all(json.loads(ln)["step"] == i for i, ln in enumerate(lines))


def test_truncate_metrics_keeps_steps_up_to_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    for step in range(6):
        run.log({"step": step})
    with open(run.metrics_path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 6')  # torn
    run.truncate_metrics(3)
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3]
    assert run.metrics_path.read_text().endswith("\n")
    run.log({"step": 4})
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 3, 4]
    run.truncate_metrics(-1)
    assert run.read_metrics() == []


def test_checkpoint_summary_and_state(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.has_content() and not run.is_finished()
    run.write_config("a: 1\n")
    assert not run.has_content()  # the config alone is not a run
    assert run.load_checkpoint() is None
    state = {"w": torch.arange(4.0), "step": 3, "rng": torch.get_rng_state()}
    run.save_checkpoint(state)
    assert run.has_content()
    back = run.load_checkpoint()
    assert torch.equal(back["w"], state["w"]) and back["step"] == 3
    assert torch.equal(back["rng"], state["rng"])
    assert run.read_summary() is None
    run.write_summary({"test": {"m": 0.5, "n": math.nan}, "steps": 2})
    assert run.is_finished()
    assert run.read_summary() == {"test": {"m": 0.5, "n": None}, "steps": 2}
    run.write_error("ConfigError: x")
    assert (run.path / "error.txt").read_text() == "ConfigError: x\n"


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoint_path.write_bytes(b"not a checkpoint")
    with pytest.raises(FedRecError, match="unreadable checkpoint") as exc:
        run.load_checkpoint()
    assert str(run.checkpoint_path) in str(exc.value)
