"""Map HF tensors onto the model's parameter tree, placing each shard directly on its device.

One table (:func:`hf_layout`) says which HF tensor feeds which parameter and how
its layout differs; loading and export both read it. Loading checks every name
and shape against the table *before* reading any weight, then builds each
parameter from the shards this host addresses: a host never holds more than one
layer's tensor plus its own shards, so a 70B model is never whole on one host.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Sharding, SingleDeviceSharding

from jaxtrans import stop
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig
from jaxtrans.weights.tensors import TensorSource

_LAYER = "model.layers.{}."


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """How one of our parameters is stored in a HF checkpoint.

    ``n_in`` is the number of input axes of a linear kernel (HF stores linear
    weights as [out, in], we store [*in, *out]); None means the same values in
    the same order. ``flat``: HF stores it 1-D (biases of [heads, head_dim]).
    """

    template: str  # HF name; "{}" is the layer index for stacked parameters
    n_in: int | None = None
    flat: bool = False

    @property
    def stacked(self) -> bool:
        return "{}" in self.template

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        if self.n_in is None:
            return (math.prod(ours),) if self.flat else ours
        return (math.prod(ours[self.n_in :]), math.prod(ours[: self.n_in]))

    def to_ours(self, w: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
        return (w if self.n_in is None else w.T).reshape(ours)

    def to_hf(self, w: np.ndarray) -> np.ndarray:
        if self.n_in is None:
            return w.reshape(self.hf_shape(w.shape))
        return w.reshape(math.prod(w.shape[: self.n_in]), -1).T


def hf_layout(cfg: ModelConfig) -> dict[tuple[str, ...], HFTensor]:
    """Our parameter path -> its HF tensor, for this architecture."""
    table = {
        ("embedding",): HFTensor("model.embed_tokens.weight"),
        ("final_norm", "scale"): HFTensor("model.norm.weight"),
        ("layers", "attn_norm", "scale"): HFTensor(_LAYER + "input_layernorm.weight"),
        ("layers", "mlp_norm", "scale"): HFTensor(_LAYER + "post_attention_layernorm.weight"),
        ("layers", "attn", "o", "kernel"): HFTensor(_LAYER + "self_attn.o_proj.weight", n_in=2),
    }
    if not cfg.tie_embeddings:
        table[("lm_head", "kernel")] = HFTensor("lm_head.weight", n_in=1)
    for p in "qkv":
        table[("layers", "attn", p, "kernel")] = HFTensor(_LAYER + f"self_attn.{p}_proj.weight", n_in=1)
        if cfg.qkv_bias:
            table[("layers", "attn", p, "bias")] = HFTensor(_LAYER + f"self_attn.{p}_proj.bias", flat=True)
    if cfg.o_bias:
        table[("layers", "attn", "o", "bias")] = HFTensor(_LAYER + "self_attn.o_proj.bias")
    if cfg.qk_norm:
        for p in ("q", "k"):
            table[("layers", "attn", f"{p}_norm", "scale")] = HFTensor(_LAYER + f"self_attn.{p}_norm.weight")
    for p in ("gate", "up", "down"):
        table[("layers", "mlp", p, "kernel")] = HFTensor(_LAYER + f"mlp.{p}_proj.weight", n_in=1)
        if cfg.mlp_bias:
            table[("layers", "mlp", p, "bias")] = HFTensor(_LAYER + f"mlp.{p}_proj.bias")
    return table


def _hf_names(entry: HFTensor, cfg: ModelConfig) -> list[str]:
    return [entry.template.format(i) for i in range(cfg.num_layers)] if entry.stacked else [entry.template]


def check_source(source: TensorSource, cfg: ModelConfig, where: str) -> None:
    """Every tensor the model needs is present with the right shape; raises on the first problem."""
    shapes = source.shapes()
    abstract = traverse_util.flatten_dict(nn.meta.unbox(llama.abstract_params(cfg)))
    for path, entry in hf_layout(cfg).items():
        ours = abstract[path].shape[1:] if entry.stacked else abstract[path].shape
        want = entry.hf_shape(tuple(ours))
        for name in _hf_names(entry, cfg):
            if name not in shapes:
                raise JaxtransError(
                    f"{where} is missing tensor {name!r}; the checkpoint is incomplete or not {cfg.model_type}"
                )
            if tuple(shapes[name]) != want:
                raise JaxtransError(
                    f"{where}: tensor {name!r} has shape {tuple(shapes[name])}, expected {want} from config.json"
                )


def _slices(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(s.indices(d)[:2] for s, d in zip(index, shape, strict=True))


def _assemble(
    shape: tuple[int, ...],
    dtype: np.dtype,
    sharding: Sharding,
    read: Callable[[int | None], np.ndarray],
    stacked: bool,
) -> jax.Array:
    """Build a global array from the shards this process addresses, reading each tensor once."""
    index_map = sharding.addressable_devices_indices_map(shape)
    bounds = {d: _slices(idx, shape) for d, idx in index_map.items()}
    buffers: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
    unique = sorted(set(bounds.values()))
    if not stacked:
        full = read(None)
        for b in unique:
            buffers[b] = np.ascontiguousarray(full[tuple(slice(lo, hi) for lo, hi in b)].astype(dtype))
    else:
        for b in unique:
            buffers[b] = np.empty(tuple(hi - lo for lo, hi in b), dtype)
        layers = sorted({i for b in unique for i in range(*b[0])})
        for layer in layers:
            w = read(layer)
            for b in unique:
                lo, hi = b[0]
                if lo <= layer < hi:
                    buffers[b][layer - lo] = w[tuple(slice(a, z) for a, z in b[1:])].astype(dtype)
    arrays = [jax.device_put(buffers[bounds[d]], d) for d in index_map]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def load_params(source: TensorSource, cfg: ModelConfig, shardings: Any = None, where: str = "checkpoint") -> Any:
    """Read the base parameters from ``source``; ``shardings`` is a matching tree of Shardings (default: device 0)."""
    check_source(source, cfg, where)
    abstract = nn.meta.unbox(llama.abstract_params(cfg))
    flat_abstract = traverse_util.flatten_dict(abstract)
    flat_shardings = traverse_util.flatten_dict(shardings) if shardings is not None else {}
    default = SingleDeviceSharding(jax.devices()[0])
    dtype = np.dtype(jnp.dtype(cfg.param_dtype))
    out = {}
    for path, entry in hf_layout(cfg).items():
        leaf = flat_abstract[path]
        shape = tuple(leaf.shape)
        per_tensor = shape[1:] if entry.stacked else shape

        def read(layer: int | None, entry: HFTensor = entry, per_tensor: tuple[int, ...] = per_tensor) -> np.ndarray:
            stop.check()  # SIGTERM: stop between tensors
            name = entry.template.format(layer) if layer is not None else entry.template
            return entry.to_ours(np.asarray(source.get(name)), per_tensor)

        out[path] = _assemble(shape, dtype, flat_shardings.get(path, default), read, entry.stacked)
    missing = set(flat_abstract) - set(out)
    if missing:  # the table and the model disagree: a bug, not a user error
        raise AssertionError(f"no HF mapping for parameters {sorted(missing)}")
    return traverse_util.unflatten_dict(out)
