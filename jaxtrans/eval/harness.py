"""``python -m jaxtrans.eval.harness``: standard benchmarks through lm-evaluation-harness, on a jaxtrans model.

    pip install -e '.[harness]'
    python -m jaxtrans.eval.harness --model embedded:smollm2 --adapter runs/thai/export/peft \\
        --tasks xnli_th,xcopa_th,belebele_tha_Thai --limit 200 --out runs/thai/harness

Task names are lm-evaluation-harness's (``lm_eval --tasks list``); its hub data
sets need the network. ``--include_path DIR`` adds task YAML files of your own
(a local ``dataset_path: json`` task needs no network). Writes
``results.json`` (the harness's own results) and prints its table.
"""

from __future__ import annotations

import argparse
import json
import os

from jaxtrans.errors import JaxtransError
from jaxtrans.exits import guarded


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jaxtrans.eval.harness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2", help="HF dir, .gguf, hub name or embedded:smollm2")
    ap.add_argument("--adapter", default=None, help="PEFT adapter directory (e.g. runs/thai/export/peft)")
    ap.add_argument("--tasks", required=True, help="comma-separated lm-evaluation-harness task names")
    ap.add_argument("--include_path", default=None, help="a folder of extra task YAML files")
    ap.add_argument("--num_fewshot", type=int, default=None)
    ap.add_argument("--limit", type=float, default=None, help="examples per task (or a fraction if < 1)")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--max_length", type=int, default=None, help="default: the model's context length")
    ap.add_argument("--apply_chat_template", action="store_true", help="wrap prompts in the model's chat template")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log_samples", action="store_true", help="keep every scored sample in results.json")
    ap.add_argument("--out", required=True, help="output folder")
    from jaxtrans.view import add_allow_other_base  # the model code loads only when a command runs

    add_allow_other_base(ap)
    return ap


def run(args: argparse.Namespace) -> dict:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise JaxtransError("lm-evaluation-harness is not installed; pip install -e '.[harness]'") from None
    from jaxtrans.eval.lm_eval_model import JaxtransLM

    tasks = [t for t in args.tasks.split(",") if t]
    if args.include_path and not os.path.isdir(args.include_path):
        raise JaxtransError(f"--include_path {args.include_path} is not a folder")
    from jaxtrans.paths import check_apart

    check_apart([("--out", args.out)], [("--model", args.model), ("--adapter", args.adapter),
                                        ("--include_path", args.include_path)])  # fmt: skip
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise JaxtransError(f"unknown lm-evaluation-harness tasks {unknown}; list them with `lm_eval --tasks list`")
    lm = JaxtransLM(model=args.model, adapter=args.adapter, batch_size=args.batch_size, max_length=args.max_length,
                    allow_other_base=args.allow_other_base)  # fmt: skip
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        apply_chat_template=args.apply_chat_template,
        log_samples=args.log_samples,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False, indent=1, default=str)
    return results


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    results = guarded(lambda: run(args), on_stop="nothing was written; re-run the same command")
    from lm_eval.utils import make_table

    print(make_table(results))


if __name__ == "__main__":
    main()
