"""NF4 storage for frozen base weights (QLoRA, Dettmers et al. 2023).

A weight tensor is flattened (per layer), cut into blocks of 64 values, and each
block is scaled by its absolute maximum into [-1, 1] and rounded to the nearest
of the 16 NormalFloat values (quantiles of N(0, 1), one exact zero), stored as
4-bit codes packed two per byte. The per-block absmax constants are quantised
again ("double quantisation"): their mean is subtracted and each group of 256
is stored as int8 with one float32 scale. Storage per weight:
0.5 + 1/64 + 4/(64*256) ≈ 0.516 bytes.

Dequantisation runs inside the layer, in the compute dtype, so a 4-bit base
costs one gather and one multiply per weight per step.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 64
ABSMAX_BLOCK = 256


def nf4_codebook() -> np.ndarray:
    """The 16 NF4 values, built as in the QLoRA paper (Appendix E) and bitsandbytes.

    8 positive values are N(0,1) quantiles at evenly spaced probabilities from
    ``offset`` to 0.5, 7 negative ones likewise, plus an exact zero; all are
    divided by the largest so the range is [-1, 1].
    """
    offset = 1 - 0.5 * (1 / 30 + 1 / 32)  # 0.9677083: the paper's delta for 15 and 16 levels per side
    ppf = NormalDist().inv_cdf
    pos = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    values = np.sort(np.array(pos + [0.0] + neg, dtype=np.float64))
    return (values / values.max()).astype(np.float32)


CODEBOOK = nf4_codebook()


class NF4(NamedTuple):
    """One quantised tensor (or a stack of them along a leading layers axis)."""

    codes: jax.Array  # uint8 [..., nb*32]: two 4-bit codes per byte, nb = ceil(n/64) blocks
    absmax_q: jax.Array  # int8 [..., ceil(nb/256)*256]
    absmax_scale: jax.Array  # float32 [..., ceil(nb/256)]
    absmax_mean: jax.Array  # float32 [..., 1]


def _round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def quantize(w: jax.Array) -> NF4:
    """Quantise a stack [L, ...] layer by layer (each layer flattened and blocked on its own)."""
    return _quantize(w.reshape(w.shape[0], -1))


def quantize_single(w: jax.Array) -> NF4:
    """Quantise a whole tensor (no leading layer axis)."""
    q = _quantize(w.reshape(1, -1))
    return NF4(*(x[0] for x in q))


def _quantize(flat_ln: jax.Array) -> NF4:
    lead, n = flat_ln.shape
    x = jnp.pad(flat_ln.astype(jnp.float32), ((0, 0), (0, _round_up(n, BLOCK) - n)))
    blocks = x.reshape(lead, -1, BLOCK)
    nb = blocks.shape[1]
    absmax = jnp.max(jnp.abs(blocks), axis=-1)  # [lead, nb]
    normed = blocks / jnp.where(absmax == 0, 1.0, absmax)[..., None]
    codes = jnp.argmin(jnp.abs(normed[..., None] - jnp.asarray(CODEBOOK)), axis=-1).astype(jnp.uint8)
    codes = codes.reshape(lead, -1, 2)
    packed = (codes[..., 0] << 4) | codes[..., 1]
    # double quantisation of the absmax constants
    mean = jnp.mean(absmax, axis=-1, keepdims=True)
    centred = jnp.pad(absmax - mean, ((0, 0), (0, _round_up(nb, ABSMAX_BLOCK) - nb)))
    centred = centred.reshape(lead, -1, ABSMAX_BLOCK)
    scale = jnp.max(jnp.abs(centred), axis=-1) / 127.0
    q = jnp.round(centred / jnp.where(scale == 0, 1.0, scale)[..., None]).astype(jnp.int8)
    return NF4(packed, q.reshape(lead, -1), scale, mean)


def dequantize(q: NF4, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    """The float tensor of ``shape`` (without any layer axis) that ``q`` stores, in ``dtype``."""
    n = math.prod(shape)
    nb = q.codes.shape[-1] // (BLOCK // 2)
    absmax = q.absmax_q.astype(jnp.float32).reshape(-1, ABSMAX_BLOCK) * q.absmax_scale[:, None]
    absmax = (absmax.reshape(-1)[:nb] + q.absmax_mean).astype(dtype)
    hi, lo = q.codes >> 4, q.codes & 0x0F
    codes = jnp.stack([hi, lo], axis=-1).reshape(-1, BLOCK)
    values = jnp.asarray(CODEBOOK, dtype)[codes] * absmax[:, None]
    return values.reshape(-1)[:n].reshape(shape)


def storage_bytes(q: NF4) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in q)


def quantize_params(params: Any, shardings: Any = None) -> Any:
    """Replace every block projection kernel (``layers/.../kernel``) with its NF4 parts, leaf by leaf.

    ``shardings`` is the quantised tree's sharding tree (from the rules table);
    each float kernel is freed as soon as its NF4 form exists, so peak memory is
    the quantised model plus one float kernel.
    """
    from flax import traverse_util

    flat = dict(traverse_util.flatten_dict(params))
    flat_sh = traverse_util.flatten_dict(shardings) if shardings is not None else {}
    for path in [p for p in flat if p[0] == "layers" and p[-1] == "kernel"]:
        module = path[:-1]
        out_sh = None
        if flat_sh:
            out_sh = NF4(*(flat_sh[module + (name,)] for name in NF4._fields))
        q = jax.jit(quantize, out_shardings=out_sh)(flat.pop(path))
        for name, value in q._asdict().items():
            flat[module + (name,)] = value
    return traverse_util.unflatten_dict(flat)
