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

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from jaxtrans.model import attention, nf4, rope
from jaxtrans.model.config import ModelConfig
from jaxtrans.model.lora import LoraConfig, kaiming_uniform, lora_delta
from jaxtrans.model.loss import cross_entropy
from jaxtrans.sharding import constrain_batch

Array = jax.Array
_INIT = nn.initializers.normal(stddev=0.02)


class KVCache(NamedTuple):
    """Pre-allocated decoding cache. Slots fill left to right; ``index`` is the next free slot.

    ``k_lbksh``/``v_lbksh`` are one stacked [L, B, K, S, H] array each for the
    scanned model, or a tuple of L [B, K, S, H] arrays for ``scan_layers=False``.
    Heads come before slots so that attention reads the cache without transposing it.
    """

    k_lbksh: Any
    v_lbksh: Any
    segment_bs: Array  # 0 marks empty slots and padding
    index: Array  # int32 scalar

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None, stacked: bool = True) -> KVCache:
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        if stacked:
            k, v = jnp.zeros((cfg.num_layers, *shape), dtype), jnp.zeros((cfg.num_layers, *shape), dtype)
        else:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        return cls(k, v, jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((), jnp.int32))

    def unstacked(self) -> KVCache:
        """The same cache as per-layer arrays, for ``scan_layers=False``."""
        n = self.k_lbksh.shape[0]
        return self._replace(k_lbksh=tuple(self.k_lbksh[i] for i in range(n)),
                             v_lbksh=tuple(self.v_lbksh[i] for i in range(n)))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Adapters:
    """What is added to the frozen base: LoRA, NF4 storage of the block kernels, new vocabulary rows."""

    lora: LoraConfig | None = None
    quantized: bool = False
    # the untied LM head's frozen kernel stored as NF4 too (dequantised where the loss uses it); new-token rows
    # stay trainable in their own ``new_rows`` array. The logits are those of the head's NF4 round trip.
    quantized_head: bool = False
    new_tokens: int = 0  # rows appended after the base vocabulary, trained in the `new_rows` collection
    padding_rows: int = 0  # the last new rows only pad the vocabulary (e.g. to a multiple of 128): never predicted

    def proj(self, name: str) -> dict[str, Any]:
        """Proj keyword arguments for the block projection ``name`` (q, k, v, o, gate, up, down)."""
        lora = self.lora if self.lora is not None and name in self.lora.targets else None
        return {"lora": lora, "quantized": self.quantized}


class LayerContext(NamedTuple):
    """What every layer shares: rotary tables, the attention mask and the cache write position."""

    cos_bth: Array
    sin_bth: Array
    mask_bts: Array | None  # None when the attention kernel reads segment ids instead
    cache_index: Array
    segment_bt: Array


def positions_from_segments(segment_bt: Array) -> Array:
    """Per-segment positions: 0, 1, 2, ... restarting at every new segment (packing, left padding)."""
    t = segment_bt.shape[-1]
    idx_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_bt.shape)
    starts_bt = jnp.concatenate(
        [jnp.ones_like(segment_bt[:, :1], bool), segment_bt[:, 1:] != segment_bt[:, :-1]], axis=1
    )
    start_idx_bt = lax.cummax(jnp.where(starts_bt, idx_bt, 0), axis=1)
    return idx_bt - start_idx_bt


# logical axes of the NF4 parts of a kernel: rows of packed codes and absmax bytes shard like blocks
_NF4_AXES = {"codes": (None, "qblocks"), "absmax_q": ("qblocks", None), "absmax_scale": ("qblocks",),
             "absmax_mean": (None,)}  # fmt: skip


