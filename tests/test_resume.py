"""Checkpoints hold only the trainable state, and a killed run resumes bit-exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig, RopeConfig
from jaxtrans.model.lora import LoraConfig
from jaxtrans.train.checkpoint import Checkpointer, directory_bytes
from jaxtrans.train.optim import OptimConfig
from jaxtrans.train.step import Trainer
from tests.conftest import REPO

JOB = os.path.join(REPO, "tests", "train_job.py")
STEPS = 12


def _job(run_dir: str, *extra: str, wait: bool = True) -> subprocess.Popen | None:
    cmd = [sys.executable, JOB, run_dir, str(STEPS), *extra]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    if wait:
        subprocess.run(cmd, check=True, timeout=300, env=env, capture_output=True)
        return None
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _losses(run_dir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out[row["step"]] = row["loss"]  # a re-run step overwrites: it must equal the first value
    return out


def _wait_for_step(run_dir: str, step: int, timeout_s: float = 240) -> None:
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.path.exists(path) and any(json.loads(x)["step"] >= step for x in open(path).read().splitlines()):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the job did not reach step {step}")


def test_sigkill_and_restart_is_bit_identical(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    _job(straight, "--sleep", "0.3")
    proc = _job(killed, "--sleep", "0.3", wait=False)
    try:
        _wait_for_step(killed, 7)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = Checkpointer(os.path.join(killed, "checkpoints")).latest_step()
    assert saved is not None and saved < STEPS
    # a half-written later step (as a crash mid-save leaves it) must be ignored
    half = os.path.join(killed, "checkpoints", f"{STEPS - 1}.orbax-checkpoint-tmp-1234567890")
    os.makedirs(os.path.join(half, "state"))
    open(os.path.join(half, "state", "garbage"), "w").write("partial")
    _job(killed, "--sleep", "0.3")

    a, b = np.load(os.path.join(straight, "final.npz")), np.load(os.path.join(killed, "final.npz"))
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        assert np.array_equal(a[name], b[name]), name
    # the loss curve after the restart continues with the same numbers
    curve_a, lines_b = _losses(straight), open(os.path.join(killed, "metrics.jsonl")).read().splitlines()
    for row in map(json.loads, lines_b):
        assert row["loss"] == curve_a[row["step"]], row["step"]
    assert set(_losses(killed)) == set(range(1, STEPS + 1))


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
    """A truncated ``_METADATA`` in the newest step (a full disk): the re-run says so, sets the step aside, resumes
    from the step before, and ends bit-identical to an uninterrupted run."""
    straight, damaged = str(tmp_path / "straight"), str(tmp_path / "damaged")
    _job(straight)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    subprocess.run([sys.executable, JOB, damaged, "9"], env=env, check=True, timeout=300, capture_output=True)
    ckpts = os.path.join(damaged, "checkpoints")
    assert Checkpointer(ckpts).latest_step() == 9
    meta = os.path.join(ckpts, "9", "state", "_METADATA")
    with open(meta, "r+b") as f:
        f.truncate(os.path.getsize(meta) // 2)
    done = subprocess.run([sys.executable, JOB, damaged, str(STEPS)], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"checkpoint step 9 in {ckpts} is damaged (" in done.stderr
    assert "moved to damaged-9, resuming from step 6" in done.stderr
    assert os.path.isdir(os.path.join(ckpts, "damaged-9"))
    a, b = np.load(os.path.join(straight, "final.npz")), np.load(os.path.join(damaged, "final.npz"))
    for name in a.files:
        assert np.array_equal(a[name], b[name]), name


def test_sigterm_saves_at_the_step_boundary_and_exits(tmp_path):
    run = str(tmp_path / "run")
    proc = _job(run, "--sleep", "0.3", wait=False)
    try:
        _wait_for_step(run, 4)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    last_logged = max(_losses(run))
    assert last_logged < STEPS
    assert Checkpointer(os.path.join(run, "checkpoints")).latest_step() == last_logged


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run(
        [sys.executable, JOB, run, str(STEPS), "--lr", "1e30"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "jaxtrans: error: loss is nan at step" in result.stderr or "loss is inf at step" in result.stderr
    bad_step = int(result.stderr.split(" at step ")[1].split(";")[0])
    latest = Checkpointer(os.path.join(run, "checkpoints")).latest_step()
    assert latest is None or latest < bad_step
    assert f"last good checkpoint: step {latest}" in result.stderr


def test_checkpoint_holds_only_the_trainable_state(tmp_path):
    cfg = ModelConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=1024,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        head_dim=64,
        rope=RopeConfig(head_dim=64),
    )
    from jaxtrans import sharding

    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = Trainer(
        cfg, llama.Adapters(lora=LoraConfig.make(8, 16), new_tokens=64), OptimConfig(1e-3, total_steps=2), mesh
    )
    base = llama.init_params(cfg)
    state = trainer.init_state(base)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(state, {"data": {"position": 0}})
    ckpt.close()
    on_disk = directory_bytes(str(tmp_path / "ckpt"))
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(base))
    print(
        f"checkpoint {on_disk / 1e6:.2f} MB, trainable state {state_bytes / 1e6:.2f} MB, base {base_bytes / 1e6:.2f} MB"
    )
    assert on_disk <= 1.2 * state_bytes + 200_000  # arrays plus orbax's metadata
    assert on_disk < base_bytes / 10
    # and it restores onto the shardings of a run with another mesh
    mesh2 = sharding.make_mesh(2, 2, 2)
    trainer2 = Trainer(cfg, trainer.adapters, trainer.optim, mesh2)
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    restored, meta = ckpt.restore(state, trainer2.state_shardings())
    ckpt.close()
    assert meta["data"] == {"position": 0}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    q_a = restored.trainable["lora"]["layers"]["attn"]["q"]["a"]
    assert q_a.sharding.mesh.shape == mesh2.shape and tuple(q_a.sharding.spec) == (None, "fsdp", None)
