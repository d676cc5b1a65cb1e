"""Thai fertility against the number of new tokens: Llama-2 (SentencePiece), SmolLM2 and a Llama-3-layout BPE.

    python bench/vocab_fertility.py [--sizes 1000 2000 4000 8000 16000 32000]

Trains on ../shared/data Thai text (government news + social media) with every tenth document held back,
and measures tokens per character on the held-back text. Byte-level BPE bases are run with the
target-script-aware pre-tokenizer (marks kept on their letters) and without it (the base pre-tokenizer as is).
The peer in the same run: a SentencePiece BPE trained on the same Thai text alone, at each size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARED = os.path.join(ROOT, "..", "shared", "data")


def thai_split(shared: str) -> tuple[list[str], list[str]]:
    docs = [json.loads(x)["text"] for x in open(os.path.join(shared, "th-thaigov", "thaigov_sample.jsonl"))]
    social = [x.strip() for x in open(os.path.join(shared, "th-wisesight", "pos.txt")) if x.strip()]
    train = [d for i, d in enumerate(docs) if i % 10] + [w for i, w in enumerate(social) if i % 10]
    held = [d for i, d in enumerate(docs) if i % 10 == 0] + [w for i, w in enumerate(social) if i % 10 == 0]
    clean = lambda xs: [x.replace("\n", " ") for x in xs]  # noqa: E731
    return clean(train), clean(held)


def thai_only_spm(train: list[str], held: list[str], size: int) -> float:
    """Tokens per character of a SentencePiece BPE trained on the Thai text alone (the reference)."""
    import sentencepiece as spm

    from jaxtrans.vocab.spm import _train, read_proto

    proto = read_proto(os.path.join(SHARED, "tokenizer-llama2", "tokenizer.model"))
    sp = spm.SentencePieceProcessor(model_proto=_train(train, size, proto).SerializeToString())
    return sum(len(sp.encode(x)) for x in held) / sum(map(len, held))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 16000, 32000])
    args = ap.parse_args()
    from jaxtrans.vocab.base import load_tokenizer
    from jaxtrans.vocab.extend import ExtendConfig, extend
    from jaxtrans.vocab.fertility import fertility
    from tests import layouts

    train, held = thai_split(SHARED)
    with tempfile.TemporaryDirectory() as tmp:
        bases = {
            "Llama-2 (SentencePiece BPE)": os.path.join(SHARED, "tokenizer-llama2", "tokenizer.model"),
            "SmolLM2 (byte-level BPE, GPT-2 pattern)": "embedded:smollm2",
            "Llama-3 layout (byte-level BPE, GPT-4 pattern, specials after)": layouts.build("llama3", SHARED, tmp),
        }
        corpus = os.path.join(tmp, "train.txt")
        open(corpus, "w").write("\n".join(train))
        print(f"train {sum(map(len, train))} chars, held out {sum(map(len, held))} chars\n")
        print("| base | pre-tokenizer | requested new tokens | added | Thai tokens/char | reduction | Thai-only SPM |")
        print("|---|---|---|---|---|---|---|")
        reference = {size: thai_only_spm(train, held, size) for size in args.sizes}
        for name, base in bases.items():
            before = fertility(load_tokenizer(base), held)["tokens_per_char"]
            print(f"| {name} | base | 0 | 0 | {before:.3f} | 1.00x | |", flush=True)
            modes = [True] if "SentencePiece" in name else [True, False]
            for pretokenize in modes:
                for size in args.sizes:
                    out = os.path.join(tmp, f"tok-{size}")
                    cfg = ExtendConfig("th", size, pretokenize=pretokenize)
                    report = extend(base, [corpus], cfg, out, overwrite=True)
                    after = fertility(load_tokenizer(out), held)["tokens_per_char"]
                    label = "SentencePiece" if "SentencePiece" in name else ("marks kept" if pretokenize else "as is")
                    print(f"| {name} | {label} | {size} | {report['new_tokens']} | {after:.3f} | "
                          f"{before / after:.2f}x | {reference[size]:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
