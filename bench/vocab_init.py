"""Does zip-tie initialisation of new-token rows help? SmolLM2-135M-Instruct with a Thai-extended vocabulary.

    python bench/vocab_init.py [--new-tokens 8000] [--steps 20] [--batch 2] [--seq 128]

For each of zip_tie, mean and random: held-out Thai loss (per token, extended tokenizer) at step 0 and after
``--steps`` steps training LoRA (r=8, all projections) plus the new rows on Thai text. Same data, same order.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    import jax

    import jaxtrans
    from jaxtrans import sharding
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
        print(
            f"new tokens {args.new_tokens}; {args.steps} steps x {args.batch} x {args.seq} tokens; held-out "
            f"{held_blocks['tokens'].size} tokens\n"
        )
        print("| init | held-out loss at step 0 | after training | train loss, last step |")
        print("|---|---|---|---|")
        for method in ("zip_tie", "mean", "random"):
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
            step = trainer.compiled_step(model.params)
            for i in range(args.steps):
                batch = {k: v[i * args.batch : (i + 1) * args.batch][None] for k, v in train_blocks.items()}
                state, metrics = step(state, model.params, batch)
            after = held_loss(state.trainable)
            print(f"| {method} | {before:.3f} | {after:.3f} | {float(metrics['loss']):.3f} |", flush=True)


if __name__ == "__main__":
    main()
