"""The Llama-family decoder in Flax linen.

Why linen: its variable collections are separate pytrees by construction
(``params`` for the frozen base, ``lora`` for adapters, ``new_rows`` for
extended-vocabulary rows), ``nn.scan`` stacks the layers so compile time does
not grow with depth, and logical axis names on every parameter feed the single
sharding table in :mod:`jaxtrans.sharding`.

Parameter layout (leading ``layers`` axis on everything under ``layers``)::

    embedding                          [vocab, embed]
    layers/attn_norm/scale             [L, embed]
    layers/attn/{q,k,v}/kernel         [L, embed, heads, head_dim]
    layers/attn/o/kernel               [L, heads, head_dim, embed]
    layers/mlp_norm/scale              [L, embed]
    layers/mlp/{gate,up}/kernel        [L, embed, mlp]
    layers/mlp/down/kernel             [L, mlp, embed]
    final_norm/scale                   [embed]
    lm_head/kernel                     [embed, vocab]   (absent when tied)

Shapes in names follow Tunix: ``x_btd`` is [batch, time, embed]; n = query
heads, k = kv heads, h = head_dim, s = key slots, f = mlp, v = vocab.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxtrans.model import attention, rope
from jaxtrans.model.config import ModelConfig

Array = jax.Array
_INIT = nn.initializers.normal(stddev=0.02)


class KVCache(NamedTuple):
    """Pre-allocated decoding cache. Slots fill left to right; ``index`` is the next free slot."""

    k_lbskh: Array
    v_lbskh: Array
    segment_bs: Array  # 0 marks empty slots and padding
    index: Array  # int32 scalar

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(
            jnp.zeros(shape, dtype),
            jnp.zeros(shape, dtype),
            jnp.zeros((batch, max_len), jnp.int32),
            jnp.zeros((), jnp.int32),
        )


class LayerContext(NamedTuple):
    """What every layer shares: rotary tables, the attention mask and the cache write position."""

    cos_bth: Array
    sin_bth: Array
    mask_bts: Array
    cache_index: Array


def positions_from_segments(segment_bt: Array) -> Array:
    """Per-segment positions: 0, 1, 2, ... restarting at every new segment (packing, left padding)."""
    t = segment_bt.shape[-1]
    idx_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_bt.shape)
    starts_bt = jnp.concatenate(
        [jnp.ones_like(segment_bt[:, :1], bool), segment_bt[:, 1:] != segment_bt[:, :-1]], axis=1
    )
    start_idx_bt = lax.cummax(jnp.where(starts_bt, idx_bt, 0), axis=1)
    return idx_bt - start_idx_bt


class Proj(nn.Module):
    """A linear map contracting the trailing ``len(in_shape)`` axes of x with the kernel's leading ones."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    axes: tuple[str, ...]  # logical names of the kernel's axes
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(_INIT, self.axes), self.in_shape + self.out_shape, self.param_dtype
        )
        n_in = len(self.in_shape)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
        if self.use_bias:
            out_axes = self.axes[n_in:]
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, out_axes), self.out_shape, self.param_dtype
            )
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, as transformers does, then scaled in the compute dtype."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_btd: Array) -> Array:
        scale_d = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x_btd.shape[-1],), self.param_dtype
        )
        x32 = x_btd.astype(jnp.float32)
        normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * scale_d.astype(self.dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x_btd: Array, ctx: LayerContext, kv: tuple[Array, Array] | None
    ) -> tuple[Array, tuple[Array, Array] | None]:
        c = self.cfg
        d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        q_btnh = Proj((d,), (n, h), ("embed", "q_heads", "head_dim"), c.qkv_bias, name="q", **kw)(x_btd)
        k_btkh = Proj((d,), (k, h), ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="k", **kw)(x_btd)
        v_btkh = Proj((d,), (k, h), ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="v", **kw)(x_btd)
        q_btnh = rope.apply(q_btnh, ctx.cos_bth, ctx.sin_bth)
        k_btkh = rope.apply(k_btkh, ctx.cos_bth, ctx.sin_bth)
        if kv is not None:
            k_cache, v_cache = kv
            start = (0, ctx.cache_index, 0, 0)
            k_bskh = lax.dynamic_update_slice(k_cache, k_btkh.astype(k_cache.dtype), start)
            v_bskh = lax.dynamic_update_slice(v_cache, v_btkh.astype(v_cache.dtype), start)
            kv = (k_bskh, v_bskh)
            k_att, v_att = k_bskh.astype(c.dtype), v_bskh.astype(c.dtype)
        else:
            k_att, v_att = k_btkh, v_btkh
        out_btnh = attention.reference(q_btnh, k_att, v_att, ctx.mask_bts)
        y_btd = Proj((n, h), (d,), ("q_heads", "head_dim", "embed"), c.o_bias, name="o", **kw)(out_btnh)
        return y_btd, kv


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd: Array) -> Array:
        c = self.cfg
        d, f = c.hidden_size, c.intermediate_size
        kw = dict(use_bias=c.mlp_bias, dtype=c.dtype, param_dtype=c.param_dtype)
        gate_btf = Proj((d,), (f,), ("embed", "mlp"), name="gate", **kw)(x_btd)
        up_btf = Proj((d,), (f,), ("embed", "mlp"), name="up", **kw)(x_btd)
        # silu as x / (1 + exp(-x)), torch's formula: XLA's logistic lowering rounds a little worse on CPU.
        act_btf = gate_btf / (1 + jnp.exp(-gate_btf))
        return Proj((f,), (d,), ("mlp", "embed"), name="down", **kw)(act_btf * up_btf)


