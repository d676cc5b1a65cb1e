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
from typing import Any

from jaxtrans.curriculum.state import RunState
from jaxtrans.data import formats
from jaxtrans.data.generated import cached_generate
from jaxtrans.data.mixture import Fillers
from jaxtrans.eval import measures
from jaxtrans.model import llama
from jaxtrans.view import ModelView


def _generator(state: RunState, view: ModelView, label: str, what: str) -> Any:
    gen = state.cfg.generation

    def batch_fn(prompts: list[str]) -> list[str]:
        return measures.answers(view, prompts, gen.max_new_tokens, gen.batch_size)

    def fn(texts: list[str]) -> list[str]:
        settings = f"{label}|{gen.max_new_tokens}"
        path = os.path.join(state.out, "generated", f"{what}.jsonl")
        return cached_generate(path, texts, batch_fn, settings, gen.batch_size, desc=what)

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
    """English answers from the frozen base; translations from the configured translator.

    ``translator.model``: ``self`` (the model as trained so far: TransLLM's
    recipe; nothing before the first train stage), ``none``, or a model path
    (into the target language only).
    """
    nf4 = "+nf4" if state.adapters.quantized else ""  # QLoRA: the frozen model answers with its NF4 weights
    answer = _generator(state, state.view(trained=False), f"base:{state.cfg.model.path}{nf4}", "answers")
    t = state.cfg.translator
    to_target = to_english = None
    if t.model == "self" and state.trainable is not None:
        to_target, to_english = _translations(state, state.view(), f"self:{state.state_digest()}")
    elif t.model not in ("self", "none"):
        other, tok = _translator(t.model, state.cfg.model.dtype, state.mesh)
        view = ModelView(other.config, llama.Adapters(), {"params": other.params}, tok)
        to_target, _ = _translations(state, view, f"model:{t.model}")
    return Fillers(answer=answer, to_target=to_target, to_english=to_english)
