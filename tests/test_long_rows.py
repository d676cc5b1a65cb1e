"""A real run at 16,384 tokens a row on the CPU: the tiny model trains with its layer inputs offloaded, the MLP
tiled and the loss chunked, and every step equals full rematerialisation of the whole arrays."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrans import sharding
from jaxtrans.model import attention, llama
from jaxtrans.model.lora import LoraConfig
from jaxtrans.train.optim import OptimConfig
from jaxtrans.train.step import Trainer
from tests.train_job import tiny_config

T = 16_384


def _small():
    """The tiny model with one layer of two heads: attention over 16,384 positions is the CPU's cost here."""
    return dataclasses.replace(tiny_config(), num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32,
                               rope=dataclasses.replace(tiny_config().rope, head_dim=32))  # fmt: skip


def _packed_row(seed: int) -> dict:
    """One row of 16,384 tokens: eight packed examples of 2,000 tokens, then padding; new-token ids included."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 132, size=(1, T + 1)).astype(np.int32)
    seg = np.zeros((1, T), np.int32)
    pos = np.zeros((1, T), np.int32)
    for i in range(8):
        seg[0, i * 2000 : (i + 1) * 2000] = i + 1
        pos[0, i * 2000 : (i + 1) * 2000] = np.arange(2000)
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": (seg != 0).astype(np.int32),
             "segment_ids": seg, "positions": pos}  # fmt: skip
    return {k: jnp.asarray(v[None]) for k, v in batch.items()}  # [accum=1, B=1, T]


def _train(cfg, steps: int = 2) -> tuple[list[float], dict]:
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, 0.0, "all-linear"), new_tokens=4)
    trainer = Trainer(cfg, adapters, OptimConfig(5e-3, schedule="constant", total_steps=steps), mesh)
    base = llama.init_params(_small(), seed=1)
    state = trainer.init_state(base, seed=0)
    step = trainer.compiled_step(base)
    losses, row = [], _packed_row(0)  # the same row each step: its loss must fall
    for _ in range(steps):
        state, metrics = step(state, base, row)
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.trainable)


def test_sixteen_thousand_token_rows_train_offloaded_and_tiled_exactly_as_full_remat():
    assert attention.resolve("auto", T, on="cpu") == "chunked"  # the CPU's blockwise attention at this length
    full = dataclasses.replace(_small(), remat="full")
    lean = dataclasses.replace(_small(), remat="offload_residuals", mlp_chunk=1024, loss_chunk=1024)
    want_losses, want = _train(full)
    got_losses, got = _train(lean)
    print("full remat", want_losses, "offloaded + tiled", got_losses)
    assert want_losses[-1] < want_losses[0] - 1e-3  # it trains
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
