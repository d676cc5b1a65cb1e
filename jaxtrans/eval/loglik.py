"""Log-likelihoods of continuations: what multiple-choice benchmarks and perplexity are scored with.

``loglikelihood(view, [(context_ids, continuation_ids), ...])`` returns, per
request, the summed log-probability of the continuation tokens given the
context and whether greedy decoding would have produced them (the
``(logprob, is_greedy)`` pair of lm-evaluation-harness). Requests are sorted by
length, right-padded to a multiple of 32 tokens (few compiled shapes) and run
through one jitted forward pass per batch, with LoRA adapters and new-token
rows in place and the variables on whatever mesh they live on. Only the
per-token log-probabilities and greedy flags [B, T] leave the device, never the
[B, T, V] logits. Inputs longer than ``max_len`` keep their last ``max_len``
tokens, as lm-evaluation-harness's HF backend does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrans import stop, xla_options
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig
from jaxtrans.view import ModelView


@functools.cache
def _token_logprobs() -> Any:
    def fn(cfg: ModelConfig, adapters: llama.Adapters, variables: Any, tokens_bt, targets_bt, seg_bt) -> tuple:
        pos_bt = llama.positions_from_segments(seg_bt)
        logits_btv, _ = llama.Llama(cfg, adapters).apply(variables, tokens_bt, seg_bt, pos_bt)
        logp_btv = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
        logp_bt = jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]
        greedy_bt = jnp.argmax(logits_btv, axis=-1) == targets_bt
        return logp_bt, greedy_bt

    return jax.jit(fn, static_argnums=(0, 1), compiler_options=xla_options.accurate())


def _bucket(n: int, multiple: int = 32) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def token_logprobs(
    view: ModelView, sequences: Sequence[Sequence[int]], batch: int = 8
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sequence: log p(token_t | tokens_<t) for t >= 1, and whether it was the argmax (both length n-1)."""
    vocab = view.cfg.vocab_size + view.adapters.new_tokens - view.adapters.padding_rows
    for s in sequences:
        if len(s) < 2:
            raise JaxtransError("a scored sequence needs at least two tokens (a context token and one to score)")
        if min(s) < 0 or max(s) >= vocab:
            raise JaxtransError(f"token ids {min(s)}..{max(s)} fall outside the model's {vocab}-token vocabulary")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    out: list[Any] = [None] * len(sequences)
    for start in range(0, len(order), batch):
        stop.check()  # SIGTERM: between batches
        idx = order[start : start + batch]
        width = _bucket(max(len(sequences[i]) for i in idx) - 1)
        tokens = np.zeros((batch, width), np.int32)
        targets = np.zeros((batch, width), np.int32)
        seg = np.zeros((batch, width), np.int32)
        for row, i in enumerate(idx):
            s = np.asarray(sequences[i], np.int32)
            tokens[row, : len(s) - 1], targets[row, : len(s) - 1], seg[row, : len(s) - 1] = s[:-1], s[1:], 1
        logp, greedy = _token_logprobs()(view.cfg, view.adapters, view.variables, tokens, targets, seg)
        logp, greedy = np.asarray(logp), np.asarray(greedy)
        for row, i in enumerate(idx):
            n = len(sequences[i]) - 1
            out[i] = (logp[row, :n].astype(np.float64), greedy[row, :n])
    return out


def loglikelihood(
    view: ModelView,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_len: int | None = None,
    batch: int = 8,
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), continuation is the greedy one) per (context, continuation)."""
    limit = max_len or view.cfg.max_position_embeddings
    seqs, conts = [], []
    for context, continuation in requests:
        if not context or not continuation:
            raise JaxtransError("loglikelihood needs a non-empty context and continuation (give a BOS as context)")
        if len(continuation) > limit:
            raise JaxtransError(f"a continuation of {len(continuation)} tokens exceeds max_len={limit}")
        seqs.append(list((list(context) + list(continuation))[-(limit + 1) :]))
        conts.append(len(continuation))
    scored = token_logprobs(view, seqs, batch)
    return [(float(lp[-n:].sum()), bool(g[-n:].all())) for (lp, g), n in zip(scored, conts, strict=True)]


def rolling_windows(tokens: Sequence[int], prefix: int, max_len: int) -> list[tuple[list[int], int]]:
    """(window, how many of its last tokens are newly scored): every token scored once, with the most context.

    The first window is ``[prefix] + tokens[:max_len]`` scoring all of them; each
    later one scores the next ``max_len`` tokens (fewer at the end) after as much
    preceding text as fits. The same windows as lm-evaluation-harness's
    ``get_rolling_token_windows(..., context_len=1)``.
    """
    tokens = list(tokens)
    out = [([prefix, *tokens[:max_len]], min(max_len, len(tokens)))] if tokens else []
    done = max_len
    while done < len(tokens):
        n = min(max_len, len(tokens) - done)
        end = done + n
        out.append((tokens[max(0, end - max_len - 1) : end], n))
        done = end
    return out


def rolling_loglikelihood(
    view: ModelView, token_lists: Sequence[Sequence[int]], prefix: int, max_len: int | None = None, batch: int = 8
) -> list[float]:
    """Log-likelihood of whole texts (perplexity), scored in windows of at most ``max_len`` tokens."""
    limit = max_len or view.cfg.max_position_embeddings
    windows = [(i, w, n) for i, toks in enumerate(token_lists) for w, n in rolling_windows(toks, prefix, limit)]
    scored = token_logprobs(view, [w for _, w, _ in windows], batch)
    totals = [0.0] * len(token_lists)
    for (i, _, n), (lp, _) in zip(windows, scored, strict=True):
        totals[i] += float(lp[-n:].sum())
    return totals
