"""Batches from tokenised examples held in memory, in a deterministic, resumable order.

Every process computes the same global order (a seeded permutation per epoch)
and keeps its own contiguous slice of each global batch, which is what
``jax.make_array_from_process_local_data`` expects. The position is one
integer, saved with each checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxtrans.errors import JaxtransError
from jaxtrans.train.step import BATCH_KEYS


class InMemoryBatches:
    """``examples``: arrays [N, T] for every key of a batch; yields dicts of [accum, B_local, T]."""

    def __init__(
        self,
        examples: dict[str, np.ndarray],
        batch_size: int,
        accum: int = 1,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        missing = set(BATCH_KEYS) - set(examples)
        if missing:
            raise JaxtransError(f"examples lack {sorted(missing)}")
        self.examples = {k: np.asarray(examples[k], np.int32) for k in BATCH_KEYS}
        self.n = len(self.examples["tokens"])
        self.pid = jax.process_index() if process_index is None else process_index
        self.nproc = jax.process_count() if process_count is None else process_count
        if batch_size % self.nproc:
            raise JaxtransError(f"batch size {batch_size} is not divisible by the {self.nproc} processes")
        if self.n < batch_size * accum:
            raise JaxtransError(f"only {self.n} examples for a global batch of {batch_size} x {accum} accumulation")
        self.batch_size, self.accum, self.seed = batch_size, accum, seed
        self.position = 0  # global batches consumed

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __next__(self) -> dict[str, np.ndarray]:
        per_step = self.batch_size * self.accum
        per_epoch = self.n // per_step
        epoch, within = divmod(self.position, per_epoch)
        idx = self._order(epoch)[within * per_step : (within + 1) * per_step].reshape(self.accum, self.batch_size)
        local = self.batch_size // self.nproc
        idx = idx[:, self.pid * local : (self.pid + 1) * local]
        self.position += 1
        return {k: v[idx] for k, v in self.examples.items()}

    def __iter__(self) -> InMemoryBatches:
        return self

    def state(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed}

    def restore(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


class StreamingBatches:
    """Batches from a deterministic stream of this process's rows (``make_rows()`` restarts it).

    For data larger than memory: the position is the number of batches consumed,
    and :meth:`restore` replays the stream to it, so a resumed run sees exactly
    the rows an uninterrupted one would have (at the cost of re-reading them).
    """

    def __init__(self, make_rows: Callable[[], Iterator[dict[str, np.ndarray]]], local_batch: int, accum: int = 1):
        self.make_rows, self.local_batch, self.accum = make_rows, local_batch, accum
        self.rows = make_rows()
        self.position = 0

    def _take(self) -> dict[str, np.ndarray]:
        n = self.local_batch * self.accum
        rows = [next(self.rows) for _ in range(n)]
        return {k: np.stack([r[k] for r in rows]).reshape(self.accum, self.local_batch, -1) for k in BATCH_KEYS}

    def __next__(self) -> dict[str, np.ndarray]:
        self.position += 1
        return self._take()

    def __iter__(self) -> StreamingBatches:
        return self

    def state(self) -> dict[str, Any]:
        return {"position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        self.rows = self.make_rows()
        for _ in range(int(state["position"])):
            self._take()
        self.position = int(state["position"])


class LazyBatches:
    """Builds the real batch source on first use, so a finished or resumed stage skips data work it does not need."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self.inner: Any = None
        self.pending: dict[str, Any] | None = None

    def _get(self) -> Any:
        if self.inner is None:
            self.inner = self.factory()
            if self.pending is not None:
                self.inner.restore(self.pending)
        return self.inner

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._get())

    def __iter__(self) -> LazyBatches:
        return self

    def state(self) -> dict[str, Any]:
        return self._get().state() if self.inner is not None else dict(self.pending or {"position": 0})

    def restore(self, state: dict[str, Any]) -> None:
        if self.inner is None:
            self.pending = dict(state)
        else:
            self.inner.restore(state)
