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
from typing import Any, NamedTuple

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


def _next_token(logits_bv: jax.Array, keys: jax.Array, i: jax.Array, s: SamplingConfig) -> jax.Array:
    """One shared key for the batch (``generate``), or one per row (the server: each request its own seed)."""
    if keys.ndim == 0:
        return _pick(logits_bv, jax.random.fold_in(keys, i), s)
    return jax.vmap(lambda k, row_v: _pick(row_v[None], jax.random.fold_in(k, i), s)[0])(keys, logits_bv)


class _Rows(NamedTuple):
    """What decoding needs besides the model: the stop ids, the pad id, the keys and each row's token budget."""

    stop_ids: jax.Array
    pad_id: jax.Array
    keys: jax.Array  # one key for the batch, or one per row
    limit_b: jax.Array


def _prefill(
    cfg: ModelConfig,
    variables: Any,
    tokens_bp: jax.Array,
    segment_bp: jax.Array,
    rows: _Rows,
    sampling: SamplingConfig,
    adapters: llama.Adapters,
) -> tuple:
    """The prompts through the model and the first new token: the decode state ``(i, cache, out, done, pos)``."""
    model = llama.Llama(cfg, adapters)
    b, p = tokens_bp.shape
    n_new = sampling.max_new_tokens
    cache = llama.KVCache.empty(cfg, b, p + n_new)
    positions_bp = llama.positions_from_segments(segment_bp)
    logits_b1v, cache = model.apply(variables, tokens_bp, segment_bp, positions_bp, cache, last_logits_only=True)
    first_b = _next_token(logits_b1v[:, 0], rows.keys, jnp.int32(0), sampling)
    out_bn = jnp.full((b, n_new), rows.pad_id, jnp.int32).at[:, 0].set(first_b)
    done_b = jnp.isin(first_b, rows.stop_ids) | (rows.limit_b <= 1)
    return jnp.int32(1), cache, out_bn, done_b, positions_bp[:, -1] + 1


def _advance(
    cfg: ModelConfig,
    variables: Any,
    state: tuple,
    until: jax.Array,
    rows: _Rows,
    sampling: SamplingConfig,
    adapters: llama.Adapters,
    scan_layers: bool,
) -> tuple:
    """Decode from ``state`` until ``until`` new tokens, every row done, or a row's own ``limit_b``."""
    model = llama.Llama(cfg, adapters, scan_layers=scan_layers)
    b = state[2].shape[0]

    def cond(state: tuple) -> jax.Array:
        i, _, _, done_b, _ = state
        return (i < until) & ~jnp.all(done_b)

    def body(state: tuple) -> tuple:
        i, cache, out_bn, done_b, pos_b = state
        tok_b1 = jax.lax.dynamic_slice_in_dim(out_bn, i - 1, 1, axis=1)
        logits_b1v, cache = model.apply(variables, tok_b1, jnp.ones((b, 1), jnp.int32), pos_b[:, None], cache)
        nxt_b = jnp.where(done_b, rows.pad_id, _next_token(logits_b1v[:, 0], rows.keys, i, sampling))
        out_bn = jax.lax.dynamic_update_slice_in_dim(out_bn, nxt_b[:, None], i, axis=1)
        done_b = done_b | jnp.isin(nxt_b, rows.stop_ids) | (i + 1 >= rows.limit_b)
        return i + 1, cache, out_bn, done_b, pos_b + 1

    return jax.lax.while_loop(cond, body, state)


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
    limit_b = jnp.full((tokens_bp.shape[0],), sampling.max_new_tokens, jnp.int32)
    rows = _Rows(stop_ids, pad_id, jax.random.key(sampling.seed), limit_b)
    state = _prefill(cfg, variables, tokens_bp, segment_bp, rows, sampling, adapters)
    if not scan_layers:  # prefill scanned (it slices each layer once), decode unrolled
        variables, state = llama.unstack_layers(variables), (state[0], state[1].unstacked(), *state[2:])
    until = jnp.int32(sampling.max_new_tokens)
    return _advance(cfg, variables, state, until, rows, sampling, adapters, scan_layers)[2]


