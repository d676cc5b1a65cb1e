"""The device mesh and the one table that maps logical axes to mesh axes.

Every parameter carries logical axis names (``vocab``, ``embed``, ``q_heads``
...). :data:`DEFAULT_RULES` says which mesh axis each name is split over; the
mesh has three named axes: ``data`` (pure data parallel), ``fsdp`` (data
parallel with parameters sharded) and ``tensor`` (tensor parallel). Changing
the parallel layout of the whole framework means changing this table only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtrans.errors import JaxtransError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes, or None = replicated)
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("lora_rank", "fsdp"),  # the LoRA side whose other axes are not on fsdp (first rule wins per mesh axis)
    ("new_vocab", None),
    ("qblocks", "fsdp"),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all). One size may be -1: it takes the rest."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    n = len(devices)
    if sizes.count(-1) > 1:
        raise JaxtransError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))}: at most one axis may be -1")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if known <= 0 or n % known:
            raise JaxtransError(
                f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} does not divide the {n} available devices; "
                f"choose sizes whose product divides {n}"
            )
        sizes[sizes.index(-1)] = n // known
    if any(s <= 0 for s in sizes) or math.prod(sizes) != n:
        raise JaxtransError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices but {n} are available; "
            f"set mesh sizes whose product is {n} (or use -1 for one axis)"
        )
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def logical_to_sharding(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """NamedShardings for a tree of ``nn.LogicallyPartitioned`` (or plain) leaves.

    A logical axis whose mesh axes do not divide the dimension is replicated
    instead, so odd sizes (9 heads, vocab 49152 on 5 devices) never fail.
    """
    specs = nn.get_partition_spec(abstract_tree)
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract_tree))

    def one(spec: PartitionSpec, shape: tuple[int, ...]) -> NamedSharding:
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec else PartitionSpec()
        fitted = []
        for dim, axes in zip(shape, tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec)), strict=True):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            size = math.prod(mesh.shape[a] for a in names)
            fitted.append(axes if names and dim % size == 0 else None)
        return NamedSharding(mesh, PartitionSpec(*fitted))

    return jax.tree.map(one, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a train batch [accum, batch, length]: micro-batches whole, rows and time by the rules."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes((None, "batch", "length"), rules))


def data_parallel_size(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> int:
    """How many ways the rules split a batch's rows over ``mesh``: a batch size must be a multiple of it."""
    axes = dict(rules).get("batch")
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in names)


def constrain_batch(x: jax.Array, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> jax.Array:
    """Keep an activation [batch, ...] split by rows the way the rules split batches, under the step's mesh.

    Without it the compiler may keep a whole global batch of activations on every device when the weights are
    fsdp-sharded (it did: ``bf16[8, 2048, 11008]`` per chip for a 7B step on v5e-8). Outside a mesh
    (``jax.set_mesh``; decoding, tests on one device) it changes nothing.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    axes = dict(rules).get("batch")
    names = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a in mesh.axis_names)
    size = math.prod(mesh.shape[a] for a in names)
    if size <= 1 or x.shape[0] % size:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(names, *([None] * (x.ndim - 1)))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
