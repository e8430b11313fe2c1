"""The ``device`` setting: spelling and availability checks, ``auto``, and CPU runs unchanged.

These tests run on the CPU; CUDA is simulated only where a check reads
``torch.cuda.is_available()`` / ``device_count()`` (nothing here allocates on a GPU).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import TINY_FEDERATED, config_with
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import load_config
from fedrec.data.batching import to_tensor
from fedrec.device import check_device, device_scope, resolve_device
from fedrec.engine.flower import backend_config
from fedrec.errors import ConfigError
from fedrec.runner import run_experiment


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "CPU", "cuda 0", ""])
def test_bad_spelling_names_the_key(bad):
    with pytest.raises(ConfigError, match="^config: device: .*expected auto, cpu, cuda or cuda:N"):
        load_config(base={"device": bad})


def test_cuda_without_cuda_is_a_config_error(no_cuda):
    assert check_device("cpu") == "cpu" and resolve_device("auto") == torch.device("cpu")
    for value in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"device: '{value}': CUDA is not available"):
            load_config(base={"device": value})


def test_auto_picks_cuda_and_indices_are_checked(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert load_config(base={"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        load_config(base={"device": "cuda:2"})


def test_flower_clients_ask_ray_for_a_gpu_share_only_on_cuda(no_cuda, monkeypatch):
    cfg = load_config(base={"mode": "federated", "device": "auto"})
    assert backend_config(cfg)["client_resources"]["num_gpus"] == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    res = backend_config(cfg)["client_resources"]
    assert res["num_gpus"] == pytest.approx(res["num_cpus"] / 8)


def test_cli_refuses_cuda_in_one_line_with_status_2(tmp_path, no_cuda):
    path = tmp_path / "c.yaml"
    path.write_text("mode: federated\n")
    out = CliRunner().invoke(app, ["run", str(path), "--set", "device=cuda",
                                   "--out", str(tmp_path / "run")])
    assert out.exit_code == 2
    lines = [ln for ln in out.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "device: 'cuda': CUDA is not available" in lines[0]
    assert not (tmp_path / "run").exists()


def test_cpu_scope_changes_nothing():
    with device_scope("cpu") as dev:
        assert dev == torch.device("cpu") and torch.get_default_device() == dev
        t = to_tensor(np.arange(3))
    assert t.device == torch.device("cpu") and t.dtype == torch.long


def test_auto_on_a_cpu_machine_gives_the_cpu_results(tmp_path, no_cuda):
    runs = []
    for device in ("cpu", "auto"):
        raw = copy.deepcopy(TINY_FEDERATED)
        cfg = config_with(raw, **{"device": device, "federation.epochs": 1, "name": device})
        runs.append(run_experiment(cfg, tmp_path / device, progress=False)["test"])
    assert runs[0] == runs[1] and runs[0]


def test_checkpoint_state_moves_nested_tensors_and_keeps_cpu_checkpoints_as_they_were():
    from fedrec.device import cuda_rng_state, to_device

    state = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), 3)], "c": "x"}
    moved = to_device(state, torch.device("cpu"))
    assert moved["c"] == "x" and isinstance(moved["b"][1], tuple) and moved["b"][1][1] == 3
    assert torch.equal(moved["b"][1][0], torch.ones(1))
    if not torch.cuda.is_available():
        assert cuda_rng_state() == []  # so a CPU checkpoint has no "cuda_rng" entry
