"""Which platform jax starts on: the CPU where no accelerator is attached, so installed plugins stay quiet.

With libtpu (the test extra) or the CUDA plugin installed on a machine
without that accelerator, jax's first backend start prints the plugin's
failed start-up (``could not determine TPU accelerator type``, ``cuInit(0)
failed``) before falling back to the CPU. :func:`choose` runs when jaxtrans is
imported, before any backend starts: if the user chose no platform
(``JAX_PLATFORMS``) and the machine has no accelerator device node, jax
starts on the CPU directly. The planner compiles for accelerators from
abstract topologies and always starts on the CPU (:func:`cpu`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

from jaxtrans.errors import JaxtransError

# device nodes of attached accelerators: NVIDIA GPUs, TPUs (accel on v4, vfio on v5e/v6e), AMD GPUs
ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*", "/dev/kfd")


def has_accelerator() -> bool:
    return any(glob.glob(pattern) for pattern in ACCELERATOR_NODES)


def choose() -> None:
    """Start jax on the CPU when nothing else is attached and the user named no platform."""
    if os.environ.get("JAX_PLATFORMS") or has_accelerator():
        return
    cpu()


def cpu() -> None:
    """Start jax on the CPU platform (a no-op once a backend has started)."""
    import jax

    os.environ["JAX_PLATFORMS"] = "cpu"  # subprocesses (tests, launchers) inherit the choice
    try:
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # a backend already started: the choice was made before us
        pass


@contextlib.contextmanager
def native_stderr() -> Iterator[Callable[[], str]]:
    """Collect what native code writes to file descriptor 2 meanwhile: the compilers' plugins log their start-up
    and parse errors there (``read()`` gives them, for a one-line error); on success they are dropped."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)

        def read() -> str:
            f.seek(0)
            return f.read().decode(errors="replace")

        try:
            yield read
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def check_host_memory(devices: list, remat: str) -> None:
    """``model.remat=offload_residuals`` keeps layer inputs in pinned host memory: refuse, in one line, devices
    that report memories without one (abstract compile targets report none and are left to their compiler)."""
    if remat != "offload_residuals" or not devices:
        return
    try:
        kinds = {m.kind for m in devices[0].addressable_memories()}
    except Exception:  # a device that cannot list its memories: nothing to check against
        return
    if kinds and "pinned_host" not in kinds:
        raise JaxtransError(
            f"model.remat=offload_residuals needs host memory, and {devices[0].platform} devices have only "
            f"{', '.join(sorted(kinds))}; use model.remat=full"
        )
