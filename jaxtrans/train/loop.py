"""The train loop: resume, step, log, evaluate, checkpoint, stop cleanly.

Readable top to bottom: restore the latest checkpoint if there is one, then for
each step assemble the global batch, run the compiled step, check the loss,
log (tqdm, JSONL, TensorBoard; process 0 only), evaluate every N steps and save
every N steps. SIGTERM (preemption) saves at the next step boundary and
returns. A NaN/inf loss stops the run with a clear message; the bad state is
never saved, so the last good checkpoint is what a restart resumes from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxtrans.errors import JaxtransError
from jaxtrans.train.checkpoint import Checkpointer
from jaxtrans.train.step import Trainer, TrainState

# Dense bf16 peak FLOP/s per device, for MFU (by jax's device_kind)
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    log_every: int = 1
    save_every: int = 100
    eval_every: int = 0  # 0 = only at the end, if an eval function is given
    max_to_keep: int = 3
    async_save: bool = True
    progress: bool = True
    desc: str = "train"


class MetricsWriter:
    """JSONL and TensorBoard event files under ``run_dir``; silent on processes other than 0."""

    def __init__(self, run_dir: str):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()


class _Preemption:
    """Turns SIGTERM into a flag the loop checks at step boundaries."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption saves
            self._previous = None
        return self

    def _handle(self, *_: Any) -> None:
        self.requested = True

    def __exit__(self, *_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def peak_flops() -> float | None:
    return PEAK_FLOPS.get(jax.devices()[0].device_kind)


def train(
    trainer: Trainer,
    base: Any,
    data: Iterator[dict[str, np.ndarray]],
    loop: LoopConfig,
    run_dir: str,
    *,
    init_trainable: dict[str, Any] | None = None,
    eval_fn: Callable[[dict[str, Any]], dict[str, float]] | None = None,
    meta: dict[str, Any] | None = None,
    seed: int = 0,
) -> TrainState:
    """Train until ``loop.total_steps``, resuming from ``run_dir/checkpoints`` if it holds a step."""
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), loop.max_to_keep, loop.async_save)
    shardings = trainer.state_shardings()
    if init_trainable is not None:
        state = trainer.make_state(base, init_trainable, seed)
    else:
        state = trainer.init_state(base, seed)
    if ckpt.latest_step() is not None:
        state, saved = ckpt.restore(state, shardings)
        data.restore(saved["data"])
    jitted_step = trainer.compiled_step(base)
    step_fn = None  # compiled ahead of time on the first batch: that one executable also gives the FLOP count
    batch_sharding = trainer.batch_sharding()
    flops = None
    writer = MetricsWriter(run_dir)
    start = int(jax.device_get(state.step))

    def save(st: TrainState) -> None:
        ckpt.save(st, {"data": data.state(), **(meta or {})}, force=True)

    try:
        with (
            _Preemption() as preempt,
            tqdm(
                total=loop.total_steps, initial=start, desc=loop.desc, disable=not loop.progress or not writer.active
            ) as bar,
        ):
            step = start
            while step < loop.total_steps:
                local = next(data)
                batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}
                if step_fn is None:
                    step_fn = jitted_step.lower(state, base, batch).compile()
                    flops = _step_flops(step_fn)
                t0 = time.perf_counter()
                state, metrics = step_fn(state, base, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                seconds = time.perf_counter() - t0
                step += 1
                if not math.isfinite(metrics["loss"]):
                    raise JaxtransError(
                        f"loss is {metrics['loss']} at step {step}; stopped without saving this state "
                        f"(last good checkpoint: step {ckpt.latest_step()}); lower the learning rate or check the data"
                    )
                metrics["tokens_per_s"] = metrics["tokens"] / seconds
                if flops and peak_flops():
                    metrics["mfu"] = flops / seconds / (peak_flops() * jax.device_count())
                if step % loop.log_every == 0 or step == loop.total_steps:
                    writer.write(step, metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                bar.update(1)
                if eval_fn is not None and loop.eval_every and step % loop.eval_every == 0:
                    writer.write(step, {f"eval/{k}": v for k, v in eval_fn(state.trainable).items()})
                if step % loop.save_every == 0 or step == loop.total_steps or preempt.requested:
                    save(state)
                if preempt.requested:
                    break
        if eval_fn is not None and not loop.eval_every and step > start:
            writer.write(step, {f"eval/{k}": v for k, v in eval_fn(state.trainable).items()})
    finally:
        ckpt.close()
        writer.close()
    return state


def _step_flops(compiled: Any) -> float | None:
    """FLOPs of one compiled step from XLA's cost analysis (None where the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # cost analysis is best effort on some backends
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) or None
