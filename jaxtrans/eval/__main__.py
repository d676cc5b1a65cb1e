"""``python -m jaxtrans.eval``: measure a model (optionally against its original) and write a report.

    python -m jaxtrans.eval --model embedded:smollm2 --adapter runs/thai/export/peft \\
        --target_text ../shared/data/th-thaigov/thaigov_sample.jsonl \\
        --pairs ../shared/data/en-th-talpco/talpco_en_th.jsonl --pair_columns en,th \\
        --en_prompts ../shared/data/eval-vicuna/question.jsonl --prompt_column turns.0 \\
        --advbench ../shared/data/eval-advbench/harmful_behaviors.csv \\
        --answer_questions ../shared/data/eval-vicuna-th/vicuna_th.jsonl --question_column th \\
        --out runs/thai/eval

What it measures (each only when its data is given):

* target-language and English held-out loss, in nats per character;
* translation both ways, scored with sacrebleu (chrF++ and BLEU; hypothesis
  and reference files are written next to the report so the numbers can be
  re-checked with the ``sacrebleu`` command);
* English retention: greedy answers to English prompts against the original
  model's (``--baseline``; exact-match rate and chrF);
* AdvBench refusal rate, with the refusal-prefix list of the AdvBench paper;
* answers to question files in FastChat's ``model_answer`` JSONL format, for
  FastChat's LLM judge (MT-bench / Vicuna);
* tokenizer fertility (tokens per character and per word) on the target text.

With ``--baseline`` every metric is measured on the original model too; the
report (``eval.md``, ``metrics.png``) shows them side by side. The same suite
runs as a pipeline stage (``kind = "eval"``, see ``jaxtrans.config.eval_stage``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from jaxtrans.errors import JaxtransError, number
from jaxtrans.eval.suite import EvalSpec, evaluate
from jaxtrans.exits import guarded


def _source(path: str | None, limit: int, **columns: str | None) -> Any:
    from jaxtrans.data.sources import Source

    if not path:
        return None
    return Source(path, columns=tuple(sorted((r, c) for r, c in columns.items() if c)), limit=limit)


def spec_from_args(args: argparse.Namespace) -> EvalSpec:
    """The command line's data flags as an ``EvalSpec``."""
    english, target = (args.pair_columns.split(",") + ["", ""])[:2]
    return EvalSpec(
        target_text=_source(args.target_text, args.limit, text=args.text_column),
        en_text=_source(args.en_text, args.limit, text=args.en_text_column),
        pairs=_source(args.pairs, args.limit, english=english or "en", target=target or "th"),
        en_prompts=_source(args.en_prompts, args.limit, prompt=args.prompt_column),
        advbench=_source(args.advbench, args.limit, prompt="goal"),
        questions=tuple(_source(q, args.limit, turns=args.question_column) for q in args.answer_questions or ()),
        language=args.language,
        language_name=args.language_name,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        model_id=args.model_id or os.path.basename(os.path.normpath(args.adapter or args.model)),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from jaxtrans.config import check_output_dir
    from jaxtrans.paths import check_apart
    from jaxtrans.view import load_view

    number("--limit", args.limit, 1)
    number("--max_new_tokens", args.max_new_tokens, 1)
    check_output_dir(args.out)
    reads = ("model", "adapter", "baseline", "target_text", "en_text", "pairs", "en_prompts", "advbench")
    inputs = [(f"--{k}", getattr(args, k)) for k in reads]
    inputs += [("--answer_questions", q) for q in args.answer_questions or ()]
    check_apart([("--out", args.out)], inputs)
    spec = spec_from_args(args)
    if not spec.sources():
        raise JaxtransError(
            "nothing to measure: give at least one of --target_text, --en_text, --pairs, --en_prompts, --advbench, "
            "--answer_questions"
        )
    spec.check()  # bad data fails before any model is loaded
    view, tags = load_view(args.model, args.adapter, allow_other_base=args.allow_other_base)
    baseline = load_view(args.baseline)[0] if args.baseline else None
    title = args.model + (f" + {args.adapter}" if args.adapter else "")
    return evaluate(view, tags, spec, args.out, baseline=baseline, title=title, baseline_model=args.baseline or "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jaxtrans.eval", description="Evaluate a (transferred) chat model.")
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--adapter", default=None, help="PEFT adapter directory")
    ap.add_argument("--baseline", default=None, help="the original model, for English-retention agreement")
    ap.add_argument("--language", default="th", help="target language code (sacrebleu tokenizer choice)")
    ap.add_argument("--language_name", default="Thai")
    ap.add_argument("--target_text", help="held-out target-language text (jsonl/json/csv/txt)")
    ap.add_argument("--text_column", default=None)
    ap.add_argument("--en_text", help="held-out English text")
    ap.add_argument("--en_text_column", default=None)
    ap.add_argument("--pairs", help="English-target pairs")
    ap.add_argument("--pair_columns", default="en,th", help="English column, target column")
    ap.add_argument("--en_prompts", help="English prompts (retention)")
    ap.add_argument("--prompt_column", default=None)
    ap.add_argument("--advbench", help="AdvBench harmful_behaviors.csv")
    ap.add_argument("--answer_questions", action="append", help="question file for FastChat answers (repeatable)")
    ap.add_argument("--question_column", default=None, help="column of the question turns (default: turns)")
    ap.add_argument("--model_id", default=None)
    ap.add_argument("--limit", type=int, default=64, help="records per data set")
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--out", required=True)
    from jaxtrans.view import add_allow_other_base  # the model code loads only when a command runs

    add_allow_other_base(ap)
    args = ap.parse_args(argv)
    result = guarded(lambda: run(args), on_stop="re-run the same command (answers already generated are kept)")
    shown = {k: v for k, v in result.items() if k not in ("en_answers", "baseline")}
    print(json.dumps(shown, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
