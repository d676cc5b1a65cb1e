"""Requests that arrive together share one jitted generation: a batcher thread over :class:`Decoding`.

HTTP handlers (any thread) call :meth:`Engine.complete`, which blocks until
the ids are ready. The engine's one thread takes the oldest waiting job, waits
``window_s`` for others with the same sampling settings, and decodes up to
``max_batch`` of them together, ``chunk`` tokens at a time. Between chunks it
hands each row's ids to its ``on_ids`` callback (streaming), and stops rows
whose client has gone or whose text reached a stop string, so a finished or
abandoned row costs nothing more. Batch sizes and cache lengths are bucketed
(powers of two; multiples of 64 new tokens) so a handful of shapes compile.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from jaxtrans.data.template import stop_token_ids
from jaxtrans.infer.generate import Decoding, SamplingConfig, per_layer
from jaxtrans.view import ModelView

NEW_TOKENS_BUCKET = 64  # cache lengths are rounded up to this many new tokens
MAX_BATCH, WINDOW_S, CHUNK = 8, 0.01, 16  # the defaults of python -m jaxtrans.serve's --max_batch, --window_ms, --chunk


class Cancelled(Exception):
    """The job was stopped before it finished (its client went away)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What rows of one batch must share."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0


@dataclasses.dataclass(eq=False)
class Job:
    """One generation: a prompt's ids, its budget, and where its ids go."""

    prompt: list[int]
    max_new: int
    settings: Settings = Settings()
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop strings: the row ends once its text holds one
    on_ids: Callable[[list[int]], None] | None = None
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    finish: str = "length"  # "stop" once a stop id or stop string ended it


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


class Engine:
    """The batcher: one thread, one model version, jobs batched by their :class:`Settings`."""

    def __init__(self, view: ModelView, max_batch: int = MAX_BATCH, window_s: float = WINDOW_S, chunk: int = CHUNK):
        self.view, self.max_batch, self.window_s, self.chunk = view, max_batch, window_s, chunk
        self.stop_ids = stop_token_ids(view.tokenizer)
        tok = view.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]
        self._layered: Any = None
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "tokens": 0, "cancelled": 0}
        self._thread = threading.Thread(target=self._loop, name="jaxtrans-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue ``job``; its ``result`` future gets the new ids (up to and including a stop id)."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._pending.append(job)
            self._cv.notify()
        return job.result

    def complete(self, job: Job, timeout: float | None = None) -> list[int]:
        """Submit and wait: the new ids, or :class:`Cancelled` when the job was stopped."""
        return self.submit(job).result(timeout)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        """The oldest job and, after the window, the waiting jobs with its settings (at most ``max_batch``)."""
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            first = self._pending[0]
        time.sleep(self.window_s)  # let requests that arrive together join
        context = self.view.cfg.max_position_embeddings
        batch, longest, most = [], 0, 0
        with self._cv:
            for j in list(self._pending):  # oldest first; a job joins while prompt + budget still fit the context
                fits = max(longest, len(j.prompt)) + max(most, j.max_new) <= context
                if j.settings == first.settings and fits and len(batch) < self.max_batch:
                    batch.append(j)
                    longest, most = max(longest, len(j.prompt)), max(most, j.max_new)
                    self._pending.remove(j)
        return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not j.cancelled.is_set()]
            for j in batch:
                if j.cancelled.is_set():
                    self.stats["cancelled"] += 1
                    j.result.set_exception(Cancelled())
            if not live:
                continue
            try:
                self._run(live)
            except Exception as e:  # a failed batch fails its requests, not the server
                for j in live:
                    if not j.result.done():
                        j.result.set_exception(e)

    def _run(self, jobs: list[Job]) -> None:
        view = self.view
        rows = _pow2(len(jobs))
        spare = rows - len(jobs)  # padding rows, stopped from the start
        budget = -(-max(j.max_new for j in jobs) // NEW_TOKENS_BUCKET) * NEW_TOKENS_BUCKET
        budget = min(budget, view.cfg.max_position_embeddings - max(len(j.prompt) for j in jobs))
        settings = jobs[0].settings
        sampling = SamplingConfig(budget, settings.temperature, settings.top_k, settings.top_p)
        prompts = [j.prompt for j in jobs] + [[self.pad_id]] * spare
        limits = [j.max_new for j in jobs] + [1] * spare
        seeds = [j.seed for j in jobs] + [0] * spare
        self.stats["batches"] += 1
        self.stats["rows"] += len(jobs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        dec = Decoding(view.cfg, view.variables, prompts, limits, seeds, sampling, self.stop_ids, self.pad_id,
                       view.adapters, layered=self._layers())  # fmt: skip
        ids = dec.tokens()
        while True:
            self._report(dec, jobs, ids)
            if dec.done:
                break
            ids = dec.step(self.chunk)
        for j, row in zip(jobs, dec.tokens(), strict=False):
            self.stats["tokens"] += len(row)
            if j.cancelled.is_set():
                self.stats["cancelled"] += 1
                j.result.set_exception(Cancelled())
                continue
            if row and row[-1] in self.stop_ids:
                j.finish = "stop"
            j.result.set_result(row)

    def _report(self, dec: Decoding, jobs: Sequence[Job], ids: list[list[int]]) -> None:
        """Stream each live row's ids; stop rows that are cancelled or hold a stop string."""
        stopped = []
        for r, j in enumerate(jobs):
            if j.cancelled.is_set():
                stopped.append(r)
                continue
            if j.stop and any(s in self.view.tokenizer.decode(ids[r], skip_special_tokens=True) for s in j.stop):
                j.finish = "stop"
                stopped.append(r)
            if j.on_ids is not None:
                try:
                    j.on_ids(ids[r])
                except Exception:  # a listener's failure (its client gone) ends its row only
                    j.cancelled.set()
                    stopped.append(r)
        dec.stop(stopped)

    def _layers(self) -> Any:
        """The per-layer copy of the weights the CPU decode loop reads, made on the first batch."""
        from jaxtrans import xla_options

        if self._layered is None and xla_options.on_cpu():
            self._layered = per_layer(self.view.variables)
        return self._layered
