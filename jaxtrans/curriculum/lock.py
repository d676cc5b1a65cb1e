"""One writer per run directory: an exclusive ``flock`` on ``output_dir/jaxtrans.lock`` for the run's life.

The kernel drops the lock when its process ends, however it ends, so a lock
left by a crashed or killed run never blocks the next one; a second live
instance is refused at once with the PID and host holding the lock. In a
multi-host run process 0 holds it and the other processes wait for it at a
barrier. A run directory this instance created and left empty (a run refused
before it wrote anything) is removed on exit.
"""

from __future__ import annotations

import fcntl
import os
import socket
from types import TracebackType

import jax

from jaxtrans.errors import JaxtransError

LOCK = "jaxtrans.lock"


class RunLock:
    """``with RunLock(output_dir):`` — exclusive use of a run directory."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.path = os.path.join(out, LOCK)
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> RunLock:
        if jax.process_index() == 0:
            self.created = not os.path.isdir(self.out)
            os.makedirs(self.out, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(self.fd, 200).decode(errors="replace").strip() or "another process"
                os.close(self.fd)
                self.fd = None
                raise JaxtransError(
                    f"{self.out} is in use by another jaxtrans run ({holder}); wait for it to finish, stop it, "
                    "or use another --config.output_dir"
                ) from None
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxtrans run lock")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.fd is None:
            return
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self.created and os.listdir(self.out) == [LOCK]:
            os.remove(self.path)
            os.rmdir(self.out)
