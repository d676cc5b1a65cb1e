"""Generated fields of training data: the frozen model's English answers and translations into and out of
the target language, each cached line by line under the run's ``generated/`` folder.

Lines are keyed by the generating model's state and the input, so stages share
them: the frozen model's answers are generated once for every stage that needs
them, and a branch (``start_from``) reuses the translations of the state it
starts at.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from jaxtrans.curriculum.state import RunState
from jaxtrans.data import formats
from jaxtrans.data.generated import cached_generate
from jaxtrans.data.mixture import Fillers
from jaxtrans.eval import measures
from jaxtrans.model import llama
from jaxtrans.view import ModelView

# a sentence ends at . ! ? (or their full-width forms) before whitespace, not after a digit ("1. "), or at a
# line break
_SENTENCE_END = re.compile(r"(?<![0-9])[.!?\u3002\uff01\uff1f](?=\s)|\n")


def whole_sentences(text: str) -> str:
    """``text`` up to its last complete sentence; the whole text when that would keep less than a third of it.

    An answer that ``max_new_tokens`` ended stops mid-sentence. Trained on as it is,
    it teaches the model to stop mid-sentence (recovery KD) and to put the target
    tag after a broken sentence at a length it cannot know (TCOT); the last whole
    sentence is a natural end.
    """
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= len(text) / 3:
        return text[: ends[-1]].rstrip()
    return text


_WHAT = {"answers": "the frozen model's answers", "to_target": "translations into the target language",
         "to_english": "translations into English"}  # fmt: skip


def _generator(state: RunState, view: ModelView, label: str, what: str, sentences: bool = False) -> Any:
    """Cached greedy answers of ``view`` (at most ``generation.max_new_tokens``, or the ``max_new_tokens`` a
    call gives); with ``sentences``, an answer that the cap ended is trimmed to its last whole sentence
    (:func:`whole_sentences`)."""
    gen = state.cfg.generation

    def batch_fn(prompts: list[str], n: int) -> list[str]:
        got = measures.generations(view, prompts, n, gen.batch_size)
        return [whole_sentences(a.text) if sentences and a.cut else a.text for a in got]

    def fn(texts: list[str], max_new_tokens: int | None = None) -> list[str]:
        n = max_new_tokens or gen.max_new_tokens
        settings = f"{label}|{n}" + ("|whole-sentences" if sentences else "")
        path = os.path.join(state.out, "generated", f"{what}.jsonl")
        with state.clock.phase(f"generate {_WHAT.get(what, what)}"):
            return cached_generate(path, texts, functools.partial(batch_fn, n=n), settings, gen.batch_size, desc=what)

    return fn


@functools.cache
def _translator(path: str, dtype: str, mesh: Any) -> tuple[Any, Any]:
    """A separate translation model, loaded once for all the stages that use it."""
    from jaxtrans.pretrained import load_pretrained

    return load_pretrained(path, dtype=dtype, mesh=mesh)


def _translations(state: RunState, view: ModelView, label: str) -> tuple[Any, Any]:
    """(to_target, to_english) functions translating lists of texts with ``view``."""
    fwd = _generator(state, view, label, "to_target")
    bwd = _generator(state, view, label, "to_english")
    lang = state.lang.name

    def to_target(texts: list[str]) -> list[str]:
        return fwd([formats.translate_prompt(x, "English", lang) for x in texts])

    def to_english(texts: list[str]) -> list[str]:
        return bwd([formats.translate_prompt(x, lang, "English") for x in texts])

    return to_target, to_english


def fillers(state: RunState) -> Fillers:
    """English answers from the frozen base (cut ones trimmed to whole sentences); translations from the
    configured translator.

    ``translator.model``: ``self`` (the model as trained so far: TransLLM's
    recipe; nothing before the first train stage), ``none``, or a model path
    (into the target language only).
    """
    nf4 = "+nf4" if state.adapters.quantized else ""  # QLoRA: the frozen model answers with its NF4 weights
    nf4 += "+nf4head" if state.adapters.quantized_head else ""
    base = state.view(trained=False)
    answer = _generator(state, base, f"base:{state.cfg.model.path}{nf4}", "answers", sentences=True)
    t = state.cfg.translator
    to_target = to_english = None
    if t.model == "self" and state.trainable is not None:
        to_target, to_english = _translations(state, state.view(), f"self:{state.state_digest()}")
    elif t.model not in ("self", "none"):
        other, tok = _translator(t.model, state.cfg.model.dtype, state.mesh)
        view = ModelView(other.config, llama.Adapters(), {"params": other.params}, tok)
        to_target, _ = _translations(state, view, f"model:{t.model}")
    return Fillers(answer=answer, to_target=to_target, to_english=to_english)