class Block(nn.Module):
    """One decoder layer, in the (carry, xs) -> (carry, ys) form that ``nn.scan`` wants."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x_btd: Array, ctx: LayerContext, kv: tuple[Array, Array] | None
    ) -> tuple[Array, tuple[Array, Array] | None]:
        c = self.cfg
        norm_kw = dict(eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        attn_out, kv = Attention(c, name="attn")(RMSNorm(name="attn_norm", **norm_kw)(x_btd), ctx, kv)
        h_btd = x_btd + attn_out
        out_btd = h_btd + MLP(c, name="mlp")(RMSNorm(name="mlp_norm", **norm_kw)(h_btd))
        return out_btd, kv


_REMAT_POLICIES = {
    "full": None,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Llama(nn.Module):
    """Decoder-only causal LM. Returns (logits [B, T, V], updated cache or None)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_bt: Array,
        segment_bt: Array | None = None,
        positions_bt: Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Array, KVCache | None]:
        c = self.cfg
        b, t = tokens_bt.shape
        if segment_bt is None:
            segment_bt = jnp.ones((b, t), jnp.int32)
        segment_bt = segment_bt.astype(jnp.int32)
        if positions_bt is None:
            positions_bt = positions_from_segments(segment_bt)

        embedding_vd = self.param(
            "embedding",
            nn.with_logical_partitioning(_INIT, ("vocab", "embed")),
            (c.vocab_size, c.hidden_size),
            c.param_dtype,
        )
        x_btd = jnp.take(embedding_vd, tokens_bt, axis=0).astype(c.dtype)

        q_slot_t = jnp.arange(t, dtype=jnp.int32)
        if cache is None:
            kv_slot_s, kv_segment_bs, index = q_slot_t, segment_bt, jnp.zeros((), jnp.int32)
            layer_kv = None
        else:
            index = cache.index
            q_slot_t = q_slot_t + index
            kv_slot_s = jnp.arange(cache.segment_bs.shape[1], dtype=jnp.int32)
            kv_segment_bs = lax.dynamic_update_slice(cache.segment_bs, segment_bt, (0, index))
            layer_kv = (cache.k_lbskh, cache.v_lbskh)
        cos_bth, sin_bth = rope.cos_sin(c.rope, positions_bt, c.dtype)
        mask_bts = attention.mask(q_slot_t, kv_slot_s, segment_bt, kv_segment_bs, c.sliding_window)
        ctx = LayerContext(cos_bth, sin_bth, mask_bts, index)

        block = Block
        if c.remat != "none":
            block = nn.remat(Block, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
        stack = nn.scan(
            block,
            variable_axes={"params": 0, "lora": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, 0),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x_btd, layer_kv = stack(c, name="layers")(x_btd, ctx, layer_kv)
        x_btd = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name="final_norm")(x_btd)

        if c.tie_embeddings:
            logits_btv = jnp.einsum("btd,vd->btv", x_btd, embedding_vd.astype(c.dtype))
        else:
            logits_btv = Proj(
                (c.hidden_size,),
                (c.vocab_size,),
                ("embed", "vocab"),
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                name="lm_head",
            )(x_btd)

        new_cache = None
        if cache is not None:
            new_cache = KVCache(layer_kv[0], layer_kv[1], kv_segment_bs, index + t)
        return logits_btv, new_cache


def abstract_params(cfg: ModelConfig) -> Any:
    """Shapes, dtypes and logical partitioning of the parameters, without allocating them."""
    model = Llama(cfg)
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]


def init_params(cfg: ModelConfig, seed: int = 0) -> Any:
    """Random parameters (unboxed), for tests and from-scratch experiments."""
    model = Llama(cfg)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))
    return nn.meta.unbox(variables["params"])
