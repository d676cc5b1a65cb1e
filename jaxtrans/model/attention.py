"""Grouped-query attention over slots, with causal, padding, packed-segment and sliding-window masks.

Implementations: ``xla`` (the reference), ``chunked`` (blockwise, rematerialised),
``dot_product`` (``jax.nn.dot_product_attention``: cuDNN on NVIDIA GPUs, with a
materialised mask), ``flash`` (Pallas on TPU) and ``triton`` (Pallas Triton on
NVIDIA GPUs); ``auto`` (the default) takes the platform's flash kernel, the one
that reads packed rows as segment ids and never builds a [T, S] mask or score
array: :func:`resolve` says which.

Every token lives in a *slot* (its index in the sequence, or in the KV cache).
Token ``q`` may attend to slot ``k`` when ``k <= q`` (causal), both carry the
same non-zero segment id (segment 0 is padding; packed examples get 1, 2, ...),
and, with a sliding window ``w``, ``q - k < w``. The same rule serves training
on packed batches and decoding from a cache, so there is one mask, tested once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

FLASH_BLOCK = 128  # the Pallas kernels' query/key block: rows must hold whole blocks
# what ``auto`` runs on each platform (jax's platform names); elsewhere the reference
AUTO = {"tpu": "flash", "gpu": "triton", "cuda": "triton"}
CHUNK = 512  # the query block of ``chunked``
LONG_ROW = 2048  # on the CPU, ``auto`` takes ``chunked`` above this: the reference's [T, S] scores grow too large
# implementations that read segment ids and build no [T, S] mask
SEGMENT_KERNELS = ("flash", "triton")


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
    q_btkgh = q_btnh.reshape(b, t, k_bskh.shape[2], -1, h)
    return _attend(q_btkgh, k_bskh, v_bskh, mask_bts, "btkgh", "bskh").reshape(b, t, n, h)


def cached(q_btnh: jax.Array, k_bksh: jax.Array, v_bksh: jax.Array, mask_bts: jax.Array) -> jax.Array:
    """``reference`` over a KV cache laid out [B, K, S, H], the layout decoding reads without a transpose.

    Queries go heads-first too: with the time axis inside, the two products are
    plain batched matmuls over (B, K) that XLA:CPU runs without copies.
    """
    b, t, n, h = q_btnh.shape
    q_bkgth = q_btnh.reshape(b, t, k_bksh.shape[1], -1, h).transpose(0, 2, 3, 1, 4)
    out_bkgth = _attend(q_bkgth, k_bksh, v_bksh, mask_bts, "bkgth", "bksh")
    return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask_bts: jax.Array, q_spec: str, kv_spec: str) -> jax.Array:
    """Grouped-query attention for queries laid out ``q_spec`` and keys/values ``kv_spec`` (einsum letters)."""
    acc = jnp.promote_types(q.dtype, jnp.float32)  # bf16 inputs accumulate in float32
    scores_bkgts = jnp.einsum(f"{q_spec},{kv_spec}->bkgts", q, k, preferred_element_type=acc) * (q.shape[-1] ** -0.5)
    # An additive bias (not a select) keeps the backward pass free of zero-filled buffers; -1e9 sends
    # exp() to exactly 0, and a fully masked row (a padding query) gets a uniform softmax, not NaN.
    bias_bts = jnp.where(mask_bts, 0.0, -1e9).astype(acc)
    scores_bkgts = scores_bkgts + bias_bts[:, None, None, :, :]
    probs_bkgts = jax.nn.softmax(scores_bkgts.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum(f"bkgts,{kv_spec}->{q_spec}", probs_bkgts, v)


def chunked(
    q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array, chunk: int = CHUNK
) -> jax.Array:
    """The reference attention one block of ``chunk`` queries at a time, each block rematerialised.

    Memory holds one [chunk, S] block of scores instead of [T, S], forward
    and backward, on any backend: flash attention's memory profile from plain
    XLA ops (for long sequences where no fused kernel exists, and for the planner).
    """
    b, t, n, h = q_btnh.shape
    if t <= chunk or t % chunk:
        return reference(q_btnh, k_bskh, v_bskh, mask_bts)
    blocks = t // chunk
    q_cbtnh = q_btnh.reshape(b, blocks, chunk, n, h).swapaxes(0, 1)
    mask_cbts = mask_bts.reshape(b, blocks, chunk, -1).swapaxes(0, 1)
    block = jax.checkpoint(lambda q, m: reference(q, k_bskh, v_bskh, m))
    out_cbtnh = jax.lax.map(lambda xs: block(*xs), (q_cbtnh, mask_cbts))
    return out_cbtnh.swapaxes(0, 1).reshape(b, t, n, h)


def dot_product(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array) -> jax.Array:
    """``jax.nn.dot_product_attention``: cuDNN fused attention on NVIDIA GPUs, XLA elsewhere."""
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_bts[:, None], scale=q_btnh.shape[-1] ** -0.5)


def platform() -> str:
    """The platform the code being traced compiles for: the mesh's devices (abstract ones too, when the
    planner compiles for a GPU or TPU it does not have), else jax's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def resolve(name: str, seq_len: int, sliding_window: int | None = None, on: str | None = None) -> str:
    """The implementation ``name`` runs for rows of ``seq_len`` on platform ``on`` (default: :func:`platform`).

    ``auto`` takes the platform's flash kernel where it applies (no sliding window, whole 128-position
    blocks), the blockwise ``chunked`` attention for long rows it cannot take (and for rows longer than
    ``LONG_ROW`` on the CPU, which has no fused kernel), and the reference otherwise; every other name is
    kept (a kernel that cannot take the row shape falls back inside it).
    """
    if name != "auto":
        return name
    kernel = AUTO.get(on or platform())
    if kernel is not None and not sliding_window and seq_len % FLASH_BLOCK == 0:
        return kernel
    if (kernel is not None or seq_len > LONG_ROW) and seq_len > CHUNK and seq_len % CHUNK == 0:
        return "chunked"
    return "xla"


