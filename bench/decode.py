"""Batched greedy decoding: jaxtrans vs ``transformers.generate`` on SmolLM2-135M-Instruct (CPU, fp32).

    python bench/decode.py [--batch 8] [--new 128] [--rounds 3]

Both decode the same 8 left-padded chat prompts to exactly ``--new`` tokens
(no early stop), alternating, and the median tokens/s of each is printed with
the ratio. Decoding is memory-bound: every step reads all weights and the KV
cache, so the script also prints the bytes jaxtrans reads per second against
a large-copy bandwidth measured in the same run, and how long the step's weight
products alone take with the same kernels (the floor those kernels set).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = [
    "What is the capital of Thailand?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
    "Give me three tips for learning a new language.",
    "What is 17 times 23?",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?",
    "Suggest a name for a coffee shop.",
]


def copy_bandwidth(n_bytes: int = 1 << 30, rounds: int = 5) -> float:
    """Bytes moved per second (read + write) by a large numpy copy."""
    import numpy as np

    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best


def matvec_floor_s(params: dict, batch: int) -> float:
    """Seconds for one step's weight products alone: every kernel and the tied head times a [batch, in] input.

    Same kernels, options and dtype as the decode loop, nothing else (no attention, norms or cache): the
    floor the loop's dots set on this machine.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxtrans import xla_options

    kernels = []  # every layer's kernels as [in, out] matrices; o contracts its (heads, head_dim) axes
    for i in range(params["layers"]["attn_norm"]["scale"].shape[0]):
        for path, leaf in jax.tree_util.tree_flatten_with_path(params["layers"])[0]:
            if leaf.ndim >= 3:  # a stacked kernel, not a norm scale
                w = leaf[i]
                o = "'o'" in jax.tree_util.keystr(path)
                kernels.append(w.reshape(-1, w.shape[-1]) if o else w.reshape(w.shape[0], -1))
    head = params["embedding"]

    def products(kernels: list, head: jax.Array) -> jax.Array:
        total = jnp.zeros((batch,), jnp.float32)
        for w in kernels:
            total += jnp.sum(jnp.ones((batch, w.shape[0]), w.dtype) @ w, axis=-1)
        return total + jnp.sum(jnp.einsum("bd,vd->bv", jnp.ones((batch, head.shape[1])), head), axis=-1)

    fn = jax.jit(products, compiler_options=xla_options.decoding())
    fn(kernels, head).block_until_ready()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        fn(kernels, head).block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    import jaxtrans
    from jaxtrans.data.template import chat_ids
    from jaxtrans.infer.generate import SamplingConfig, generate
    from jaxtrans.pretrained import resolve

    model, tok = jaxtrans.load_pretrained("embedded:smollm2")
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch]
    ids, _ = chat_ids(tok, prompts)
    path = resolve("embedded:smollm2").path
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()  # fmt: skip
    longest = max(len(x) for x in ids)
    pad = tok.pad_token_id or 0
    input_ids = torch.tensor([[pad] * (longest - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids])
    sampling = SamplingConfig(max_new_tokens=args.new)
    variables = {"params": model.params}

    def ours() -> list[list[int]]:
        return generate(model.config, variables, ids, sampling, stop_ids=(), pad_id=pad)

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(input_ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                               do_sample=False, pad_token_id=pad)  # fmt: skip

    first = ours()  # compile
    theirs()
    agree = np.mean([a[:16] == b[longest : longest + 16].tolist() for a, b in zip(first, theirs(), strict=True)])
    times: dict[str, list[float]] = {"jaxtrans": [], "transformers": []}
    for _ in range(args.rounds):
        for name, fn in (("jaxtrans", ours), ("transformers", theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.new
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    cfg = model.config
    weight_bytes = sum(x.size * x.dtype.itemsize for x in __import__("jax").tree.leaves(model.params))
    bucket = -(-longest // 32) * 32
    mean_len = bucket + args.new / 2
    cache_bytes = 2 * cfg.num_layers * args.batch * mean_len * cfg.num_kv_heads * cfg.head_dim * 4
    step_s = statistics.median(times["jaxtrans"]) / args.new
    bw = copy_bandwidth()
    floor_s = matvec_floor_s(model.params, args.batch)
    print(f"batch {args.batch} x {args.new} new tokens, fp32, greedy; first 16 tokens agree on {agree:.0%} of rows")
    for k, v in tps.items():
        print(f"{k:13s} {v:8.1f} tok/s (median of {args.rounds})")
    print(f"ratio jaxtrans/transformers: {tps['jaxtrans'] / tps['transformers']:.2f}")
    read_bw = (weight_bytes + cache_bytes) / step_s
    print(f"jaxtrans reads {(weight_bytes + cache_bytes) / 1e6:.0f} MB per step ({step_s * 1e3:.1f} ms): "
          f"{read_bw / 1e9:.2f} GB/s vs large-copy bandwidth {bw / 1e9:.2f} GB/s -> {read_bw / bw:.0%}")  # fmt: skip
    print(f"the step's weight products alone take {floor_s * 1e3:.1f} ms ({weight_bytes / floor_s / 1e9:.2f} GB/s): "
          f"the loop runs at {floor_s / step_s:.0%} of the speed its dot kernels allow")  # fmt: skip


if __name__ == "__main__":
    main()
