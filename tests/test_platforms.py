"""Start-up on a machine without an accelerator: jax starts on the CPU, and no installed plugin (libtpu, the CUDA
plugin, both in the test extra) prints its failed start-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxtrans import platforms
from tests.conftest import REPO


@pytest.mark.skipif(platforms.has_accelerator(), reason="this machine has an accelerator attached")
def test_importing_jaxtrans_starts_jax_quietly_on_the_cpu():
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    code = "import jaxtrans, jax; print(jax.devices()[0].platform, jax.numpy.ones(3).sum())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "cpu"
    assert done.stderr.strip() == "", done.stderr[-2000:]


def test_a_platform_the_user_names_is_kept():
    env = {**os.environ, "JAX_PLATFORMS": "cpu,tpu"}
    code = "import os, jaxtrans; print(os.environ['JAX_PLATFORMS'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "cpu,tpu"
