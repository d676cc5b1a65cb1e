"""The train loop: resume, step, log, evaluate, checkpoint, stop cleanly.

Readable top to bottom: restore the latest checkpoint if there is one, then for
each step assemble the global batch, run the compiled step, check the loss,
log (tqdm, JSONL, TensorBoard; process 0 only), evaluate every N steps and save
every N steps. SIGTERM (preemption) saves at the next step boundary and
returns. A NaN/inf loss stops the run with a clear message; the bad state is
never saved, so the last good checkpoint is what a restart resumes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxtrans import devices, stop
from jaxtrans.errors import JaxtransError
from jaxtrans.train import host_embedding
from jaxtrans.train.checkpoint import Checkpointer
from jaxtrans.train.step import Trainer, TrainState


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
    skip_nonfinite_steps: int = 0  # non-finite steps in a row that are skipped (no update) before the run stops


class NonFiniteError(JaxtransError):
    """The loss or gradients stopped being finite; nothing non-finite was saved."""

    def __init__(self, message: str, step: int, last_checkpoint: int | None):
        super().__init__(message)
        self.step, self.last_checkpoint = step, last_checkpoint


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


def read_losses(path: str) -> dict[int, float]:
    """Training loss by step from a ``metrics.jsonl`` (in step order; a resumed run's rewrites of the steps
    after its checkpoint win). Empty when the file does not exist."""
    if not os.path.isfile(path):
        return {}
    by_step: dict[int, float] = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                by_step[row["step"]] = row["loss"]
    return dict(sorted(by_step.items()))


def peak_flops() -> float | None:
    return devices.peak_flops(jax.devices()[0].device_kind)


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
    timed: Callable[[str], ContextManager[dict[str, int]]] | None = None,
) -> TrainState:
    """Train until ``loop.total_steps``, resuming from ``run_dir/checkpoints`` if it holds a step.

    ``timed`` (a :meth:`jaxtrans.timing.Clock.phase`) times steps, compilation and held-out losses apart."""
    timed = timed or _untimed
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), loop.max_to_keep, loop.async_save)
    # with host_embedding the step reads the rest of the base; the loop gathers each batch's rows from the table
    base, table = host_embedding.split(base) if trainer.host_embedding else (base, None)
    state = _initial_state(trainer, base, data, ckpt, init_trainable, seed)
    jitted_step = trainer.compiled_step(base)
    step_fn, flops = None, None  # compiled ahead of time on the first batch
    writer = MetricsWriter(run_dir)
    start = int(jax.device_get(state.step))

    try:
        with (
            timed("train steps") as note,
            stop.installed(),
            tqdm(
                total=loop.total_steps, initial=start, desc=loop.desc, disable=not loop.progress or not writer.active
            ) as bar,
        ):
            step, bad_run = start, 0
            while step < loop.total_steps:
                batch = _global_batch(trainer, next(data), table)
                if step_fn is None:
                    with timed("compile the step"):
                        step_fn, flops = jitted_step.lower(state, base, batch).compile(), _step_flops(trainer, batch)
                t0 = time.perf_counter()
                state, metrics = step_fn(state, base, batch)
                step += 1
                note["count"], note["positions"] = step - start, (step - start) * batch["tokens"].size
                bad_run = 0 if bool(jax.device_get(metrics["finite"])) else bad_run + 1
                metrics = _step_metrics(metrics, time.perf_counter() - t0, flops, step, ckpt, bad_run, loop)
                _log(writer, bar, step, metrics, loop)
                if eval_fn is not None and loop.eval_every and step % loop.eval_every == 0:
                    _evaluate(writer, step, eval_fn, state, timed("held-out loss (eval_every)"))
                if step % loop.save_every == 0 or step == loop.total_steps or stop.requested():
                    ckpt.save(state, {"data": data.state(), **(meta or {})}, force=True)
                if stop.requested():
                    break
        if eval_fn is not None and not loop.eval_every and step > start:
            _evaluate(writer, step, eval_fn, state, timed("held-out loss (end of stage)"))
    finally:
        ckpt.close()
        writer.close()
    return state


def _log(writer: Any, bar: Any, step: int, metrics: dict, loop: LoopConfig) -> None:
    if step % loop.log_every == 0 or step == loop.total_steps:
        writer.write(step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
    bar.update(1)


def _global_batch(trainer: Trainer, local: dict[str, np.ndarray], table: np.ndarray | None) -> dict[str, jax.Array]:
    """This process's rows (and, with a host embedding table, their embedding rows) as one global batch."""
    if table is not None:
        local = {**local, host_embedding.BATCH_KEY: host_embedding.rows(table, local["tokens"], trainer.cfg.dtype)}
    sharding = trainer.batch_sharding()
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _evaluate(writer: Any, step: int, eval_fn: Callable, state: TrainState, timer: ContextManager) -> None:
    with timer:
        writer.write(step, {f"eval/{k}": v for k, v in eval_fn(state.trainable).items()})


@contextlib.contextmanager
def _untimed(what: str) -> Iterator[dict[str, int]]:
    yield {"count": 1, "positions": 0}


def _initial_state(
    trainer: Trainer, base: Any, data: Any, ckpt: Checkpointer, init_trainable: dict | None, seed: int
) -> TrainState:
    """The given (or fresh) trainable state at step 0, or the latest checkpoint's, with the data position."""
    if init_trainable is not None:
        state = trainer.make_state(base, init_trainable, seed)
    else:
        state = trainer.init_state(base, seed)
    restored = ckpt.restore_intact(state, trainer.state_shardings())
    if restored is not None:
        state, saved = restored
        data.restore(saved["data"])
    return state


def _step_metrics(metrics: dict, seconds: float, flops: float | None, step: int, ckpt: Checkpointer,
                  bad_run: int, loop: LoopConfig) -> dict:  # fmt: skip
    """Host floats of a step's metrics plus speed. A step that was not finite changed nothing (see the step);
    more than ``loop.skip_nonfinite_steps`` of them in a row stop the run, its last finite checkpoint kept."""
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not metrics["finite"] and bad_run > loop.skip_nonfinite_steps:
        last = ckpt.latest_step()
        raise NonFiniteError(
            f"loss is {metrics['loss']:.6g} at step {step}; gradient norm {metrics['grad_norm']:.6g}: not finite, so "
            f"the step changed nothing and stage {loop.desc!r} stopped (last good checkpoint: step {last}, all "
            "finite); lower the learning rate and re-run (the stage is retrained from its start), or set "
            "skip_nonfinite_steps",
            step, last,
        )  # fmt: skip
    metrics["tokens_per_s"] = metrics["tokens"] / seconds
    if flops and peak_flops():
        metrics["mfu"] = flops / seconds / (peak_flops() * jax.device_count())
    return metrics


def _step_flops(trainer: Trainer, batch: dict[str, jax.Array]) -> float:
    """FLOPs of one step over a global batch [accum, rows, length], counted from the shapes (``jaxtrans.costs``):
    XLA's cost analysis sees a scanned layer once, so an MFU from it would be low by about the layer count."""
    from jaxtrans.costs import step_flops

    accum, rows, length = batch["tokens"].shape
    return step_flops(trainer.cfg, trainer.adapters, accum * rows * length, length, trainer.modules_to_save).total
