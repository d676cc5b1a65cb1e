"""Every attention implementation equals the XLA reference (forward and gradient)."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxtrans.model import attention, llama
from jaxtrans.model.config import ModelConfig, RopeConfig


def _inputs(t=128, n=4, k=2, h=32, b=2, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, n, h))
    kk = jax.random.normal(keys[1], (b, t, k, h))
    v = jax.random.normal(keys[2], (b, t, k, h))
    seg = np.ones((b, t), np.int32)
    seg[0, 50:] = 2  # two packed examples
    seg[0, 120:] = 0  # then padding
    seg[1, :9] = 0  # left padding
    return q, kk, v, jnp.asarray(seg)


def _compare(fn, q, kk, v, seg, mask):
    valid = np.asarray(seg) != 0
    ref = lambda q, k, v: attention.reference(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(np.asarray(fn(q, kk, v))[valid], np.asarray(ref(q, kk, v))[valid], atol=1e-5)
    weights = jnp.asarray(valid, jnp.float32)[:, :, None, None]
    loss = lambda f: lambda *a: jnp.sum(f(*a) * weights)  # noqa: E731
    got = jax.grad(loss(fn), argnums=(0, 1, 2))(q, kk, v)
    want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, kk, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_dot_product_equals_reference():
    q, kk, v, seg = _inputs()
    mask = attention.mask(jnp.arange(128), jnp.arange(128), seg, seg)
    _compare(lambda q, k, v: attention.dot_product(q, k, v, mask), q, kk, v, seg, mask)


def test_pallas_flash_equals_reference_in_interpret_mode():
    q, kk, v, seg = _inputs()
    mask = attention.mask(jnp.arange(128), jnp.arange(128), seg, seg)
    with pltpu.force_tpu_interpret_mode():
        _compare(lambda q, k, v: attention.flash(q, k, v, seg), q, kk, v, seg, mask)


def test_flash_on_rows_shorter_than_its_block_takes_the_reference():
    """64-position rows (debug configs): the kernel refuses blocks larger than the row; the result is the same."""
    q, kk, v, seg = (x[:, :64] for x in _inputs())
    mask = attention.mask(jnp.arange(64), jnp.arange(64), seg, seg)
    _compare(lambda q, k, v: attention.flash(q, k, v, seg, mask), q, kk, v, seg, mask)


@pytest.mark.parametrize("impl", ["dot_product", "flash", "triton", "auto", "chunked"])
def test_model_logits_do_not_depend_on_the_implementation(impl):
    cfg = ModelConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope=RopeConfig(head_dim=16),
    )
    params = llama.init_params(cfg)
    _, _, _, seg = _inputs()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 128)), jnp.int32)
    ref, _ = llama.Llama(cfg).apply({"params": params}, tokens, seg)
    interpret = pltpu.force_tpu_interpret_mode() if impl == "flash" else contextlib.nullcontext()
    with interpret:  # the TPU kernel by its interpreter; the Triton one interprets itself off a GPU
        got, _ = llama.Llama(cfg.replace(attention=impl)).apply({"params": params}, tokens, seg)
    valid = np.asarray(seg) != 0
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=1e-5)


def test_pallas_triton_equals_reference_in_interpret_mode():
    """The GPU kernel ``auto`` picks, run by Pallas' interpreter on the CPU: packed rows, padding, grouped heads."""
    q, kk, v, seg = _inputs()
    mask = attention.mask(jnp.arange(128), jnp.arange(128), seg, seg)
    _compare(lambda q, k, v: attention.triton(q, k, v, seg), q, kk, v, seg, mask)


@pytest.mark.parametrize(
    "platform, seq_len, window, want",
    [("tpu", 2048, None, "flash"), ("gpu", 2048, None, "triton"), ("cpu", 2048, None, "xla"),
     ("gpu", 2048, 4096, "chunked"), ("gpu", 200, None, "xla"), ("tpu", 64, None, "xla"),
     ("cpu", 16384, None, "chunked")],
)  # fmt: skip
def test_auto_takes_the_platforms_flash_kernel(platform, seq_len, window, want):
    assert attention.resolve("auto", seq_len, window, on=platform) == want
    assert attention.resolve("dot_product", seq_len, window, on=platform) == "dot_product"
