"""Batched decoding with a pre-allocated KV cache: greedy, temperature, top-k, top-p, stop tokens.

Prompts are left-padded to a bucketed length so a handful of shapes compile
once; the prefill and the whole decode loop run in one jitted call
(``lax.while_loop``, stopping early once every row has hit a stop token).
This is the one implementation behind chat, evaluation and recovery-KD.

On CPU, long decodes run the layers unrolled over per-layer weights (see
``llama.unstack_layers``): XLA:CPU copies a layer out of the stacked weights
at every step of a scan, which cost 40% of each SmolLM2 step. Unrolling costs
one copy of the layer weights per call and a longer compile (+3 s for
SmolLM2's 30 layers, per prompt bucket), which pays from about 100 steps; so
it is used from ``UNROLL_FROM`` new tokens. Other backends always scan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrans import xla_options
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig

UNROLL_FROM = 128  # max_new_tokens from which CPU decoding unrolls the layers


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token. ``temperature == 0`` is greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int = 0


def _bucket(n: int, multiple: int = 32) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _pick(logits_bv: jax.Array, key: jax.Array, s: SamplingConfig) -> jax.Array:
    logits_bv = logits_bv.astype(jnp.float32)
    if s.temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits_bv = logits_bv / s.temperature
    if s.top_k > 0:
        kth_b1 = jax.lax.top_k(logits_bv, s.top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth_b1, -jnp.inf, logits_bv)
    if s.top_p < 1.0:
        sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
        # keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p
        kept_b = jnp.sum(jnp.cumsum(probs_bv, axis=-1) - probs_bv < s.top_p, axis=-1)
        cutoff_idx_b = jnp.maximum(kept_b - 1, 0)
        cutoff_b1 = jnp.take_along_axis(sorted_bv, cutoff_idx_b[:, None], axis=-1)
        logits_bv = jnp.where(logits_bv < cutoff_b1, -jnp.inf, logits_bv)
    return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)


def _decode(
    cfg: ModelConfig,
    variables: Any,
    tokens_bp: jax.Array,
    segment_bp: jax.Array,
    stop_ids: jax.Array,
    pad_id: jax.Array,
    sampling: SamplingConfig,
    adapters: llama.Adapters,
    scan_layers: bool,
) -> jax.Array:
    model = llama.Llama(cfg, adapters)
    b, p = tokens_bp.shape
    n_new = sampling.max_new_tokens
    cache = llama.KVCache.empty(cfg, b, p + n_new)
    positions_bp = llama.positions_from_segments(segment_bp)
    logits_b1v, cache = model.apply(variables, tokens_bp, segment_bp, positions_bp, cache, last_logits_only=True)
    if not scan_layers:  # prefill scanned (it slices each layer once), decode unrolled
        model = llama.Llama(cfg, adapters, scan_layers=False)
        variables, cache = llama.unstack_layers(variables), cache.unstacked()
    next_pos_b = positions_bp[:, -1] + 1
    key = jax.random.key(sampling.seed)
    first = _pick(logits_b1v[:, 0], jax.random.fold_in(key, 0), sampling)
    out_bn = jnp.full((b, n_new), pad_id, jnp.int32).at[:, 0].set(first)
    done_b = jnp.isin(first, stop_ids)

    def cond(state: tuple) -> jax.Array:
        i, _, _, done_b, _ = state
        return (i < n_new) & ~jnp.all(done_b)

    def body(state: tuple) -> tuple:
        i, cache, out_bn, done_b, pos_b = state
        tok_b1 = jax.lax.dynamic_slice_in_dim(out_bn, i - 1, 1, axis=1)
        logits_b1v, cache = model.apply(variables, tok_b1, jnp.ones((b, 1), jnp.int32), pos_b[:, None], cache)
        nxt_b = _pick(logits_b1v[:, 0], jax.random.fold_in(key, i), sampling)
        nxt_b = jnp.where(done_b, pad_id, nxt_b)
        out_bn = jax.lax.dynamic_update_slice_in_dim(out_bn, nxt_b[:, None], i, axis=1)
        return i + 1, cache, out_bn, done_b | jnp.isin(nxt_b, stop_ids), pos_b + 1

    _, _, out_bn, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, out_bn, done_b, next_pos_b))
    return out_bn


@functools.cache
def _compiled_decode() -> Any:
    static = ("cfg", "sampling", "adapters", "scan_layers")
    return jax.jit(_decode, static_argnames=static, compiler_options=xla_options.decoding())


def generate(
    cfg: ModelConfig,
    variables: Any,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig = SamplingConfig(),
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    max_len: int | None = None,
    adapters: llama.Adapters = llama.Adapters(),
    scan_layers: bool | None = None,
) -> list[list[int]]:
    """New token ids for each prompt, up to and including the first stop token.

    ``variables`` is what ``Llama.apply`` takes (``{"params": ...}`` plus the
    ``lora`` / ``new_rows`` collections that ``adapters`` describes).
    ``max_len`` bounds prompt + new tokens (default: the model's context length).
    ``scan_layers`` picks the layer loop (default: see the module docstring).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise JaxtransError("generate needs at least one prompt, and no prompt may be empty")
    limit = max_len or cfg.max_position_embeddings
    longest = max(len(p) for p in prompts)
    if longest + sampling.max_new_tokens > limit:
        raise JaxtransError(
            f"a prompt of {longest} tokens plus max_new_tokens={sampling.max_new_tokens} exceeds the "
            f"{limit}-token cache; shorten the prompt or lower max_new_tokens"
        )
    p = min(_bucket(longest), limit - sampling.max_new_tokens)
    tokens = np.full((len(prompts), p), pad_id, np.int32)
    segment = np.zeros((len(prompts), p), np.int32)
    for i, ids in enumerate(prompts):
        tokens[i, p - len(ids) :] = ids
        segment[i, p - len(ids) :] = 1
    stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
    if scan_layers is None:
        scan_layers = not xla_options.on_cpu() or sampling.max_new_tokens < UNROLL_FROM
    out = _compiled_decode()(cfg, variables, tokens, segment, stops, jnp.int32(pad_id), sampling, adapters, scan_layers)
    out = np.asarray(out)
    results = []
    stop_set = set(stop_ids)
    for row in out:
        ids: list[int] = []
        for t in row.tolist():
            ids.append(t)
            if t in stop_set:
                break
        results.append(ids)
    return results
