"""Stage kind ``vocab``: extend the tokenizer with target-language tokens and initialise their rows (Bailong).

The extended tokenizer goes to ``output_dir/tokenizer`` with its record
(``jaxtrans_vocab.json``: new ids, init method). A re-run reuses it; a re-run
asking for another extension is refused before this runs (``jaxtrans.curriculum.identity``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxtrans.curriculum.state import RunState, digest
from jaxtrans.data.sources import Source, read
from jaxtrans.errors import JaxtransError

EXTEND_KEYS = ("new_tokens", "special_tokens", "pad_to_multiple", "min_frequency", "init", "head_init")


def extend_config(cfg: Any, stage: Any) -> Any:
    """The stage block as a ``jaxtrans.vocab.extend.ExtendConfig`` (which checks sizes, tags and methods)."""
    from jaxtrans.vocab.extend import ExtendConfig

    return ExtendConfig(
        language=cfg.language.code,
        special_tokens=tuple(stage.special_tokens),
        init_k=stage.get("init_k", 64),
        init_cov_scale=stage.get("init_cov_scale", 1.0),
        **{k: stage[k] for k in EXTEND_KEYS if k != "special_tokens"},
    )


def check(cfg: Any, name: str, stage: Any, earlier: list[str]) -> None:
    if "train" in earlier:
        raise JaxtransError(f"vocab stage {name!r} must come before every train stage")
    extend_config(cfg, stage)  # bad sizes, tags or init methods are refused before any model work


def preflight(cfg: Any, name: str, stage: Any, mesh: Any, sample: int = 2000) -> dict[str, int]:
    """The corpus's first ``sample`` texts must be in the language's script (the tokenizer is trained later)."""
    import itertools

    from jaxtrans.data import script

    src = Source.from_config(stage.corpus)
    if not src.path.startswith("hf:"):
        texts = [r["text"] for r in itertools.islice(read(src, ("text",)), sample)]
        script.check(texts, cfg.language.code, f"stage {name!r}: corpus {src.path}")
    return {}


def fingerprint(cfg: Any, name: str, stage: Any) -> dict[str, Any]:
    """What determines the extension and the new rows (``jaxtrans.curriculum.identity``)."""
    from jaxtrans.curriculum.identity import flat
    from jaxtrans.data.sources import content_digest

    fp = {"model.path": cfg.model.path, "language.code": cfg.language.code}
    fp.update(flat(stage, f"stages.{name}"))
    fp[f"stages.{name}.corpus (content)"] = content_digest(Source.from_config(stage.corpus))
    return fp


def _extend(state: RunState, name: str, stage: Any, out_dir: str) -> None:
    from jaxtrans.vocab import extend as vx

    texts = [r["text"] for r in read(Source.from_config(stage.corpus), ("text",))]
    corpus_file = os.path.join(state.stage_dir(name), "corpus.txt")
    os.makedirs(os.path.dirname(corpus_file), exist_ok=True)
    with open(corpus_file, "w", encoding="utf-8") as f:
        f.writelines(t.replace("\n", " ") + "\n" for t in texts)
    vx.extend(state.cfg.model.path, [corpus_file], extend_config(state.cfg, stage), out_dir, overwrite=True)


def produced(out: str, name: str) -> bool:
    """Whether the stage left its extended tokenizer (written whole, or not at all)."""
    from jaxtrans.vocab import extend as vx

    return os.path.isfile(os.path.join(out, "tokenizer", vx.REPORT))


PHASE = "new tokenizer and new-row init"


def run(state: RunState, name: str, stage: Any) -> None:
    from transformers import AutoTokenizer

    from jaxtrans.vocab import extend as vx
    from jaxtrans.vocab.init import prepare

    out_dir = os.path.join(state.out, "tokenizer")  # made with this stage's settings (its fingerprint says so)
    if not os.path.isfile(os.path.join(out_dir, vx.REPORT)):
        _extend(state, name, stage, out_dir)
    state.tokenizer = AutoTokenizer.from_pretrained(out_dir)
    adapters, state.new_rows = prepare(state.model_cfg, state.float_base, out_dir)  # the recorded init method
    state.adapters = dataclasses.replace(adapters, lora=state.adapters.lora)  # new rows, same LoRA
    state.vocab_record = vx.load_report(out_dir)
    record = state.vocab_record
    state.record("stages", name, {
        "kind": "vocab", "new_tokens": record["new_tokens"], "padding_rows": record["padding_rows"],
        "vocab_size": record["vocab_size"], "init": stage.init, "new_rows_digest": digest(state.new_rows),
    })  # fmt: skip
