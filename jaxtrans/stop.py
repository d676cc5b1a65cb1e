"""SIGTERM as a flag that long work reads at its safe points, never an exception thrown into arbitrary code.

A scheduler's SIGTERM (preemption, ``scancel``, ``kill``) may land anywhere: inside jax's garbage-collection
callback (where Python discards exceptions, so a handler that raised was ignored and the run carried on), in
the middle of a checkpoint write or a rename. So the handler only sets a flag; training checks it between
steps (and saves), generation and evaluation between batches, loading between tensors, export between files
written into its staging folder, vocabulary extension between phases and corpus lines. :func:`check` raises
:class:`~jaxtrans.errors.Preempted` there, and every command turns that into exit code 75 (``EX_TEMPFAIL``:
schedulers may requeue; the same command resumes), its staging folders removed on the way out.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from jaxtrans.errors import Preempted

_requested = threading.Event()


def _handle(_signum: int, _frame: Any) -> None:
    _requested.set()


def install() -> None:
    """Make SIGTERM set the flag for the rest of the process (commands call this first; main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handle)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """The flag handler for a block, for library callers (the training loop) that did not install it;
    the previous handler is restored afterwards. Outside the main thread nothing can be installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def requested() -> bool:
    """Whether SIGTERM has arrived (the caller saves what it must, then stops)."""
    return _requested.is_set()


def check() -> None:
    """A safe point: stop here (raise :class:`Preempted`) if SIGTERM has arrived."""
    if _requested.is_set():
        raise Preempted("stopped by SIGTERM")


def clear() -> None:
    """Forget a SIGTERM (tests that run several stops in one process)."""
    _requested.clear()
