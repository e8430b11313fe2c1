"""fedrec.allocator: a training step's freed memory is reused, not faulted in again (glibc)."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

# SASRec forward/backward steps at max_len 200 (attention scores of ~20 MB each), counting the
# minor page faults of each step
STEPS = """
import json, resource, numpy as np, torch
torch.set_num_threads(1)
from fedrec.allocator import keep_freed_memory
ok = keep_freed_memory()
from fedrec.models import build_model
torch.manual_seed(0)
model = build_model("sasrec", 500, hidden=64, blocks=2, heads=2, dropout=0.1, max_len=200)
rng = np.random.default_rng(0)
seqs = [rng.integers(1, 501, size=int(n)) for n in rng.integers(150, 201, size=64)]
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.zero_grad()
    model.loss(model.prepare_batch(seqs, np.arange(64))).backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"ok": ok, "faults": faults}))
"""


def run_steps(tuning: bool) -> dict:
    env = {**os.environ, "FEDREC_MALLOC_TUNING": "1" if tuning else "0"}
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="the glibc malloc thresholds exist on Linux only")
def test_steps_reuse_freed_memory() -> None:
    tuned, plain = run_steps(tuning=True), run_steps(tuning=False)
    assert tuned["ok"] is True and plain["ok"] is False
    # after two warm-up steps glibc (left alone) keeps returning the freed blocks to the kernel
    # and faulting them in again; with the raised thresholds the steps reuse them
    later_tuned, later_plain = sum(tuned["faults"][2:]), sum(plain["faults"][2:])
    assert later_plain > 10_000, plain
    assert later_tuned < later_plain / 3, (tuned, plain)
