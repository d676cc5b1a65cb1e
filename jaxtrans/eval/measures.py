"""Measurements shared by the pipeline report and ``python -m jaxtrans.eval``.

Held-out loss is reported in **nats per character**, not per token: vocabulary
extension changes how many tokens a Thai sentence takes, and only a
per-character figure compares the model before and after it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxtrans import stop, xla_options
from jaxtrans.data.formats import encode_text
from jaxtrans.data.pack import pack
from jaxtrans.data.template import chat_ids, decode_counted
from jaxtrans.infer.generate import SamplingConfig, generate
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig
from jaxtrans.model.loss import cross_entropy
from jaxtrans.view import ModelView  # noqa: F401  (used by callers as measures.ModelView)


@functools.cache
def _loss_fn() -> Any:
    def loss(cfg: ModelConfig, adapters: llama.Adapters, variables: Any, rows: dict) -> tuple:
        logits, _ = llama.Llama(cfg, adapters).apply(variables, rows["tokens"], rows["segment_ids"], rows["positions"])
        return cross_entropy(logits, rows["targets"], rows["loss_mask"])

    return jax.jit(loss, static_argnums=(0, 1), compiler_options=xla_options.accurate())


def pieces(text: str, max_chars: int) -> list[str]:
    """``text`` cut at whitespace into pieces of at most ``max_chars`` (hard cuts only inside longer words)."""
    out, current = [], ""
    for word in text.split():
        while len(word) > max_chars:
            if current:
                out.append(current)
                current = ""
            out.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        out.append(current)
    return out


def nats_per_char(
    view: ModelView,
    texts: Sequence[str],
    seq_len: int = 512,
    batch: int = 8,
    max_chars: int = 120,
    desc: str = "held-out loss",
) -> float:
    """Total next-token loss over ``texts`` divided by their characters.

    Texts are cut into pieces of at most ``max_chars`` characters (the same
    pieces for every model, so figures compare), each scored from its start.
    """
    texts = [p for t in texts for p in pieces(t, max_chars)]
    pad = view.tokenizer.pad_token_id if view.tokenizer.pad_token_id is not None else 0
    rows, _ = pack([encode_text(view.tokenizer, t) for t in texts], seq_len, pad, "error")
    n = len(rows["tokens"])
    padded = -(-n // batch) * batch
    rows = {k: np.concatenate([v, np.zeros((padded - n, seq_len), np.int32)]) for k, v in rows.items()}
    total = 0.0
    for i in tqdm(range(0, padded, batch), desc=desc, leave=False, disable=jax.process_index() != 0):
        chunk = {k: jnp.asarray(v[i : i + batch]) for k, v in rows.items()}
        s, _ = _loss_fn()(view.cfg, view.adapters, view.variables, chunk)
        total += float(s)
    chars = sum(len(t) for t in texts)  # whitespace between pieces is not counted
    return total / max(chars, 1)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One greedy answer: its text (whole characters only), whether ``max_new_tokens`` ended it before a stop
    token, and how many incomplete UTF-8 sequences were dropped from it."""

    text: str
    cut: bool = False
    malformed: int = 0


def generations(
    view: ModelView, prompts: Sequence[str], max_new_tokens: int = 64, batch: int = 8, desc: str = "answers"
) -> list[Answer]:
    """Greedy single-turn answers, with a progress bar over the prompts."""
    ids, stops = chat_ids(view.tokenizer, prompts)
    pad = view.tokenizer.pad_token_id if view.tokenizer.pad_token_id is not None else 0
    out: list[Answer] = []
    with tqdm(total=len(ids), desc=desc, leave=False, disable=not ids or jax.process_index() != 0) as bar:
        for i in range(0, len(ids), batch):
            stop.check()  # SIGTERM: between batches
            gen = generate(
                view.cfg,
                view.variables,
                ids[i : i + batch],
                SamplingConfig(max_new_tokens=max_new_tokens),
                stops,
                pad,
                adapters=view.adapters,
            )
            for g in gen:
                cut = not g or g[-1] not in stops
                text, bad = decode_counted(view.tokenizer, g, stops)
                out.append(Answer(text, cut, bad))
            bar.update(len(gen))
    return out


def answers(
    view: ModelView, prompts: Sequence[str], max_new_tokens: int = 64, batch: int = 8, desc: str = "answers"
) -> list[str]:
    """The texts of :func:`generations`."""
    return [a.text for a in generations(view, prompts, max_new_tokens, batch, desc)]


def agreement(reference: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """How close answers stay to the original model's: exact-match rate and mean sentence chrF (sacrebleu)."""
    import sacrebleu

    pairs = list(zip(reference, hypotheses, strict=True))
    exact = sum(r.strip() == h.strip() for r, h in pairs) / max(len(pairs), 1)
    chrf = [sacrebleu.sentence_chrf(h, [r]).score for r, h in pairs]
    return {"exact_match": exact, "chrf": float(np.mean(chrf)) if chrf else 0.0}
