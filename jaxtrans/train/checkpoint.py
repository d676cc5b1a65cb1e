"""Orbax checkpoints of the trainable state only: adapters, new-token rows, optimizer, step, RNG, data position.

The frozen base is never written; a restart re-reads it from the base model
path. Saves are asynchronous (training continues while the previous step is
written) and orbax commits a step atomically (written to a temporary name, then
renamed), so a half-written step left by a crash is ignored on restart. Restore
places every array with the shardings of the *new* run's mesh.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxtrans.errors import JaxtransError
from jaxtrans.train.step import TrainState


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: dict[str, Any], force: bool = False) -> None:
        """Save at ``state.step``; ``meta`` (JSON) holds the data position and the resolved config."""
        step = int(jax.device_get(state.step))
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore(self, target: TrainState, shardings: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restore onto ``shardings`` (the current mesh); ``target`` gives shapes and dtypes."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return restored["state"], restored["meta"]

    def restore_intact(self, target: TrainState, shardings: TrainState) -> tuple[TrainState, dict] | None:
        """The newest checkpoint that restores (None when there is none). A damaged newer step (a truncated
        ``_METADATA`` after a full disk, a partial copy) is said on stderr, moved aside as ``damaged-STEP`` so the
        resumed run can save that step again, and the one before it is used."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.restore(target, shardings, step)
            except Exception as e:  # orbax raises what its reader met: JSON, msgpack, tensorstore or file errors
                damaged.append(
                    (step, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__)
                )
                continue
            if damaged:
                self._set_aside([s for s, _ in damaged])
                for s, why in damaged:
                    print(f"jaxtrans: warning: checkpoint step {s} in {self.directory} is damaged ({why}); moved to "
                          f"damaged-{s}, resuming from step {step}", file=sys.stderr)  # fmt: skip
            return restored
        if damaged:
            raise JaxtransError(
                f"every checkpoint in {self.directory} is damaged (step {damaged[0][0]}: {damaged[0][1]}); delete the "
                "folder to train this stage from its start"
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            for step in steps:
                os.replace(os.path.join(self.directory, str(step)), os.path.join(self.directory, f"damaged-{step}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxtrans damaged checkpoints")
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def directory_bytes(path: str) -> int:
    """Bytes on disk under ``path`` (for the 'checkpoint ≈ trainable state' check)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total
