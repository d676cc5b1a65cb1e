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

import glob
import os

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
