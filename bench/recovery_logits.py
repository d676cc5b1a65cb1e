"""English retention with and without logit-level recovery KD, on the tiny end-to-end pipeline.

    python bench/recovery_logits.py [--steps 12]

Runs tests/tiny_pipeline.py (a tiny random Llama speaking SmolLM2's tokenizer, real data from
../shared/data) twice: the transfer stage's mixture as it is, and with a ``recovery_logits`` component
on MT-bench's English prompts added. Prints English held-out loss (Alpaca answers, nats per character)
of the original model, after each stage, and how far the final model moved from the original's.
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


def main() -> None:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12, help="transfer-stage steps")
    args = ap.parse_args()
    from jaxtrans import pipeline
    from jaxtrans.config import component, source
    from jaxtrans.vocab.base import load_tokenizer
    from tests import tiny_pipeline
    from tests.conftest import tiny_hf_model

    with tempfile.TemporaryDirectory() as tmp:
        tok = load_tokenizer("embedded:smollm2")
        _, model_dir = tiny_hf_model(tmp, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                     max_position_embeddings=512, tie_word_embeddings=True)  # fmt: skip
        tok.save_pretrained(model_dir)
        results = {}
        for variant in ("without", "with"):
            cfg = tiny_pipeline.get_config(model_dir)
            cfg.unlock()
            cfg.curriculum = ("vocab", "pretrain", "translate", "transfer")
            alpaca = os.path.join(SHARED, "en-instruct-alpaca", "alpaca_data_1k.json")
            cfg.eval.en_text = source(alpaca, columns={"text": "output"}, skip=900, limit=32)
            cfg.stages.transfer.steps = args.steps
            if variant == "with":
                prompts = source(os.path.join(SHARED, "eval-mt-bench", "question.jsonl"), columns={"prompt": "turns.0"})
                cfg.stages.transfer.data["keep_english"] = component(
                    "recovery_logits", prompts, weight=1.0, style="prompt"
                )
            cfg.output_dir = os.path.join(tmp, variant)
            cfg.lock()
            report = pipeline.run(cfg)
            results[variant] = [(p["label"], p.get("en_nats_per_char")) for p in report["points"]]
        original = results["without"][0][1]
        print("\n| stage | English nats/char, without recovery_logits | with |")
        print("|---|---|---|")
        for (label, a), (_, b) in zip(results["without"], results["with"], strict=True):
            print(f"| {label} | {a:.4f} | {b:.4f} |")
        print(f"\noriginal {original:.4f}; final distance without {abs(results['without'][-1][1] - original):.4f}, "
              f"with {abs(results['with'][-1][1] - original):.4f}")  # fmt: skip
        print(json.dumps(results))


if __name__ == "__main__":
    main()
