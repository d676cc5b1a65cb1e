"""The memory-saving paths compute the same numbers: chunked attention, the chunked LM-head loss, the tiled MLP."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrans import sharding
from jaxtrans.model import attention, llama
from jaxtrans.model.lora import LoraConfig
from jaxtrans.train.optim import OptimConfig
from jaxtrans.train.step import Trainer
from tests.train_job import examples, tiny_config


def test_chunked_attention_equals_reference():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 64, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 64, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 64, 2, 8)), jnp.float32)
    seg = np.ones((2, 64), np.int32)
    seg[1, 40:] = 2  # two packed examples
    slots = jnp.arange(64)
    m = attention.mask(slots, slots, jnp.asarray(seg), jnp.asarray(seg))

    def loss(fn, q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v, m)))

    ref = jax.value_and_grad(lambda *a: loss(attention.reference, *a), argnums=(0, 1, 2))(q, k, v)
    got = jax.value_and_grad(lambda *a: loss(lambda *b: attention.chunked(*b, chunk=16), *a), argnums=(0, 1, 2))(
        q, k, v
    )
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key, remat", [("loss_chunk", "none"), ("mlp_chunk", "full"), ("mlp_chunk", "none")])
def test_chunked_paths_equal_the_whole_arrays(key, remat):
    """Packed rows with new-token rows and LoRA on every linear layer (the MLP's included): loss and gradients."""
    cfg = dataclasses.replace(tiny_config(), remat=remat)
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, 0.0, "all-linear"), new_tokens=6, padding_rows=2)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch = {k: jnp.asarray(v[:4]) for k, v in examples(n=4, t=16, vocab=132).items()}
    results = []
    for chunk in (0, 4):
        c = dataclasses.replace(cfg, **{key: chunk})
        trainer = Trainer(c, adapters, OptimConfig(total_steps=2), mesh)
        base = llama.init_params(cfg, seed=1)
        state = trainer.init_state(base, seed=0)
        trainable = jax.tree.map(lambda x: x + 0.01, state.trainable)  # B != 0: the adapters matter
        grad = jax.grad(lambda t, tr=trainer, b=base: tr.loss_fn(t, b, batch, jax.random.key(0))[0])(trainable)
        results.append((trainer.loss_fn(trainable, base, batch, jax.random.key(0)), grad))
    (l0, g0), (l1, g1) = results
    np.testing.assert_allclose(np.asarray(l0[0]), np.asarray(l1[0]), rtol=1e-5)
    assert float(l0[1]) == float(l1[1])
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
