"""The Flower engine on a real Ray head: same global parameters as the local engine, and
the same numbers on every run (with dropout, whichever Ray worker computes which client).

Starts ``ray start --head`` on 127.0.0.1 (its own temp dir and port) once for the module,
attaches the Flower simulations to it by address, and stops exactly the head it started (its
process group).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from fedrec.config import load_config
from fedrec.results import RunDir
from fedrec.runner import run_experiment

pytestmark = pytest.mark.slow

TINY = {
    "mode": "federated",
    "data": {"synthetic": {"n_users": 30, "n_items": 40, "max_len": 20, "mean_len": 8}},
    "model": {"name": "sasrec", "hidden": 8, "blocks": 1, "dropout": 0.0, "max_len": 10},
    "federation": {"rounds": 2, "clients_per_round": 12, "server_lr": 0.2, "local_epochs": 2,
                   "local_lr": 0.3},
    "eval": {"n_negatives": 10, "ks": [10]},
    "attack": {"name": "none"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("ray start --head exited early")
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("Ray head did not come up")
    time.sleep(2)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _run(tmp_path, name, protocol, defense, engine, address=None, dropout=0.0):
    raw = json.loads(json.dumps(TINY))
    raw["model"]["dropout"] = dropout
    raw["federation"].update(protocol=protocol, engine=engine, client_eval=protocol == "fedsgd",
                             client_eval_fraction=0.5)
    if address:
        raw["federation"]["ray_address"] = address
    raw["defense"] = {"name": defense}
    out = tmp_path / name
    summary = run_experiment(load_config(base=raw), out, progress=False)
    params = torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["params"]
    return summary, params, out


@pytest.mark.parametrize("protocol,defense", [("fedsgd", "sum"), ("fedavg", "median")])
def test_flower_engine_attached_to_ray_head_matches_local_engine(tmp_path, ray_head, protocol, defense):
    local, p_local, _ = _run(tmp_path, "local", protocol, defense, "local")
    flower, p_flower, out = _run(tmp_path, "flower", protocol, defense, "flower", ray_head)
    diff = max((p_local[k] - p_flower[k]).abs().max().item() for k in p_local)
    # float32 on both engines, summed in different orders: per round the gap is at most about
    # sqrt(clients * max_len * hidden) * eps32 * max|theta|, accumulated over the rounds
    fc, mc = TINY["federation"], TINY["model"]
    scale = max(float(v.abs().max()) for v in p_local.values())
    bound = 2 * fc["rounds"] * (fc["clients_per_round"] * mc["max_len"] * mc["hidden"]) ** 0.5 \
        * float(torch.finfo(torch.float32).eps) * max(scale, 1.0)
    assert diff <= bound
    assert RunDir(out).is_finished() and len(RunDir(out).read_metrics()) == 2
    for k, v in local["test"].items():  # includes client-side (@app.evaluate) metrics for fedsgd
        assert flower["test"][k] == pytest.approx(v, abs=1e-6)
    assert any(k.startswith("client/") for k in flower["test"]) == (protocol == "fedsgd")
    # the head is still alive after the run (Flower only disconnected from it)
    host, port = ray_head.split(":")
    with socket.create_connection((host, int(port)), timeout=2):
        pass


def test_flower_engine_with_dropout_repeats_exactly(tmp_path, ray_head):
    """Dropout masks are seeded per (seed, round, client): two runs give the same bits.

    Two CPUs serve the 12 clients of a round, so which worker computes which client (and
    after what) changes between runs; before the clients were seeded this made the step-0
    losses differ. (With dropout the local engine draws its masks in batch, so it is compared
    with the Flower engine only without dropout, above.)
    """
    runs = [_run(tmp_path, f"flower{i}", "fedavg", "mean", "flower", ray_head, dropout=0.3)
            for i in range(2)]
    rows = [RunDir(out).read_metrics() for _, _, out in runs]
    losses = [[r["train/loss"] for r in rr] for rr in rows]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    p0, p1 = runs[0][1], runs[1][1]
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert runs[0][0]["test"] == runs[1][0]["test"]
