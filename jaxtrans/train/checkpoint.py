"""Orbax checkpoints of the trainable state only: adapters, new-token rows, optimizer, step, RNG, data position.

The frozen base is never written; a restart re-reads it from the base model
path. Saves are asynchronous (training continues while the previous step is
written) and orbax commits a step atomically (written to a temporary name, then
renamed), so a half-written step left by a crash is ignored on restart. Restore
places every array with the shardings of the *new* run's mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

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
