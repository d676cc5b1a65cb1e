"""Which initialisation of new-token rows helps? SmolLM2-135M-Instruct with a Thai-extended vocabulary.

    python bench/vocab_init.py [--new-tokens 8000] [--steps 20] [--batch 2] [--seq 128] [--methods ...]

For each method (zip_tie, mean, random, mean_cov, omp): held-out Thai loss (per token, extended tokenizer)
at step 0 and after ``--steps`` steps training LoRA (r=8, all projections) plus the new rows on Thai text
(same data, same order), and at step 0 the English held-out loss (Alpaca answers) with the new rows in
place against the original model's, and the largest change of any logit over the original ids on that
English text (new rows must not disturb English: it should be exactly 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.vocab_fertility import SHARED, thai_split  # noqa: E402


def blocks(tokenizer, texts, seq, limit):
    import numpy as np

    ids = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) > (seq + 1) * limit:
            break
    n = min(len(ids) // (seq + 1), limit)
    arr = np.asarray(ids[: n * (seq + 1)], np.int32).reshape(n, seq + 1)
    ones = np.ones((n, seq), np.int32)
    pos = np.broadcast_to(np.arange(seq, dtype=np.int32), (n, seq)).copy()
    return {"tokens": arr[:, :-1], "targets": arr[:, 1:], "loss_mask": ones, "segment_ids": ones, "positions": pos}


def english(cfg, adapters, variables, rows) -> tuple:
    """(logits [B, T, V], loss per token) of one model version on English rows."""
    import jax
    import numpy as np

    from jaxtrans.model import llama
    from jaxtrans.model.loss import cross_entropy

    def fn(variables, rows):
        logits, _ = llama.Llama(cfg, adapters).apply(variables, rows["tokens"], rows["segment_ids"], rows["positions"])
        return logits, cross_entropy(logits, rows["targets"], rows["loss_mask"])

    logits, (total, count) = jax.jit(fn)(variables, rows)
    return np.asarray(logits), float(total) / float(count)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--methods", nargs="+", default=["zip_tie", "mean", "random", "mean_cov", "omp"])
    args = ap.parse_args()
    import jax
    import numpy as np

    import jaxtrans
    from jaxtrans import sharding
    from jaxtrans.model import llama
    from jaxtrans.model.lora import LoraConfig
    from jaxtrans.train.optim import OptimConfig
    from jaxtrans.train.step import Trainer
    from jaxtrans.vocab.base import load_tokenizer
    from jaxtrans.vocab.extend import ExtendConfig, extend
    from jaxtrans.vocab.init import prepare

    train, held = thai_split(SHARED)
    model, _ = jaxtrans.load_pretrained("embedded:smollm2", with_tokenizer=False)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "train.txt")
        open(corpus, "w").write("\n".join(train))
        out = os.path.join(tmp, "tok")
        extend("embedded:smollm2", [corpus], ExtendConfig("th", args.new_tokens), out)
        tok = load_tokenizer(out)
        train_blocks = blocks(tok, train[::-1], args.seq, args.steps * args.batch)
        held_blocks = blocks(tok, held, args.seq, 16)
        alpaca = json.load(open(os.path.join(SHARED, "en-instruct-alpaca", "alpaca_data_1k.json")))
        en_blocks = blocks(tok, [r["output"] for r in alpaca[900:]], args.seq, 8)
        base_en_logits, base_en_loss = english(model.config, llama.Adapters(), {"params": model.params}, en_blocks)
        print(
            f"new tokens {args.new_tokens}; {args.steps} steps x {args.batch} x {args.seq} tokens; held-out "
            f"{held_blocks['tokens'].size} tokens\n"
        )
        print("| init | Thai held-out loss at step 0 | after training | train loss, last step | "
              "English loss at step 0 (original) | max logit change, original ids |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for method in args.methods:
            adapters, rows = prepare(model.config, model.params, out, method=method)
            adapters = type(adapters)(lora=LoraConfig.make(8, 16), new_tokens=adapters.new_tokens)
            optim = OptimConfig(args.lr, schedule="constant", total_steps=args.steps)
            trainer = Trainer(model.config, adapters, optim, mesh)
            trainable = trainer.init_state(model.params).trainable
            trainable["new_rows"] = jax.tree.map(jax.numpy.asarray, rows)
            state = trainer.make_state(model.params, trainable)
            loss_fn = jax.jit(lambda t, p, b, tr=trainer: tr.loss_fn(t, p, b, jax.random.key(0)))

            def held_loss(trainable, loss_fn=loss_fn):
                total = count = 0.0
                for i in range(0, len(held_blocks["tokens"]), 4):
                    s, n = loss_fn(trainable, model.params, {k: v[i : i + 4] for k, v in held_blocks.items()})
                    total, count = total + float(s), count + float(n)
                return total / count

            before = held_loss(state.trainable)
            en_logits, en_loss = english(model.config, adapters, {"params": model.params, **state.trainable}, en_blocks)
            drift = float(np.abs(en_logits[..., : model.config.vocab_size] - base_en_logits).max())
            step = trainer.compiled_step(model.params)
            for i in range(args.steps):
                batch = {k: v[i * args.batch : (i + 1) * args.batch][None] for k, v in train_blocks.items()}
                state, metrics = step(state, model.params, batch)
            after = held_loss(state.trainable)
            print(f"| {method} | {before:.3f} | {after:.3f} | {float(metrics['loss']):.3f} | {en_loss:.3f} "
                  f"({base_en_loss:.3f}) | {drift:.1e} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