class Proj(nn.Module):
    """A linear map contracting the trailing ``len(in_shape)`` axes of x with the kernel's leading ones.

    ``lora`` adds a trainable low-rank update in the ``lora`` collection;
    ``quantized`` stores the frozen kernel as NF4 and dequantises it here.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    axes: tuple[str, ...]  # logical names of the kernel's axes
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    lora: LoraConfig | None = None
    quantized: bool = False

    def _kernel(self) -> Array:
        shape = self.in_shape + self.out_shape
        if not self.quantized:
            kernel = self.param("kernel", nn.with_logical_partitioning(_INIT, self.axes), shape, self.param_dtype)
            return kernel.astype(self.dtype)
        return nf4.dequantize(self._nf4(), shape, self.dtype)

    def _nf4(self) -> nf4.NF4:
        shape = self.in_shape + self.out_shape
        abstract = jax.eval_shape(lambda: nf4.quantize_single(jnp.zeros(shape, jnp.float32)))
        parts = {
            name: self.param(
                name,
                nn.with_logical_partitioning(nn.initializers.zeros, _NF4_AXES[name]),
                leaf.shape,
                leaf.dtype,
            )
            for name, leaf in abstract._asdict().items()
        }
        return nf4.NF4(**parts)

    @nn.compact
    def __call__(self, x: Array, matmul: Any = None) -> Any:
        """``matmul(x, kernel)`` replaces the plain product (the LM head uses it for its chunked loss); a
        quantised kernel reaches it as its NF4 parts."""
        n_in = len(self.in_shape)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        x = x.astype(self.dtype)
        if matmul is not None:
            return matmul(x, self._nf4() if self.quantized else self._kernel())
        if self.quantized:  # dequantised where it is used, and again in the backward pass: never kept
            shape, dtype = self.in_shape + self.out_shape, self.dtype

            def dequant_dot(x: Array, q: nf4.NF4) -> Array:
                return lax.dot_general(x, nf4.dequantize(q, shape, dtype), (contract, ((), ())))

            y = jax.checkpoint(dequant_dot)(x, self._nf4())
        else:
            y = lax.dot_general(x, self._kernel(), (contract, ((), ())))
        if self.use_bias:
            out_axes = self.axes[n_in:]
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, out_axes), self.out_shape, self.param_dtype
            )
            y = y + bias.astype(self.dtype)
        if self.lora is not None:
            y = y + self._lora(x, contract)
        return y

    def _lora(self, x: Array, contract: tuple) -> Array:
        c = self.lora
        fan_in = math.prod(self.in_shape)
        a_axes = self.axes[: len(self.in_shape)] + ("lora_rank",)
        b_axes = ("lora_rank",) + self.axes[len(self.in_shape) :]
        a = self.variable(
            "lora",
            "a",
            lambda: nn.with_logical_partitioning(kaiming_uniform, a_axes)(
                self.make_rng("params"), self.in_shape + (c.rank,), jnp.float32, fan_in
            ),
        ).value
        b = self.variable(
            "lora",
            "b",
            lambda: nn.with_logical_partitioning(nn.initializers.zeros, b_axes)(
                self.make_rng("params"), (c.rank,) + self.out_shape, jnp.float32
            ),
        ).value
        if c.dropout > 0.0:
            x = nn.Dropout(c.dropout, deterministic=not self.has_rng("dropout"))(x)
        return lora_delta(x, nn.meta.unbox(a), nn.meta.unbox(b), contract, c.scale, self.dtype)


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
    adapters: Adapters = Adapters()

    @nn.compact
    def __call__(
        self, x_btd: Array, ctx: LayerContext, kv: tuple[Array, Array] | None
    ) -> tuple[Array, tuple[Array, Array] | None]:
        c = self.cfg
        d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        ad = self.adapters.proj
        q_btnh = Proj((d,), (n, h), ("embed", "q_heads", "head_dim"), c.qkv_bias, name="q", **kw, **ad("q"))(x_btd)
        k_btkh = Proj((d,), (k, h), ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="k", **kw, **ad("k"))(x_btd)
        v_btkh = Proj((d,), (k, h), ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="v", **kw, **ad("v"))(x_btd)
        if c.qk_norm:  # Qwen3: each head's queries and keys RMS-normalised before the rotation
            q_btnh = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name="q_norm")(q_btnh)
            k_btkh = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name="k_norm")(k_btkh)
        q_btnh = rope.apply(q_btnh, ctx.cos_bth, ctx.sin_bth)
        k_btkh = rope.apply(k_btkh, ctx.cos_bth, ctx.sin_bth)
        if kv is not None:
            k_cache, v_cache = kv
            start = (0, 0, ctx.cache_index, 0)
            k_bksh = lax.dynamic_update_slice(k_cache, k_btkh.swapaxes(1, 2).astype(k_cache.dtype), start)
            v_bksh = lax.dynamic_update_slice(v_cache, v_btkh.swapaxes(1, 2).astype(v_cache.dtype), start)
            kv = (k_bksh, v_bksh)
            out_btnh = attention.cached(q_btnh, k_bksh.astype(c.dtype), v_bksh.astype(c.dtype), ctx.mask_bts)
        else:
            impl = attention.resolve(c.attention, q_btnh.shape[1], c.sliding_window)
            if impl in attention.SEGMENT_KERNELS:
                kernel = attention.flash if impl == "flash" else attention.triton
                out_btnh = kernel(q_btnh, k_btkh, v_btkh, ctx.segment_bt, ctx.mask_bts)
            elif impl == "dot_product":
                out_btnh = attention.dot_product(q_btnh, k_btkh, v_btkh, ctx.mask_bts)
            elif impl == "chunked":
                out_btnh = attention.chunked(q_btnh, k_btkh, v_btkh, ctx.mask_bts)
            else:
                out_btnh = attention.reference(q_btnh, k_btkh, v_btkh, ctx.mask_bts)
        y_btd = Proj((n, h), (d,), ("q_heads", "head_dim", "embed"), c.o_bias, name="o", **kw, **ad("o"))(out_btnh)
        return y_btd, kv


class MLP(nn.Module):
    cfg: ModelConfig
    adapters: Adapters = Adapters()

    @nn.compact
    def __call__(self, x_btd: Array) -> Array:
        c = self.cfg
        d, f = c.hidden_size, c.intermediate_size
        kw = dict(use_bias=c.mlp_bias, dtype=c.dtype, param_dtype=c.param_dtype)
        ad = self.adapters.proj
        gate_btf = Proj((d,), (f,), ("embed", "mlp"), name="gate", **kw, **ad("gate"))(x_btd)
        up_btf = Proj((d,), (f,), ("embed", "mlp"), name="up", **kw, **ad("up"))(x_btd)
        # silu as x / (1 + exp(-x)), torch's formula: XLA's logistic lowering rounds a little worse on CPU.
        act_btf = gate_btf / (1 + jnp.exp(-gate_btf))
        return Proj((f,), (d,), ("mlp", "embed"), name="down", **kw, **ad("down"))(act_btf * up_btf)


class Block(nn.Module):
    """One decoder layer, in the (carry, xs) -> (carry, ys) form that ``nn.scan`` wants."""

    cfg: ModelConfig
    adapters: Adapters = Adapters()

    @nn.compact
    def __call__(
        self, x_btd: Array, ctx: LayerContext, kv: tuple[Array, Array] | None
    ) -> tuple[Array, tuple[Array, Array] | None]:
        c = self.cfg
        norm_kw = dict(eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        x_btd = checkpoint_name(x_btd, LAYER_INPUT)
        attn_out, kv = Attention(c, self.adapters, name="attn")(RMSNorm(name="attn_norm", **norm_kw)(x_btd), ctx, kv)
        h_btd = constrain_batch(x_btd + attn_out)
        out_btd = h_btd + self._mlp(RMSNorm(name="mlp_norm", **norm_kw)(h_btd))
        return constrain_batch(out_btd), kv

    def _mlp(self, x_btd: Array) -> Array:
        """The MLP, or with ``cfg.mlp_chunk`` the same MLP over that many positions at a time: a scan whose
        body is rematerialised, so the [B, T, mlp] intermediates (and their gradients) exist one chunk at a
        time. The MLP is position-wise, so the result is the same (with LoRA dropout each chunk draws its own
        mask); its parameters keep their place."""
        c, t = self.cfg, x_btd.shape[1]
        chunk = c.mlp_chunk
        if not chunk or t <= chunk or t % chunk:
            return MLP(c, self.adapters, name="mlp")(x_btd)
        b, d = x_btd.shape[0], x_btd.shape[2]
        x_cbtd = x_btd.reshape(b, t // chunk, chunk, d).swapaxes(0, 1)

        def body(module: nn.Module, carry: None, x: Array) -> tuple[None, Array]:
            return carry, MLP(c, self.adapters, name="mlp")(x)

        scan = nn.scan(nn.remat(body, prevent_cse=False), variable_broadcast=("params", "lora"),
                       split_rngs={"params": False, "dropout": True}, length=t // chunk)  # fmt: skip
        _, y_cbtd = scan(self, None, x_cbtd)
        return y_cbtd.swapaxes(0, 1).reshape(b, t, d)


LAYER_INPUT = "layer_input"  # the checkpoint name of each decoder layer's input (the residual stream)
_REMAT_POLICIES = {
    "full": None,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # the layer inputs the backward pass starts from live in host memory: device memory no longer grows with
    # layers x tokens (on a backend without a separate host memory the policy compiles to keeping them)
    "offload_residuals": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=[LAYER_INPUT], offload_src="device",
        offload_dst="pinned_host",
    ),
}  # fmt: skip


class Llama(nn.Module):
    """Decoder-only causal LM: ``__call__`` gives (logits [B, T, V], updated cache or None); ``loss`` the
    (sum of token losses, trained tokens) of a batch.

    With ``adapters.new_tokens = n`` the vocabulary is V + n: ids >= V look up
    rows of the ``new_rows`` collection, and logits gain n columns from them.
    """

    cfg: ModelConfig
    adapters: Adapters = Adapters()
    scan_layers: bool = True  # False: one module per layer (``layers_0`` ...), see ``unstack_layers``

    def __call__(
        self,
        tokens_bt: Array,
        segment_bt: Array | None = None,
        positions_bt: Array | None = None,
        cache: KVCache | None = None,
        last_logits_only: bool = False,
        base_rows_btd: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        """``last_logits_only`` returns logits [B, 1, V] of the last position (a prefill needs no others).

        ``base_rows_btd``: the frozen embedding rows of ``tokens_bt``, looked up by
        the caller (a table kept in host memory); the ``embedding`` parameter is
        then neither read nor needed, unless the head is tied to it.
        """
        return self.forward(
            tokens_bt, segment_bt, positions_bt, cache, last_logits_only=last_logits_only, base_rows_btd=base_rows_btd
        )

    def loss(
        self,
        tokens_bt: Array,
        segment_bt: Array,
        positions_bt: Array,
        targets_bt: Array,
        loss_mask_bt: Array,
        base_rows_btd: Array | None = None,
    ) -> tuple[Array, Array]:
        """(sum of next-token losses where ``loss_mask_bt``, number of those tokens).

        With ``cfg.loss_chunk`` the head and the loss run ``loss_chunk`` positions
        at a time, each block rematerialised in the backward pass: the [T, V]
        logits, the largest activation of a LoRA step, are never whole.
        """
        return self.forward(
            tokens_bt, segment_bt, positions_bt, loss=(targets_bt, loss_mask_bt), base_rows_btd=base_rows_btd
        )

    @nn.compact
    def forward(
        self,
        tokens_bt: Array,
        segment_bt: Array | None,
        positions_bt: Array | None,
        cache: KVCache | None = None,
        last_logits_only: bool = False,
        loss: tuple[Array, Array] | None = None,
        base_rows_btd: Array | None = None,
    ) -> Any:
        """The shared body of ``__call__`` (``loss`` None) and ``loss`` (targets and mask given)."""
        c = self.cfg
        b, t = tokens_bt.shape
        segment_bt = (jnp.ones((b, t), jnp.int32) if segment_bt is None else segment_bt).astype(jnp.int32)
        if positions_bt is None:
            positions_bt = positions_from_segments(segment_bt)
        embedding_vd = None
        if base_rows_btd is None or c.tie_embeddings:
            embedding_vd = self.param(
                "embedding", nn.with_logical_partitioning(_INIT, ("vocab", "embed")), (c.vocab_size, c.hidden_size),
                c.param_dtype,
            )  # fmt: skip
        new_embed_nd = self._new_rows("embedding", ("new_vocab", "embed"), (self.adapters.new_tokens, c.hidden_size))
        x_btd = constrain_batch(self._embed(tokens_bt, embedding_vd, new_embed_nd, base_rows_btd))
        x_btd, cache = self._layers(x_btd, segment_bt, positions_bt, cache)
        if last_logits_only:
            x_btd = x_btd[:, -1:]
        x_btd = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name="final_norm")(x_btd)
        head = self._head(x_btd, embedding_vd, new_embed_nd)
        if loss is None:
            return head(x_btd), cache
        targets_bt, mask_bt = loss
        if not c.loss_chunk:
            return cross_entropy(head(x_btd), targets_bt, mask_bt)
        return _chunked_loss(head, x_btd, targets_bt, mask_bt, c.loss_chunk)

    def _new_rows(self, name: str, axes: tuple[str, str], shape: tuple[int, int]) -> Array | None:
        """A ``new_rows`` table (trainable rows of the added tokens), or None without new tokens."""
        if not self.adapters.new_tokens:
            return None
        init = nn.with_logical_partitioning(_INIT, axes)
        return self.variable("new_rows", name, lambda: init(self.make_rng("params"), shape, jnp.float32)).value

    def _embed(
        self, tokens_bt: Array, embedding_vd: Array | None, new_embed_nd: Array | None, base_rows_btd: Array | None
    ) -> Array:
        c, n_new = self.cfg, self.adapters.new_tokens
        if base_rows_btd is None:
            base_rows_btd = jnp.take(embedding_vd, jnp.minimum(tokens_bt, c.vocab_size - 1), axis=0)
        x_btd = base_rows_btd.astype(c.dtype)
        if new_embed_nd is None:
            return x_btd
        new_btd = jnp.take(new_embed_nd, jnp.clip(tokens_bt - c.vocab_size, 0, n_new - 1), axis=0)
        return jnp.where((tokens_bt >= c.vocab_size)[..., None], new_btd.astype(c.dtype), x_btd)

    def _layers(
        self, x_btd: Array, segment_bt: Array, positions_bt: Array, cache: KVCache | None
    ) -> tuple[Array, KVCache | None]:
        """Every decoder layer (scanned, or one module each), with the attention mask and rotary tables."""
        c = self.cfg
        t = x_btd.shape[1]
        q_slot_t = jnp.arange(t, dtype=jnp.int32)
        if cache is None:
            kv_slot_s, kv_segment_bs, index, layer_kv = q_slot_t, segment_bt, jnp.zeros((), jnp.int32), None
        else:
            index = cache.index
            q_slot_t = q_slot_t + index
            kv_slot_s = jnp.arange(cache.segment_bs.shape[1], dtype=jnp.int32)
            kv_segment_bs = lax.dynamic_update_slice(cache.segment_bs, segment_bt, (0, index))
            layer_kv = (cache.k_lbksh, cache.v_lbksh)
        cos_bth, sin_bth = rope.cos_sin(c.rope, positions_bt, c.dtype)
        # a segment-id kernel builds its mask block by block: no [B, T, S] array exists, forward or backward
        impl = attention.resolve(c.attention, t, c.sliding_window)
        mask_bts = None
        if cache is not None or attention.needs_mask(impl, t):
            mask_bts = attention.mask(q_slot_t, kv_slot_s, segment_bt, kv_segment_bs, c.sliding_window)
        ctx = LayerContext(cos_bth, sin_bth, mask_bts, index, segment_bt)
        block = Block
        if c.remat != "none":
            block = nn.remat(Block, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
        if self.scan_layers:
            stack = nn.scan(
                block, variable_axes={"params": 0, "lora": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, 0), length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"},
            )  # fmt: skip
            x_btd, layer_kv = stack(c, self.adapters, name="layers")(x_btd, ctx, layer_kv)
        else:
            kvs = []
            for i in range(c.num_layers):
                kv_i = None if layer_kv is None else (layer_kv[0][i], layer_kv[1][i])
                x_btd, kv_i = block(c, self.adapters, name=f"layers_{i}")(x_btd, ctx, kv_i)
                kvs.append(kv_i)
            if layer_kv is not None:
                layer_kv = (tuple(k for k, _ in kvs), tuple(v for _, v in kvs))
        if cache is None:
            return x_btd, None
        return x_btd, KVCache(layer_kv[0], layer_kv[1], kv_segment_bs, index + t)

    def _head(self, x_btd: Array, embedding_vd: Array, new_embed_nd: Array | None) -> Any:
        """hidden states -> logits of the base vocabulary and the new rows (padding rows at -1e9)."""
        c, n_new = self.cfg, self.adapters.new_tokens
        if c.tie_embeddings:
            tied_vd = embedding_vd.astype(c.dtype)
            base_logits = lambda x: jnp.einsum("...d,vd->...v", x, tied_vd)  # noqa: E731
            new_head_dn = None if new_embed_nd is None else new_embed_nd.T
        else:
            lm_head = Proj((c.hidden_size,), (c.vocab_size,), ("embed", "vocab"), dtype=c.dtype,
                           param_dtype=c.param_dtype, quantized=self.adapters.quantized_head,
                           name="lm_head")  # fmt: skip
            kernel_dv = lm_head(x_btd, matmul=lambda _, w: w)  # NF4 parts with adapters.quantized_head
            if self.adapters.quantized_head:
                base_logits = functools.partial(_nf4_head, kernel_dv, c)
            else:
                base_logits = lambda x: _dense(x, kernel_dv)  # noqa: E731
            new_head_dn = self._new_rows("head", ("embed", "new_vocab"), (c.hidden_size, n_new))

        def head(x: Array) -> Array:
            logits = base_logits(x)
            if new_head_dn is None:
                return logits
            new = jnp.einsum("...d,dn->...n", x, new_head_dn.astype(c.dtype))
            if self.adapters.padding_rows:
                new = jnp.where(jnp.arange(n_new) >= n_new - self.adapters.padding_rows, -1e9, new)
            return jnp.concatenate([logits, new.astype(logits.dtype)], axis=-1)

        return head


def unstack_layers(variables: dict[str, Any]) -> dict[str, Any]:
    """Variables of the scanned model re-laid for ``Llama(..., scan_layers=False)``: ``layers`` -> ``layers_i``.

    Decoding on CPU wants this: slicing one layer out of the stacked weights
    inside the loop is a copy there, every layer of every step.
    """
    out = {}
    for name, tree in variables.items():
        if isinstance(tree, dict) and "layers" in tree:
            layers = tree["layers"]
            n = jax.tree.leaves(layers)[0].shape[0]
            tree = {k: v for k, v in tree.items() if k != "layers"}
            tree.update({f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], layers) for i in range(n)})
        out[name] = tree
    return out


HEAD_TILE = 512  # rows of the embedding axis an NF4 head dequantises at a time


def _nf4_head(q: nf4.NF4, cfg: ModelConfig, x: Array) -> Array:
    """``x @ head`` for a head stored as NF4 [D, V], dequantised ``HEAD_TILE`` rows at a time (a scan whose body
    is rematerialised): the [D, V] float kernel never exists whole, forward or backward. Heads whose tiles do not
    fall on whole absmax groups are dequantised whole."""
    d, v = cfg.hidden_size, cfg.vocab_size
    tile = HEAD_TILE
    if d % tile or (tile * v) % nf4.SLICE:
        return _dense(x, nf4.dequantize(q, (d, v), x.dtype))
    x_nd = x.reshape(-1, d)

    @jax.checkpoint
    def step(acc_nv: Array, i: Array) -> tuple[Array, None]:
        # the tile's dequantisation waits for the previous tile's product: an unrolled loop must not
        # dequantise every tile first and hold them all
        acc_nv, i = lax.optimization_barrier((acc_nv, i))
        w_tv = nf4.dequantize_slice(q, i * tile * v, tile * v, x.dtype).reshape(tile, v)
        x_nt = lax.dynamic_slice_in_dim(x_nd, i * tile, tile, axis=1)
        return acc_nv + jnp.dot(x_nt, w_tv, preferred_element_type=jnp.float32), None

    acc_nv, _ = lax.scan(step, jnp.zeros((x_nd.shape[0], v), jnp.float32), jnp.arange(d // tile))
    return acc_nv.astype(x.dtype).reshape(*x.shape[:-1], v)


def _dense(x: Array, kernel_dv: Array) -> Array:
    """x [..., D] times kernel [D, V], as ``Proj`` computes it (same contraction, same rounding)."""
    return lax.dot_general(x, kernel_dv, (((x.ndim - 1,), (0,)), ((), ())))


def _chunked_loss(head: Any, x_btd: Array, targets_bt: Array, mask_bt: Array, chunk: int) -> tuple[Array, Array]:
    """(sum of token losses, trained tokens), the head applied ``chunk`` positions at a time."""
    b, t, d = x_btd.shape
    if t % chunk:
        return cross_entropy(head(x_btd), targets_bt, mask_bt)
    n = t // chunk
    split = lambda a: a.reshape(b, n, chunk, *a.shape[2:]).swapaxes(0, 1)  # noqa: E731

    @jax.checkpoint
    def block(xs: tuple) -> tuple[Array, Array]:
        x_c, y_c, m_c = xs
        return cross_entropy(head(x_c), y_c, m_c)

    sums, counts = lax.map(block, (split(x_btd), split(targets_bt), split(mask_bt)))
    return jnp.sum(sums), jnp.sum(counts)


def _for_init(cfg: ModelConfig) -> ModelConfig:
    """Initialising runs one token through the model: the reference attention (a fused kernel wants blocks of
    tokens); the parameters are the same whatever attention runs later."""
    return dataclasses.replace(cfg, attention="xla") if cfg.attention != "xla" else cfg


@functools.cache
def abstract_variables(cfg: ModelConfig, adapters: Adapters = Adapters()) -> dict[str, Any]:
    """Every collection's shapes, dtypes and logical axes (``nn.LogicallyPartitioned``), nothing allocated.

    Cached: both configs are frozen, and every caller builds new trees from the result rather than changing it.
    """
    model = Llama(_for_init(cfg), adapters)
    tokens = jnp.zeros((1, 1), jnp.int32)
    return dict(jax.eval_shape(lambda: model.init(jax.random.key(0), tokens)))


def abstract_params(cfg: ModelConfig, adapters: Adapters = Adapters()) -> Any:
    """The frozen base parameters' abstract tree."""
    return abstract_variables(cfg, adapters)["params"]


def init_params(cfg: ModelConfig, seed: int = 0) -> Any:
    """Random base parameters (unboxed), for tests and from-scratch experiments."""
    variables = Llama(_for_init(cfg)).init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))
    return nn.meta.unbox(variables["params"])


def init_trainable(cfg: ModelConfig, adapters: Adapters, seed: int = 0, shardings: Any = None) -> dict[str, Any]:
    """Fresh ``lora`` and ``new_rows`` collections; the base init is dead code that jit removes."""
    model = Llama(_for_init(cfg), adapters)

    def init() -> dict[str, Any]:
        variables = model.init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))
        return {k: nn.meta.unbox(v) for k, v in variables.items() if k != "params"}

    return jax.jit(init, out_shardings=shardings)()
