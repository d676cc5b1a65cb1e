"""Real multi-process training: 2 processes x 2 CPU devices on 127.0.0.1 (gloo) against 1 process x 4 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import REPO

JOB = os.path.join(REPO, "tests", "train_job.py")


def _env(devices: int) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single(run_dir: str, steps: int, mesh: str, devices: int = 4) -> None:
    done = subprocess.run([sys.executable, JOB, run_dir, str(steps), "--mesh", mesh], env=_env(devices),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _multi(run_dir: str, steps: int, mesh: str, nproc: int = 2) -> None:
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                JOB,
                run_dir,
                str(steps),
                "--mesh",
                mesh,
                "--coordinator",
                coordinator,
                "--nproc",
                str(nproc),
                "--pid",
                str(i),
            ],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(nproc)
    ]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]


def _losses(run_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl")))}


def test_two_processes_equal_one_and_restore_on_another_topology(tmp_path):
    one = str(tmp_path / "one")
    two = str(tmp_path / "two")
    _single(one, 6, "4,1,1")
    _multi(two, 3, "4,1,1")  # 2 processes x 2 devices, the same (data=4) mesh; saves at step 3
    ref = _losses(one)
    got = _losses(two)
    assert sorted(got) == [1, 2, 3]
    assert max(abs(got[s] - ref[s]) for s in got) <= 1e-6
    # the 2-process checkpoint restores in 1 process on a different mesh and goes on with the same numbers
    _single(two, 6, "1,2,2")
    cont = _losses(two)
    assert max(abs(cont[s] - ref[s]) for s in (4, 5, 6)) <= 1e-5
    a, b = np.load(os.path.join(one, "final.npz")), np.load(os.path.join(two, "final.npz"))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) <= 1e-5


def test_missing_peer_fails_with_a_clear_message(tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    done = subprocess.run(
        [sys.executable, JOB, str(tmp_path / "x"), "2", "--mesh", "2,1,1", "--coordinator", coordinator,
         "--nproc", "2", "--pid", "1"],
        env={**_env(2), "JAXTRANS_TEST_DIST_TIMEOUT": "10"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "distributed start failed at 127.0.0.1" in done.stderr, done.stderr[-2000:]
