"""``python -m jaxtrans.vocab extend|fertility``: vocabulary extension and tokenizer fertility.

    python -m jaxtrans.vocab extend --base ../shared/data/tokenizer-llama2/tokenizer.model \\
        --corpus thai.txt more.jsonl --language th --new-tokens 16000 --out runs/tok-th [--pad-to 128]
    python -m jaxtrans.vocab fertility --tokenizer BASE --tokenizer runs/tok-th --text heldout.txt
"""

from __future__ import annotations

import argparse
import json

from jaxtrans.exits import guarded


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m jaxtrans.vocab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extend", help="train target-language tokens and merge them into a base tokenizer")
    ex.add_argument(
        "--base",
        required=True,
        help="tokenizer.model, a tokenizer-only dir, a model dir, a .gguf file, embedded:smollm2 or a hub name",
    )
    ex.add_argument("--corpus", nargs="+", required=True, help="text/jsonl/json files or hf:NAME[:SPLIT]")
    ex.add_argument("--language", default="th")
    ex.add_argument("--new-tokens", type=int, default=16000, help="new ids in all, transfer tags included")
    ex.add_argument("--special", default="<EN>,<TH>,<RESPONSE>", help="comma-separated transfer tags")
    ex.add_argument("--pad-to", type=int, default=0, help="pad the model's rows to a multiple of this (0: off)")
    ex.add_argument("--min-frequency", type=int, default=2)
    ex.add_argument("--field", default="text", help="JSON field holding the text")
    ex.add_argument(
        "--no-target-pretokenize",
        action="store_true",
        help="byte-level BPE: keep the base pre-tokenizer as it is (it splits combining marks off letters)",
    )
    ex.add_argument(
        "--init",
        default="zip_tie",
        help="new-row init recorded with the tokenizer: zip_tie, mean, random, mean_cov, omp",
    )
    ex.add_argument("--head-init", default="zip_tie", help="untied LM head rows: zip_tie or first")
    ex.add_argument("--init-k", type=int, default=64, help="omp: original rows per new token, at most")
    ex.add_argument("--init-cov-scale", type=float, default=1.0, help="mean_cov: scale of the covariance")
    ex.add_argument("--init-seed", type=int, default=0)
    ex.add_argument("--out", required=True)
    ex.add_argument("--overwrite", action="store_true")
    fe = sub.add_parser("fertility", help="tokens per character/word of texts under tokenizers")
    fe.add_argument("--tokenizer", action="append", required=True)
    fe.add_argument("--text", nargs="+", required=True)
    fe.add_argument("--field", default="text")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    def body() -> None:
        if args.cmd == "extend":
            from jaxtrans.vocab.extend import ExtendConfig, extend

            specials = tuple(s for s in args.special.split(",") if s)
            cfg = ExtendConfig(
                args.language,
                args.new_tokens,
                specials,
                args.pad_to,
                min_frequency=args.min_frequency,
                text_field=args.field,
                pretokenize=not args.no_target_pretokenize,
                init=args.init,
                head_init=args.head_init,
                init_seed=args.init_seed,
                init_k=args.init_k,
                init_cov_scale=args.init_cov_scale,
            )
            from jaxtrans.paths import check_apart

            check_apart([("--out", args.out)], [("--base", args.base), *(("--corpus", c) for c in args.corpus)])
            report = extend(args.base, args.corpus, cfg, args.out, overwrite=args.overwrite)
            summary = {k: v for k, v in report.items() if k != "entries"}
            print(json.dumps(summary, ensure_ascii=False, indent=1))
        else:
            from jaxtrans.vocab.base import load_tokenizer
            from jaxtrans.vocab.corpus import iter_texts
            from jaxtrans.vocab.fertility import fertility

            texts = list(iter_texts(args.text, args.field))
            for path in args.tokenizer:
                print(path, json.dumps(fertility(load_tokenizer(path), texts)))

    guarded(body, on_stop="nothing was written; re-run the same command")


if __name__ == "__main__":
    main()
