"""Layers run under nn.scan: compiling 32 layers costs about what 8 do."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig, RopeConfig


def _compile_seconds(num_layers: int) -> float:
    cfg = ModelConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_layers=num_layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        rope=RopeConfig(head_dim=32),
    )
    params = jax.eval_shape(lambda: llama.init_params(cfg))
    tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)

    def loss(p, t):
        logits, _ = llama.Llama(cfg).apply({"params": p}, t)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    start = time.perf_counter()
    jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile()
    return time.perf_counter() - start


def test_compile_time_does_not_grow_with_depth():
    _compile_seconds(2)  # warm up tracing and backend caches
    t8 = min(_compile_seconds(8) for _ in range(2))
    t32 = min(_compile_seconds(32) for _ in range(2))
    print(f"forward+backward compile: 8 layers {t8:.2f}s, 32 layers {t32:.2f}s, ratio {t32 / t8:.2f}")
    assert t32 <= 1.5 * t8
