"""Rotary position embeddings with HF's rotate-half convention.

The inverse frequencies follow transformers' ``modeling_rope_utils`` in float32,
so logits match transformers to ~1e-6: ``default``, ``linear`` (positions
divided by ``factor``), ``dynamic`` (NTK base growth once the sequence exceeds
the context length; computed from the batch's largest position, inside jit) and
``llama3`` (per-frequency interpolation between scaled and unscaled bands).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxtrans.model.config import RopeConfig


def _base_inv_freq(head_dim: int, theta: jax.Array | float) -> jax.Array:
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (jnp.asarray(theta, jnp.float32) ** exponent)


def inv_freq(rope: RopeConfig, positions_bt: jax.Array) -> jax.Array:
    """Inverse frequencies [head_dim/2] for this batch (``dynamic`` depends on its longest position)."""
    dim = rope.head_dim
    if rope.rope_type == "dynamic":
        max_pos = rope.max_position_embeddings
        seq_len = jnp.maximum(jnp.max(positions_bt) + 1, max_pos).astype(jnp.float32)
        growth = (rope.factor * seq_len / max_pos) - (rope.factor - 1)
        return _base_inv_freq(dim, rope.theta * growth ** (dim / (dim - 2)))
    freq = _base_inv_freq(dim, rope.theta)
    if rope.rope_type == "linear":
        return freq / rope.factor
    if rope.rope_type == "llama3":
        old_ctx = rope.original_max_position_embeddings
        low_wavelen = old_ctx / rope.low_freq_factor
        high_wavelen = old_ctx / rope.high_freq_factor
        wavelen = 2 * math.pi / freq
        scaled = jnp.where(wavelen > low_wavelen, freq / rope.factor, freq)
        smooth = (old_ctx / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, smoothed, scaled)
    return freq


def cos_sin(rope: RopeConfig, positions_bt: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [B, T, head_dim] for the given per-token positions."""
    freqs_btf = positions_bt.astype(jnp.float32)[..., None] * inv_freq(rope, positions_bt)
    emb_bth = jnp.concatenate([freqs_btf, freqs_btf], axis=-1)
    return jnp.cos(emb_bth).astype(dtype), jnp.sin(emb_bth).astype(dtype)


def apply(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """Rotate queries or keys: x*cos + rotate_half(x)*sin, as transformers does."""
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    return x_btnh * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]
