"""Held-out measurements at points of the curriculum: the original model, then the state after every train stage.

``cfg.eval`` names the data (``target_text``, ``en_text``, ``en_prompts``,
``target_prompts``) in the vocabulary of ``jaxtrans.eval.suite``, whose
``measure`` computes them, so a number here and in an eval stage mean the same.
Every point answers the eval prompts too (English retention and TCOT format
rate per stage). With QLoRA a point ``0_base_nf4`` measures the frozen base
once it is NF4 (the baseline a QLoRA run must beat: quantisation's cost, apart
from training's effect).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from jaxtrans.curriculum.state import RunState, read_json, write_json
from jaxtrans.eval.suite import EvalSpec

_NOT_SPEC = ("loop_texts",)  # cfg.eval keys that are not EvalSpec fields
_PROMPTS = ("en_prompts", "target_prompts", "target_questions")


def spec(cfg: Any) -> EvalSpec:
    """``cfg.eval`` as an EvalSpec; sources keep every record they select (their own ``limit``)."""
    block = {k: v for k, v in cfg.eval.items() if k not in _NOT_SPEC}
    block.setdefault("limit", 1 << 30)
    block.setdefault("answer_format", taught_format(cfg))
    return EvalSpec.from_config(block, cfg.language.code, cfg.language.name)


def taught_format(cfg: Any) -> str:
    """The answer format the curriculum teaches: TaCo's when a train stage has a ``taco`` component and none a
    ``tcot`` one, else TCOT (``eval.answer_format`` says otherwise)."""
    kinds = {c.get("kind") for st in (cfg.get("stages") or {}).values() for c in (st.get("data") or {}).values()}
    return "taco" if "taco" in kinds and "tcot" not in kinds else "tcot"


@functools.cache
def _texts(target_text: Any, limit: int) -> tuple[str, ...]:
    return tuple(r["text"] for r in EvalSpec(target_text=target_text, limit=limit).records("target_text"))


def loop_texts(cfg: Any) -> list[str]:
    """The first ``eval.loop_texts`` held-out target texts, measured inside train stages (``eval_every``)."""
    s = spec(cfg)
    return list(_texts(s.target_text, cfg.eval.get("loop_texts", 32))) if s.target_text else []


def measure(state: RunState, label: str, trained: bool) -> dict:
    """Held-out losses and answers of the model as it stands (``trained``) or of the frozen base; a state
    measured before is reused, and the frozen base's numbers come from the cache across runs
    (``jaxtrans.eval.cache``): they depend only on the model, the data and the settings."""
    with state.clock.phase(f"held-out point{'' if trained else ' (original model)'}"):
        return _measure(state, label, trained)


def _measure(state: RunState, label: str, trained: bool) -> dict:
    from jaxtrans.curriculum.identity import flat, settings_hash
    from jaxtrans.data.formats import Tags
    from jaxtrans.eval import cache
    from jaxtrans.eval.suite import measure as suite_measure

    path = os.path.join(state.out, "eval", f"{label}.json")
    digest = state.state_digest() if trained and state.trainable is not None else "base"
    if not trained:
        digest += "+nf4" if state.adapters.quantized else ""
        digest += "+nf4head" if state.adapters.quantized_head else ""
    settings = settings_hash(flat(state.cfg.eval, "eval"))
    cached = read_json(path)
    if cached is not None and (cached.get("state"), cached.get("settings")) == (digest, settings):
        return cached
    s, view = spec(state.cfg), state.view(trained)
    if not trained and state.adapters.quantized:  # the NF4 base's cost is measured in losses; answers are the float's
        s = dataclasses.replace(s, **{k: None for k in _PROMPTS})
    files = os.path.join(state.out, "eval", "points")
    os.makedirs(files, exist_ok=True)
    tags = state.lang.tags if trained else Tags()
    compute = functools.partial(suite_measure, view, tags, s, files, f"{label}.")
    if trained:
        numbers = compute()
    else:
        key = cache.baseline_key(state.cfg.model.path, (view.cfg, view.adapters), s, tags, f"{label}.")
        numbers = cache.cached(key, files, f"{label}.", compute)
    result = {"label": label, "state": digest, "settings": settings, **numbers}
    write_json(path, result)
    return result
