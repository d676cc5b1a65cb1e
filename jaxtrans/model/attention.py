"""Grouped-query attention over slots, with causal, padding, packed-segment and sliding-window masks.

Every token lives in a *slot* (its index in the sequence, or in the KV cache).
Token ``q`` may attend to slot ``k`` when ``k <= q`` (causal), both carry the
same non-zero segment id (segment 0 is padding; packed examples get 1, 2, ...),
and, with a sliding window ``w``, ``q - k < w``. The same rule serves training
on packed batches and decoding from a cache, so there is one mask, tested once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask(
    q_slot_t: jax.Array,
    kv_slot_s: jax.Array,
    q_segment_bt: jax.Array,
    kv_segment_bs: jax.Array,
    sliding_window: int | None = None,
) -> jax.Array:
    """Boolean [B, T, S]: may query t attend to key slot s."""
    allowed_ts = kv_slot_s[None, :] <= q_slot_t[:, None]
    if sliding_window is not None:
        allowed_ts &= (q_slot_t[:, None] - kv_slot_s[None, :]) < sliding_window
    same_bts = q_segment_bt[:, :, None] == kv_segment_bs[:, None, :]
    return allowed_ts[None] & same_bts & (kv_segment_bs[:, None, :] != 0)


def reference(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array) -> jax.Array:
    """Plain XLA attention; softmax in float32 as transformers does. Returns [B, T, N, H]."""
    b, t, n, h = q_btnh.shape
    kv_heads = k_bskh.shape[2]
    q_btkgh = q_btnh.reshape(b, t, kv_heads, n // kv_heads, h)
    acc = jnp.promote_types(q_btnh.dtype, jnp.float32)  # bf16 inputs accumulate in float32
    scores_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh, preferred_element_type=acc) * (h**-0.5)
    # A fully masked row (a padding query) gets a uniform softmax instead of NaN.
    scores_bkgts = jnp.where(mask_bts[:, None, None, :, :], scores_bkgts, jnp.finfo(acc).min)
    probs_bkgts = jax.nn.softmax(scores_bkgts.astype(jnp.float32), axis=-1).astype(v_bskh.dtype)
    out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)
    return out_btkgh.reshape(b, t, n, h)
