"""``python -m jaxtrans.vocab extend|fertility``: vocabulary extension and tokenizer fertility.

    python -m jaxtrans.vocab extend --base ../shared/data/tokenizer-llama2/tokenizer.model \\
        --corpus thai.txt more.jsonl --language th --new-tokens 16000 --out runs/tok-th [--pad-to 128]
    python -m jaxtrans.vocab fertility --tokenizer BASE --tokenizer runs/tok-th --text heldout.txt
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxtrans.errors import JaxtransError


def fertility(tokenizer: object, texts: list[str]) -> dict[str, float]:
    """Tokens per character and per whitespace word (no special tokens counted)."""
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    tokens = sum(len(x) for x in enc)
    chars = sum(len(t) for t in texts)
    words = sum(len(t.split()) for t in texts)
    return {
        "tokens": tokens,
        "chars": chars,
        "words": words,
        "tokens_per_char": tokens / max(chars, 1),
        "tokens_per_word": tokens / max(words, 1),
    }


def load_any_tokenizer(path: str) -> object:
    """An HF tokenizer from a tokenizer dir, a SentencePiece .model file, or any model path jaxtrans loads."""
    import os

    from jaxtrans.vocab.extend import hf_tokenizer_for_spm

    if path.endswith(".model") and os.path.isfile(path):
        return hf_tokenizer_for_spm(path)
    if os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "tokenizer.json"))
        or os.path.isfile(os.path.join(path, "tokenizer_config.json"))
    ):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from jaxtrans.pretrained import load_tokenizer, resolve

    return load_tokenizer(resolve(path))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jaxtrans.vocab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extend", help="train target-language tokens and merge them into a base tokenizer")
    ex.add_argument("--base", required=True, help="tokenizer.model, HF tokenizer dir, or model path")
    ex.add_argument("--corpus", nargs="+", required=True, help="text/jsonl/json files or hf:NAME[:SPLIT]")
    ex.add_argument("--language", default="th")
    ex.add_argument("--new-tokens", type=int, default=16000)
    ex.add_argument("--special", default="<EN>,<TH>,<RESPONSE>", help="comma-separated transfer tags")
    ex.add_argument("--pad-to", type=int, default=0)
    ex.add_argument("--field", default="text", help="JSON field holding the text")
    ex.add_argument("--out", required=True)
    ex.add_argument("--overwrite", action="store_true")
    fe = sub.add_parser("fertility", help="tokens per character/word of texts under tokenizers")
    fe.add_argument("--tokenizer", action="append", required=True)
    fe.add_argument("--text", nargs="+", required=True)
    fe.add_argument("--field", default="text")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "extend":
            from jaxtrans.vocab.extend import ExtendConfig, extend

            specials = tuple(s for s in args.special.split(",") if s)
            cfg = ExtendConfig(args.language, args.new_tokens, specials, args.pad_to, text_field=args.field)
            report = extend(args.base, args.corpus, cfg, args.out, overwrite=args.overwrite)
            summary = {k: v for k, v in report.items() if k != "entries"}
            print(json.dumps(summary, ensure_ascii=False, indent=1))
        else:
            from jaxtrans.vocab.corpus import iter_texts

            texts = list(iter_texts(args.text, args.field))
            for path in args.tokenizer:
                print(path, json.dumps(fertility(load_any_tokenizer(path), texts)))
    except JaxtransError as e:
        print(f"jaxtrans: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
