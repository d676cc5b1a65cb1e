"""Stage kind ``eval``: the evaluation suite (``jaxtrans.eval.suite``) on the model as it stands and on the
original, into ``output_dir/eval/NAME``; a finished evaluation of the same state is reused."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import jax

from jaxtrans.curriculum.state import RunState, read_json
from jaxtrans.eval.suite import EvalSpec, evaluate


def spec(cfg: Any, stage: Any) -> EvalSpec:
    from jaxtrans.curriculum.points import taught_format

    block = dict(stage)
    block.setdefault("answer_format", taught_format(cfg))
    return EvalSpec.from_config(block, cfg.language.code, cfg.language.name)


def check(cfg: Any, name: str, stage: Any, earlier: list[str]) -> None:
    spec(cfg, stage)


def preflight(cfg: Any, name: str, stage: Any, mesh: Any) -> dict[str, int]:
    spec(cfg, stage).check()
    return {}


def fingerprint(cfg: Any, name: str, stage: Any) -> None:
    """None: an evaluation keeps no state; it is made again when its settings or the model state change."""
    return None


PHASE = "evaluation (eval.md has its own time table)"


def run(state: RunState, name: str, stage: Any) -> None:
    """Every process computes; process 0 writes into ``eval/NAME``."""
    from jaxtrans.curriculum.identity import flat, settings_hash

    out = os.path.join(state.out, "eval", name)
    digest = state.state_digest() if state.trainable is not None else "base"
    settings = settings_hash(flat(stage, name) | flat(state.cfg.language, "language"))
    done = read_json(os.path.join(out, "eval.json"))
    if done is not None and (done.get("state"), done.get("settings")) == (digest, settings):
        print(f"stage {name}: evaluation of this state with these settings found in {out}")
    else:
        s = spec(state.cfg, stage)
        s = dataclasses.replace(s, model_id=f"{s.model_id}-{name}")
        where = out if jax.process_index() == 0 else tempfile.mkdtemp()
        evaluate(state.view(), state.lang.tags, s, where, state.view(trained=False), title=name,
                 baseline_model=state.cfg.model.path, state=digest, settings=settings)  # fmt: skip
    state.record("evals", name, {"dir": out, "state": digest})
