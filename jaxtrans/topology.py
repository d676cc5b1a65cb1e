"""Abstract TPU slices: compile for a TPU topology on a machine without one (libtpu's deviceless topologies).

``jax.experimental.topologies.get_topology_desc`` gives the devices of a slice
(``v5e:2x2``, ``v5p:2x2x1`` ...) without the hardware; a mesh over them and
``jit(...).lower(...).compile()`` then run the real TPU compiler, so memory and
the kernels chosen are the TPU's (MaxText's ``train_compile.py`` does the
same). It needs the ``libtpu`` package (``pip install libtpu==0.0.42.1`` for
jax 0.10.2); jax itself keeps computing on the local backend.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from jaxtrans import platforms
from jaxtrans.errors import JaxtransError

LIBTPU = "libtpu==0.0.42.1"  # the build jax 0.10.2's TPU extra pins
# slices of each generation, smallest first (chips = product of the dimensions)
SLICES = {
    "v4": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8"),
    "v5p": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8"),
    "v5e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    "v6e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
}


def is_tpu(device: str) -> bool:
    return device in SLICES


def has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def chips(topology: str) -> int:
    return math.prod(int(x) for x in topology.split(":", 1)[1].split("x"))


def default_topology(device: str, mesh_sizes: tuple[int, int, int]) -> str:
    """The smallest slice of ``device`` the mesh fits (a -1 mesh axis takes what the slice has)."""
    known = math.prod(s for s in mesh_sizes if s != -1)
    for shape in SLICES[device]:
        n = chips(f"{device}:{shape}")
        if n >= known and n % known == 0 and (-1 in mesh_sizes or n == known):
            return f"{device}:{shape}"
    raise JaxtransError(f"no {device} slice has {known} chips; choose mesh sizes whose product is a slice size")


def check(device: str, topology: str) -> None:
    """A topology name this device generation has, and libtpu to compile for it: one line otherwise."""
    if not has_libtpu():
        raise JaxtransError(f"compiling for TPU needs libtpu: pip install {LIBTPU} (or drop --topology to use the "
                            "local compiler)")  # fmt: skip
    name, _, shape = topology.partition(":")
    if name not in SLICES or shape not in SLICES[name]:
        known = ", ".join(f"{d}:{s}" for d in SLICES for s in SLICES[d][:3])
        raise JaxtransError(f"unknown TPU topology {topology!r}; use one like {known} ...")
    if name != device:
        raise JaxtransError(f"topology {topology} is not a {device} slice; use --device {name} or a {device}:... one")


def devices(topology: str) -> list[Any]:
    """The abstract devices of a slice, in mesh order."""
    import os

    from jax.experimental import topologies

    # nothing runs on a TPU here, so other processes compiling for one at the same time are no conflict
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    bounds = {"chips_per_host_bounds": [1, 1, 1]} if chips(topology) == 1 else {}
    with platforms.native_stderr():  # libtpu's start-up complaints about the missing TPU (worker hostnames ...)
        try:
            desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **bounds)
        except Exception as e:  # libtpu's own refusal of a shape, in one line
            raise JaxtransError(f"libtpu cannot describe topology {topology}: {str(e).splitlines()[0][:200]}") from None
    return list(desc.devices)