def _left_padded(
    prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts left-padded to a bucketed length (tokens, segment ids), refused when they do not fit ``limit``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise JaxtransError("generate needs at least one prompt, and no prompt may be empty")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > limit:
        raise JaxtransError(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
            f"{limit}-token cache; shorten the prompt or lower max_new_tokens"
        )
    p = min(_bucket(longest), limit - max_new_tokens)
    tokens = np.full((len(prompts), p), pad_id, np.int32)
    segment = np.zeros((len(prompts), p), np.int32)
    for i, ids in enumerate(prompts):
        tokens[i, p - len(ids) :] = ids
        segment[i, p - len(ids) :] = 1
    return tokens, segment


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
    tokens, segment = _left_padded(prompts, sampling.max_new_tokens, pad_id, max_len or cfg.max_position_embeddings)
    stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
    if scan_layers is None:
        scan_layers = not xla_options.on_cpu() or sampling.max_new_tokens < UNROLL_FROM
    out = _compiled_decode()(cfg, variables, tokens, segment, stops, jnp.int32(pad_id), sampling, adapters, scan_layers)
    return [_until_stop(row, set(stop_ids)) for row in np.asarray(out)]


def _until_stop(row: np.ndarray, stops: set[int], n: int | None = None) -> list[int]:
    """A row's new ids up to and including its first stop id (and at most ``n`` of them)."""
    ids: list[int] = []
    for t in row[:n].tolist():
        ids.append(t)
        if t in stops:
            break
    return ids


@functools.cache
def _compiled_steps() -> tuple[Any, Any, Any]:
    """Prefill, advance and the cache's per-layer re-layout, jitted once (the chunked path of :class:`Decoding`)."""
    opts = xla_options.decoding()
    prefill = jax.jit(_prefill, static_argnames=("cfg", "sampling", "adapters"), compiler_options=opts)
    advance = jax.jit(_advance, static_argnames=("cfg", "sampling", "adapters", "scan_layers"), compiler_options=opts)
    relayout = jax.jit(lambda state: (state[0], state[1].unstacked(), *state[2:]))
    return prefill, advance, relayout


def per_layer(variables: Any) -> Any:
    """The variables re-laid for the unrolled CPU decode loop: made once per model, given to :class:`Decoding`."""
    return jax.jit(llama.unstack_layers)(variables)


class Decoding:
    """One batch decoded a chunk at a time, so a caller can stream rows and stop them between chunks.

    Each row has its own token budget (``limits``) and sampling seed; the
    batch shares ``sampling``'s temperature, top-k and top-p, and
    ``sampling.max_new_tokens`` sizes the cache (at least the largest limit).
    The tokens are those :func:`generate` picks for the same prompt under
    greedy settings. This is the server's path (``jaxtrans.serve``); on CPU it
    decodes over ``layered`` (:func:`per_layer` of ``variables``, made once).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        variables: Any,
        prompts: Sequence[Sequence[int]],
        limits: Sequence[int],
        seeds: Sequence[int],
        sampling: SamplingConfig,
        stop_ids: Sequence[int] = (),
        pad_id: int = 0,
        adapters: llama.Adapters = llama.Adapters(),
        scan_layers: bool | None = None,
        layered: Any = None,
    ):
        if max(limits) > sampling.max_new_tokens:
            raise JaxtransError(f"a row's limit {max(limits)} exceeds the batch's max_new_tokens")
        tokens, segment = _left_padded(prompts, sampling.max_new_tokens, pad_id, cfg.max_position_embeddings)
        self.scan_layers = not xla_options.on_cpu() if scan_layers is None else scan_layers
        self._static = dict(cfg=cfg, sampling=sampling, adapters=adapters)
        self._stop_set = set(stop_ids)
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
        stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
        self._rows = _Rows(stops, jnp.int32(pad_id), keys, jnp.asarray(limits, jnp.int32))
        self.limits = list(limits)  # lowered to where a row was stopped
        prefill, _, relayout = _compiled_steps()
        self._state = prefill(variables=variables, tokens_bp=tokens, segment_bp=segment, rows=self._rows,
                              **self._static)  # fmt: skip
        self._variables = variables
        if not self.scan_layers:
            self._variables = per_layer(variables) if layered is None else layered
            self._state = relayout(self._state)

    @property
    def done(self) -> bool:
        """Every row has stopped (a stop id, its limit, or :meth:`stop`)."""
        full = int(self._state[0]) >= self._static["sampling"].max_new_tokens
        return full or bool(np.all(np.asarray(self._state[3])))

    def step(self, n: int) -> list[list[int]]:
        """Decode up to ``n`` more tokens; every row's new ids so far (up to its stop id)."""
        _, advance, _ = _compiled_steps()
        until = jnp.int32(min(int(self._state[0]) + n, self._static["sampling"].max_new_tokens))
        self._state = advance(variables=self._variables, state=self._state, until=until, rows=self._rows,
                              scan_layers=self.scan_layers, **self._static)  # fmt: skip
        return self.tokens()

    def tokens(self) -> list[list[int]]:
        """Every row's new ids so far, up to its first stop id."""
        i, out = int(self._state[0]), np.asarray(self._state[2])
        return [_until_stop(row, self._stop_set, min(i, lim)) for row, lim in zip(out, self.limits, strict=True)]

    def stop(self, rows: Sequence[int]) -> None:
        """Stop these rows (a client gone, a stop string seen): they take no more tokens."""
        if rows:
            state, i = self._state, int(self._state[0])
            for r in rows:
                self.limits[r] = min(self.limits[r], i)
            self._state = (*state[:3], state[3].at[jnp.asarray(list(rows))].set(True), state[4])