def needs_mask(impl: str, seq_len: int) -> bool:
    """Whether ``impl`` reads the [B, T, S] boolean mask (segment kernels build their own per block)."""
    return impl not in SEGMENT_KERNELS or seq_len % FLASH_BLOCK != 0


def flash(
    q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, segment_bt: jax.Array, mask_bts: jax.Array | None = None
) -> jax.Array:
    """Pallas flash attention for TPU (causal, packed segments); runs in interpret mode elsewhere.

    Rows that are not whole 128-position blocks (short debug rows) take the reference attention when
    ``mask_bts`` is given: the same result, where the kernel would refuse the shape.

    The kernel wants as many KV heads as query heads, so grouped KV heads are
    repeated; padding (segment 0) only ever attends to padding, whose outputs
    nobody reads.
    """
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    if mask_bts is not None and q_btnh.shape[1] % FLASH_BLOCK:
        return reference(q_btnh, k_btkh, v_btkh, mask_bts)
    groups = q_btnh.shape[2] // k_btkh.shape[2]
    k_btnh, v_btnh = (jnp.repeat(x, groups, axis=2) for x in (k_btkh, v_btkh))
    to_bnth = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    scale = q_btnh.shape[-1] ** -0.5

    def kernel(q: jax.Array, k: jax.Array, v: jax.Array, seg: jax.Array) -> jax.Array:
        return fa.flash_attention(q, k, v, segment_ids=fa.SegmentIds(seg, seg), causal=True, sm_scale=scale)

    args = (to_bnth(q_btnh), to_bnth(k_btnh), to_bnth(v_btnh), segment_bt)
    return to_bnth(_per_shard(kernel, *args, heads_axis=1))


def triton(
    q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, segment_bt: jax.Array, mask_bts: jax.Array | None = None
) -> jax.Array:
    """Pallas Triton flash attention for NVIDIA GPUs (causal, packed segments), from
    ``jax.experimental.pallas.ops.gpu.attention``; in Pallas' interpret mode on other backends (tests).

    cuDNN's fused attention takes packed rows only as per-row segment offsets of a fixed count, so packed
    training rows go to this kernel, which reads segment ids block by block. Grouped KV heads are repeated
    (the kernel wants one KV head per query head); padding (segment 0) attends only to padding. Rows that
    are not whole 128-position blocks take the reference when ``mask_bts`` is given.
    """
    from jax.experimental.pallas.ops.gpu import attention as ga

    if mask_bts is not None and q_btnh.shape[1] % FLASH_BLOCK:
        return reference(q_btnh, k_btkh, v_btkh, mask_bts)
    groups = q_btnh.shape[2] // k_btkh.shape[2]
    k_btnh, v_btnh = (jnp.repeat(x, groups, axis=2) for x in (k_btkh, v_btkh))
    interpret = platform() not in ("gpu", "cuda")

    def kernel(q: jax.Array, k: jax.Array, v: jax.Array, seg: jax.Array) -> jax.Array:
        return ga.mha(q, k, v, seg, sm_scale=q.shape[-1] ** -0.5, causal=True, interpret=interpret)

    return _per_shard(kernel, q_btnh, k_btnh, v_btnh, segment_bt, heads_axis=2)


def _per_shard(kernel: Any, q: jax.Array, k: jax.Array, v: jax.Array, seg_bt: jax.Array, heads_axis: int) -> jax.Array:
    """Run a Pallas kernel on each device's rows and heads: compilers cannot partition a custom kernel, so
    under a mesh (``jax.set_mesh``, as the train step sets it) it goes through ``shard_map``, split the way
    the sharding rules split batches and heads (an axis they do not divide stays whole). Arrays are
    [B, ., ., H] with heads on ``heads_axis`` (1 or 2)."""
    from jax.sharding import PartitionSpec as P

    from jaxtrans.sharding import DEFAULT_RULES

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v, seg_bt)
    rules = dict(DEFAULT_RULES)

    def axes(rule: str, dim: int) -> Any:
        names = rules.get(rule)
        names = tuple(a for a in ((names,) if isinstance(names, str) else names or ()) if a in mesh.axis_names)
        size = 1
        for a in names:
            size *= mesh.shape[a]
        return names if names and dim % size == 0 else None

    b, h = axes("batch", q.shape[0]), axes("q_heads", q.shape[heads_axis])
    spec = P(b, h, None, None) if heads_axis == 1 else P(b, None, h, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec, P(b, None)), out_specs=spec,
                         check_vma=False)(q, k, v, seg_bt)  # fmt: skip
