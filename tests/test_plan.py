"""The ``--dry_run`` planner: shapes-only compile, XLA's memory numbers, clear errors before compiling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PLAN = """
import json, sys
from jaxtrans.config import load_file
from jaxtrans.plan import plan
cfg = load_file(sys.argv[1]).unlock()
for key, value in json.loads(sys.argv[2]).items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
print("PLAN " + json.dumps(plan(cfg, "H100")))
"""


def _plan(config: str, overrides: dict, devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", PLAN, config, json.dumps(overrides)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("PLAN ")][-1]
    return json.loads(line[5:])


LLAMA2_QLORA = {
    "curriculum": ["transfer"],
    "lora.quantized": True,
    "lora.rank": 64,
    "stages.transfer.batch_size": 1,
    "stages.transfer.seq_len": 2048,
}


def test_llama2_7b_qlora_plan_and_fsdp_divides_the_state():
    """Numbers are XLA:CPU's; docs/benchmarks.md records them (and why CPU peaks overstate bf16 temporaries)."""
    one = _plan("configs/thai.py:llama2_7b", {**LLAMA2_QLORA, "mesh.data": 1}, devices=1)
    b1 = one["per_device_bytes"]
    print(json.dumps(one, indent=1))
    assert one["batch"] == {"accum": 1, "batch": 1, "seq_len": 2048}
    assert b1["frozen_base"] <= 0.6 * one["params"]  # NF4 blocks (0.516 B) + bf16 embeddings and head (2 B)
    assert b1["frozen_base"] + b1["trainable_and_optimizer"] <= 6 * 2**30
    assert one["compile_seconds"] <= 120
    eight = _plan("configs/thai.py:llama2_7b", {**LLAMA2_QLORA, "mesh.data": 1, "mesh.fsdp": 8,
                                                "stages.transfer.batch_size": 8}, devices=8)  # fmt: skip
    b8 = eight["per_device_bytes"]
    print(json.dumps(eight, indent=1))
    state1 = b1["frozen_base"] + b1["trainable_and_optimizer"]
    state8 = b8["frozen_base"] + b8["trainable_and_optimizer"]
    assert state8 <= state1 / 8 * 1.1
    assert eight["compile_seconds"] <= 120


def test_plan_errors_before_compiling():
    with pytest.raises(AssertionError, match="batch_size=12 is not divisible by the data-parallel size 8"):
        _plan("configs/thai.py:llama2_7b", {"mesh.data": 8, "stages.transfer.batch_size": 12}, devices=8)
    with pytest.raises(AssertionError, match="needs 3 devices but 8 are available"):
        _plan("configs/thai.py:llama2_7b", {"mesh.data": 3}, devices=8)
