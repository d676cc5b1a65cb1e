"""Thai fertility against the number of new tokens, for Llama-2 (SentencePiece) and SmolLM2 (byte-level BPE).

    python bench/vocab_fertility.py [--sizes 1000 4000 8000 16000 32000]

Trains on ../shared/data Thai text (government news + social media) with every tenth document held back,
and measures tokens per character on the held-back text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def thai_split(shared: str) -> tuple[list[str], list[str]]:
    docs = [json.loads(x)["text"] for x in open(os.path.join(shared, "th-thaigov", "thaigov_sample.jsonl"))]
    social = [x.strip() for x in open(os.path.join(shared, "th-wisesight", "pos.txt")) if x.strip()]
    train = [d for i, d in enumerate(docs) if i % 10] + [w for i, w in enumerate(social) if i % 10]
    held = [d for i, d in enumerate(docs) if i % 10 == 0] + [w for i, w in enumerate(social) if i % 10 == 0]
    clean = lambda xs: [x.replace("\n", " ") for x in xs]  # noqa: E731
    return clean(train), clean(held)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 8000, 16000, 32000])
    args = ap.parse_args()
    from jaxtrans.vocab.__main__ import fertility, load_any_tokenizer
    from jaxtrans.vocab.extend import ExtendConfig, extend

    train, held = thai_split(SHARED)
    bases = {
        "Llama-2 (SentencePiece BPE)": os.path.join(SHARED, "tokenizer-llama2", "tokenizer.model"),
        "SmolLM2 (byte-level BPE)": "embedded:smollm2",
    }
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "train.txt")
        open(corpus, "w").write("\n".join(train))
        print(f"train {sum(map(len, train))} chars, held out {sum(map(len, held))} chars\n")
        print("| base | requested new tokens | added | Thai tokens/char | reduction |")
        print("|---|---|---|---|---|")
        for name, base in bases.items():
            before = fertility(load_any_tokenizer(base), held)["tokens_per_char"]
            print(f"| {name} | 0 | 0 | {before:.3f} | 1.00x |", flush=True)
            for size in args.sizes:
                out = os.path.join(tmp, f"tok-{size}")
                report = extend(base, [corpus], ExtendConfig("th", size), out, overwrite=True)
                after = fertility(load_any_tokenizer(out), held)["tokens_per_char"]
                print(f"| {name} | {size} | {report['new_tokens']} | {after:.3f} | {before / after:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
