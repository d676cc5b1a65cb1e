"""LoRA training throughput: jaxtrans vs torch + peft on identical shapes, alternating in one run.

    python bench/train_lora.py [--rounds 5] [--steps 5] [--layers 8] [--seq 256] [--batch 4]

Llama d=512, ff=1376, 8 layers, 8 heads, 4 KV heads, vocab 32000; LoRA r=8 (alpha 16) on all seven
projections; batch 4 x 256; AdamW; float32 on both sides. Each round times ``--steps`` steps of each
framework (after a warm-up that compiles / allocates), alternating, and the medians are compared.
It also reports the FLOP/s jaxtrans achieves (XLA's count of the compiled step) against the FLOP/s of a
large float32 matmul measured in the same run, on each framework's own matmul.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def jax_setup(args):
    import jax
    import numpy as np

    from jaxtrans import sharding
    from jaxtrans.model import llama
    from jaxtrans.model.config import ModelConfig, RopeConfig
    from jaxtrans.model.lora import LoraConfig
    from jaxtrans.train.optim import OptimConfig
    from jaxtrans.train.step import Trainer

    cfg = ModelConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_layers=args.layers,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        rope=RopeConfig(head_dim=64),
        max_position_embeddings=4096,
    )
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    optim = OptimConfig(1e-4, schedule="constant", total_steps=10**6, clip_norm=0.0)
    trainer = Trainer(cfg, llama.Adapters(lora=LoraConfig.make(8, 16)), optim, mesh)
    base = llama.init_params(cfg)
    state = trainer.init_state(base)
    step = trainer.compiled_step(base)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32000, (1, args.batch, args.seq + 1)).astype(np.int32)
    batch = {
        "tokens": tokens[..., :-1],
        "targets": tokens[..., 1:],
        "loss_mask": np.ones((1, args.batch, args.seq), np.int32),
        "segment_ids": np.ones((1, args.batch, args.seq), np.int32),
        "positions": np.broadcast_to(np.arange(args.seq, dtype=np.int32), (1, args.batch, args.seq)).copy(),
    }
    batch = {k: jax.device_put(v) for k, v in batch.items()}
    cost = step.lower(state, base, batch).compile().cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost)["flops"])
    box = {"state": state}

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            box["state"], metrics = step(box["state"], base, batch)
        jax.block_until_ready(metrics["loss"])
        return time.perf_counter() - start

    return run, flops


def torch_setup(args):
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    )
    model = transformers.LlamaForCausalLM(config)
    lora = peft.LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = peft.get_peft_model(model, lora).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 32000, (args.batch, args.seq + 1))
    inputs, labels = ids[:, :-1], ids[:, 1:]

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            logits = model(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return run


def matmul_flops(n: int = 2048, reps: int = 10) -> tuple[float, float]:
    """FLOP/s of an n x n float32 matmul in jax and in torch (best of ``reps``)."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best_j = min(_timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    t = torch.randn(n, n)
    t @ t
    best_t = min(_timed(lambda: t @ t) for _ in range(reps))
    return 2 * n**3 / best_j, 2 * n**3 / best_t


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    import jax
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    run_jax, flops = jax_setup(args)
    run_torch = torch_setup(args)
    run_jax(1), run_torch(1)  # warm-up: compile, allocate
    tokens = args.batch * args.seq * args.steps
    jax_tps, torch_tps = [], []
    for r in range(args.rounds):
        jax_tps.append(tokens / run_jax(args.steps))
        torch_tps.append(tokens / run_torch(args.steps))
        print(f"round {r + 1}: jaxtrans {jax_tps[-1]:8.0f} tok/s   torch+peft {torch_tps[-1]:8.0f} tok/s", flush=True)
    mj, mt = statistics.median(jax_tps), statistics.median(torch_tps)
    peak_j, peak_t = matmul_flops()
    achieved = flops * mj / (args.batch * args.seq)
    print(
        f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, jax {jax.__version__}"
    )
    print(f"median tokens/s: jaxtrans {mj:.0f}, torch+peft {mt:.0f}, ratio {mj / mt:.2f}")
    print(f"jaxtrans step: {flops / 1e9:.1f} GFLOP (XLA count), achieved {achieved / 1e9:.1f} GFLOP/s")
    print(f"large float32 matmul: jax {peak_j / 1e9:.1f} GFLOP/s, torch {peak_t / 1e9:.1f} GFLOP/s")
    print(f"jaxtrans achieved / jax matmul peak: {achieved / peak_j:.2f}")


if __name__ == "__main__":
    main()
