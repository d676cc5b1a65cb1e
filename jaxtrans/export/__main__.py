"""``python -m jaxtrans.export``: a finished run (or a PEFT adapter) as a merged HF model and/or a PEFT adapter.

    python -m jaxtrans.export --run runs/thai --merged runs/thai/export/merged [--dtype bfloat16]
    python -m jaxtrans.export --model embedded:smollm2 --adapter runs/thai/export/peft --merged out/merged
    python -m jaxtrans.export --run runs/thai --peft out/peft

``--run`` reads the run's base model from ``RUN/config.json`` and its adapter
from ``RUN/export/peft`` (what the pipeline writes at the end). The merged
directory loads with ``AutoModelForCausalLM.from_pretrained``; the tokenizer
(extended, when the vocabulary grew) and ``jaxtrans_vocab.json`` go with it.
"""

from __future__ import annotations

import argparse
import json
import os

from jaxtrans.config import check_output_dir
from jaxtrans.errors import JaxtransError
from jaxtrans.exits import guarded
from jaxtrans.paths import check_apart


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jaxtrans.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a finished run directory (its config.json and export/peft)")
    ap.add_argument("--model", default=None, help="the base model (with --adapter): HF dir, .gguf, hub name, embedded:")
    ap.add_argument("--adapter", default=None, help="a PEFT adapter directory (with --model)")
    ap.add_argument("--merged", default=None, help="write the merged HF model here")
    ap.add_argument("--peft", default=None, help="write the adapter in PEFT format here")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--overwrite", action="store_true", help="replace existing output directories")
    from jaxtrans.view import add_allow_other_base  # the model code loads only when a command runs

    add_allow_other_base(ap)
    return ap


def _inputs(args: argparse.Namespace) -> tuple[str, str]:
    """(base model, adapter directory), checked before any weight is read."""
    if args.run:
        if args.model or args.adapter:
            raise JaxtransError("give either --run, or --model with --adapter, not both")
        config = os.path.join(args.run, "config.json")
        adapter = os.path.join(args.run, "export", "peft")
        if not os.path.isfile(config):
            raise JaxtransError(f"{args.run} is not a run directory (no config.json); give the run's output_dir")
        if not os.path.isdir(adapter):
            raise JaxtransError(f"{args.run} has no export/peft; the run has not finished (re-run it to finish)")
        with open(config) as f:
            model = json.load(f).get("model", {}).get("path")
        if not model:
            raise JaxtransError(f"{config} names no model.path")
        return model, adapter
    if not (args.model and args.adapter):
        raise JaxtransError("give --run RUN_DIR, or --model BASE with --adapter PEFT_DIR")
    return args.model, args.adapter


def run(args: argparse.Namespace) -> list[str]:
    if not (args.merged or args.peft):
        raise JaxtransError("nothing to write: give --merged DIR and/or --peft DIR")
    for out in (args.merged, args.peft):
        if out and os.path.exists(out) and not args.overwrite:
            raise JaxtransError(f"{out} already exists; choose another path or pass --overwrite")
        if out:
            check_output_dir(out)
    model, adapter = _inputs(args)
    reads = [("--adapter", adapter), ("--model", model)]
    if args.run:
        reads = [("the run's adapter", adapter), ("the run's config", os.path.join(args.run, "config.json"))]
    check_apart([("--merged", args.merged), ("--peft", args.peft)], reads)
    from jaxtrans.export import ADAPTER_INFO, export_merged, export_peft
    from jaxtrans.view import load_view

    view, tags = load_view(model, adapter, allow_other_base=args.allow_other_base)
    trainable = {k: v for k, v in view.variables.items() if k != "params"}
    record = None
    if os.path.isfile(os.path.join(adapter, "jaxtrans_vocab.json")):
        from jaxtrans.vocab.extend import load_report

        record = load_report(adapter)
    written = []
    if args.merged:
        written.append(export_merged(args.merged, view.cfg, view.variables["params"], trainable, view.adapters,
                                     tokenizer=view.tokenizer, dtype=args.dtype, overwrite=args.overwrite,
                                     vocab_record=record))  # fmt: skip
    if args.peft:
        has_tags = os.path.isfile(os.path.join(adapter, ADAPTER_INFO))
        written.append(export_peft(args.peft, view.cfg, trainable, view.adapters, model, overwrite=args.overwrite,
                                   tokenizer=view.tokenizer, tags=tags if has_tags else None,
                                   vocab_record=record))  # fmt: skip
    return written


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    for path in guarded(lambda: run(args), on_stop="nothing was written; re-run the same command"):
        print(path)


if __name__ == "__main__":
    main()
