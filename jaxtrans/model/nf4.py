"""NF4 storage for frozen base weights (QLoRA, Dettmers et al. 2023).

A weight tensor is flattened (per layer), cut into blocks of 64 values, and each
block is scaled by its absolute maximum into [-1, 1] and rounded to the nearest
of the 16 NormalFloat values (quantiles of N(0, 1), one exact zero), stored as
4-bit codes packed two per byte. The per-block absmax constants are quantised
again ("double quantisation"): their mean is subtracted and each group of 256
is stored as int8 with one float32 scale. Storage per weight:
0.5 + 1/64 + 4/(64*256) ≈ 0.516 bytes.

Dequantisation runs inside the layer, in the compute dtype, fused into one
elementwise pass (a select tree on the code bits and one multiply per weight).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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


LANES = 128  # bytes per row of the stored codes and absmax constants


class NF4(NamedTuple):
    """One quantised tensor (or a stack of them along a leading layers axis).

    The byte arrays are laid out in rows of 128: on TPU, 8-bit arrays are tiled
    (32, 128) over their last two axes, so with a flat [layers, bytes] layout one
    layer's slice cut through tiles and the compiler copied the whole stack to
    another layout (2.8 GiB for a 7B model); with [layers, rows, 128] a layer is
    whole tiles.
    """

    codes: jax.Array  # uint8 [..., 128, nb/4]: [j, r] = codes of values 256r+j (high) and 256r+128+j
    # (low), nb = ceil(n/256)*4 blocks of 64
    absmax_q: jax.Array  # int8 [..., ceil(nb/256)*256/128, 128]
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
    x = jnp.pad(flat_ln.astype(jnp.float32), ((0, 0), (0, _round_up(n, BLOCK * 4) - n)))  # whole 128-byte rows
    blocks = x.reshape(lead, -1, BLOCK)
    nb = blocks.shape[1]
    absmax = jnp.max(jnp.abs(blocks), axis=-1)  # [lead, nb]
    normed = blocks / jnp.where(absmax == 0, 1.0, absmax)[..., None]
    codes = jnp.argmin(jnp.abs(normed[..., None] - jnp.asarray(CODEBOOK)), axis=-1).astype(jnp.uint8)
    codes = codes.reshape(lead, -1, 2 * LANES)  # rows of 256 values: byte j holds values j (high) and 128 + j
    packed = (codes[..., :LANES] << 4) | codes[..., LANES:]
    # double quantisation of the absmax constants, over the blocks that hold values (not the row padding)
    real = absmax[:, : -(-n // BLOCK)]
    mean = jnp.mean(real, axis=-1, keepdims=True)
    centred = jnp.pad(real - mean, ((0, 0), (0, _round_up(nb, ABSMAX_BLOCK) - real.shape[1])))
    centred = centred.reshape(lead, -1, ABSMAX_BLOCK)
    scale = jnp.max(jnp.abs(centred), axis=-1) / 127.0
    q = jnp.round(centred / jnp.where(scale == 0, 1.0, scale)[..., None]).astype(jnp.int8)
    return NF4(packed.swapaxes(-1, -2), q.reshape(lead, -1, LANES), scale, mean)


def dequantize(q: NF4, shape: tuple[int, ...], dtype: jnp.dtype, table: bool = False) -> jax.Array:
    """The float tensor of ``shape`` (without any layer axis) that ``q`` stores, in ``dtype``; ``table`` reads
    the codebook as a 16-entry gather instead of :func:`lookup`'s select tree (same values)."""
    n = math.prod(shape)
    rows = q.codes.reshape(LANES, -1).T  # [R, 128] bytes = R rows of 256 values = 4 blocks each
    nb = rows.shape[0] * 2 * LANES // BLOCK
    absmax = q.absmax_q.astype(jnp.float32).reshape(-1, ABSMAX_BLOCK) * q.absmax_scale[:, None]
    absmax = (absmax.reshape(-1)[:nb] + q.absmax_mean).astype(dtype)
    # no axis of 2 (TPU pads a minor axis to 128 lanes): the two halves of a row, then the row's four scales.
    # The layout copies this form avoids are fragile: a one-hot product or a lane select for the scales made
    # the TPU compiler copy every stacked codes array again (+2.9 GiB for a 7B step; docs/benchmarks.md).
    find = (lambda c, dt: jnp.take(jnp.asarray(CODEBOOK, dt), c.astype(jnp.int32), axis=0)) if table else lookup
    values = jnp.concatenate([find(rows >> 4, dtype), find(rows & 0x0F, dtype)], axis=-1)
    values = values * jnp.repeat(absmax.reshape(-1, 2 * LANES // BLOCK), BLOCK, axis=1)
    return values.reshape(-1)[:n].reshape(shape)


SLICE = BLOCK * ABSMAX_BLOCK  # values a slice of a quantised tensor starts and ends on (whole absmax groups)


def dequantize_slice(q: NF4, start: jax.Array, size: int, dtype: jnp.dtype) -> jax.Array:
    """Values ``[start, start + size)`` of the flattened tensor ``q`` stores (both multiples of :data:`SLICE`),
    without the rest: codes and constants of whole absmax groups are sliced out, then dequantised as a tensor."""
    rows, blocks = size // (2 * LANES), size // BLOCK
    part = NF4(
        lax.dynamic_slice_in_dim(q.codes, start // (2 * LANES), rows, axis=1),
        lax.dynamic_slice_in_dim(q.absmax_q, start // (BLOCK * LANES), blocks // LANES, axis=0),
        lax.dynamic_slice_in_dim(q.absmax_scale, start // SLICE, blocks // ABSMAX_BLOCK, axis=0),
        q.absmax_mean,
    )
    return dequantize(part, (size,), dtype, table=True)


def lookup(codes: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """``CODEBOOK[codes]`` as a tree of selects on the code's four bits.

    The same values as a gather, but elementwise: the compiler fuses it with the
    unpacking and scaling into one pass, where a 16-entry gather became (on TPU)
    a dozen weight-sized mask and index buffers per kernel.
    """
    level = [jnp.asarray(v, dtype) for v in CODEBOOK]
    for bit in range(4):
        set_ = ((codes >> bit) & 1).astype(bool)
        level = [jnp.where(set_, level[2 * i + 1], level[2 * i]) for i in range(len(level) // 2)]
    return level[0]


def storage_bytes(q: NF4) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in q)


def quantize_params(params: Any, shardings: Any = None, head: bool = False) -> Any:
    """Replace every block projection kernel (``layers/.../kernel``), and with ``head`` the untied LM head's
    kernel, with its NF4 parts, leaf by leaf.

    ``shardings`` is the quantised tree's sharding tree (from the rules table);
    each float kernel is freed as soon as its NF4 form exists, so peak memory is
    the quantised model plus one float kernel.
    """
    from flax import traverse_util

    flat = dict(traverse_util.flatten_dict(params))
    flat_sh = traverse_util.flatten_dict(shardings) if shardings is not None else {}
    kernels = [p for p in flat if p[0] == "layers" and p[-1] == "kernel"]
    if head and ("lm_head", "kernel") in flat:
        kernels.append(("lm_head", "kernel"))
    for path in kernels:
        module = path[:-1]
        out_sh = None
        if flat_sh:
            out_sh = NF4(*(flat_sh[module + (name,)] for name in NF4._fields))
        fn = quantize if path[0] == "layers" else quantize_single
        q = jax.jit(fn, out_shardings=out_sh)(flat.pop(path))
        for name, value in q._asdict().items():
            flat[module + (name,)] = value
    return traverse_util.unflatten_dict(flat)
