"""The memory-saving paths compute the same numbers: chunked attention, the chunked LM-head loss, the tiled MLP."""

from __future__ import annotations

import dataclasses
import json

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


@pytest.mark.parametrize("distill", [False, True])
def test_every_checkpoint_policy_and_chunking_gives_the_same_loss_and_gradients(distill):
    """fp32, packed rows, 6 new-token rows, LoRA on every linear layer; with ``distill`` half the rows are
    distilled from the frozen model's logits (recovery KD, which needs whole logits: no loss chunks)."""
    from jaxtrans.train.distill import KD_MASK, DistillConfig

    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, 0.0, "all-linear"), new_tokens=6, padding_rows=2)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch = {k: jnp.asarray(v[:4]) for k, v in examples(n=4, t=16, vocab=132).items()}
    if distill:
        batch["loss_mask"] = batch["loss_mask"].at[::2].multiply(KD_MASK)
    base = llama.init_params(tiny_config(), seed=1)
    results = {}
    for remat in ("none", "full", "save_dots", "offload_residuals"):
        for mlp_chunk in (0, 4):
            for loss_chunk in (0,) if distill else (0, 4):
                cfg = dataclasses.replace(tiny_config(), remat=remat, mlp_chunk=mlp_chunk, loss_chunk=loss_chunk)
                trainer = Trainer(cfg, adapters, OptimConfig(total_steps=2), mesh,
                                  distill=DistillConfig("kl", 1.0) if distill else None)  # fmt: skip
                trainable = jax.tree.map(lambda x: x + 0.01, trainer.init_state(base, seed=0).trainable)
                loss = jax.value_and_grad(lambda t, tr=trainer: tr.loss_fn(t, base, batch, jax.random.key(0)),
                                          has_aux=True)  # fmt: skip
                (loss_sum, count), grads = jax.jit(loss)(trainable)
                results[(remat, mlp_chunk, loss_chunk)] = ((loss_sum, count), grads)
    (l0, n0), g0 = results[("none", 0, 0)]
    for key, ((loss_sum, count), grads) in results.items():
        assert float(count) == float(n0), key
        np.testing.assert_allclose(float(loss_sum), float(l0), rtol=1e-5, err_msg=str(key))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g0), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=str(key))


@pytest.mark.parametrize("hidden", [64, 1024])  # 1024: the head is dequantised in two 512-row tiles
def test_an_nf4_head_gives_the_logits_of_its_round_trip(hidden):
    """``lora.quantize_head``: logits (and the chunked loss) equal those of the float model whose head kernel is
    replaced by its NF4 round trip; the new-token rows stay float and trainable beside it."""
    from jaxtrans.model import nf4
    from jaxtrans.model.config import ModelConfig, RopeConfig

    cfg = ModelConfig(vocab_size=256, hidden_size=hidden, intermediate_size=128, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=hidden // 4, rope=RopeConfig(head_dim=hidden // 4))  # fmt: skip
    params = llama.init_params(cfg, seed=2)
    quantized = nf4.quantize_params(params, head=True)
    assert set(quantized["lm_head"]) == set(nf4.NF4._fields) and quantized["embedding"].shape == (256, hidden)
    kernel = nf4.dequantize(nf4.quantize_single(params["lm_head"]["kernel"]), (hidden, 256), jnp.float32)
    round_trip = {**params, "lm_head": {"kernel": kernel}}
    new_rows = llama.init_trainable(cfg, llama.Adapters(new_tokens=3), seed=1)["new_rows"]
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 259, (2, 32)), jnp.int32)
    float_model = llama.Llama(cfg, llama.Adapters(new_tokens=3))
    nf4_model = llama.Llama(cfg, llama.Adapters(new_tokens=3, quantized_head=True))
    nf4_vars = {"params": {**params, "lm_head": quantized["lm_head"]}, "new_rows": new_rows}
    want, _ = float_model.apply({"params": round_trip, "new_rows": new_rows}, tokens)
    got, _ = nf4_model.apply(nf4_vars, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    seg, mask = jnp.ones_like(tokens), jnp.ones_like(tokens)
    chunked = llama.Llama(dataclasses.replace(cfg, loss_chunk=8), llama.Adapters(new_tokens=3, quantized_head=True))
    want_loss = float_model.apply({"params": round_trip, "new_rows": new_rows}, tokens, seg, None, tokens, mask,
                                  method="loss")  # fmt: skip
    got_loss = chunked.apply(nf4_vars, tokens, seg, None, tokens, mask, method="loss")
    np.testing.assert_allclose(float(got_loss[0]), float(want_loss[0]), rtol=1e-5)


@pytest.mark.parametrize("distill", [False, True])
def test_a_host_embedding_table_gives_the_same_loss_and_gradients(distill):
    """``lora.host_embedding``: the step gets the batch's rows gathered from a numpy table instead of the table;
    packed rows with new-token ids (their rows stay trainable on the device), LoRA on every linear layer, and
    with ``distill`` the frozen teacher reading the same rows."""
    from jaxtrans.train import host_embedding
    from jaxtrans.train.distill import KD_MASK, DistillConfig

    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, 0.0, "all-linear"), new_tokens=6, padding_rows=2)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch = {k: jnp.asarray(v[:4]) for k, v in examples(n=4, t=16, vocab=132).items()}
    batch["segment_ids"] = batch["segment_ids"].at[:, 10:].set(2)  # two examples a row
    if distill:
        batch["loss_mask"] = batch["loss_mask"].at[::2].multiply(KD_MASK)
    assert int(jnp.sum(batch["tokens"] >= 128)) > 0  # new ids among the inputs
    cfg = dataclasses.replace(tiny_config(), remat="full")
    base = llama.init_params(cfg, seed=1)
    out = []
    for on_host in (False, True):
        trainer = Trainer(cfg, adapters, OptimConfig(total_steps=2), mesh, host_embedding=on_host,
                          distill=DistillConfig("kl", 1.0) if distill else None)  # fmt: skip
        step_base, step_batch = base, batch
        if on_host:
            step_base, table = host_embedding.split(base)
            assert host_embedding.KEY not in step_base and isinstance(table, np.ndarray)
            step_batch = {**batch, host_embedding.BATCH_KEY: host_embedding.rows(table, np.asarray(batch["tokens"]),
                                                                                 cfg.dtype)}  # fmt: skip
        trainable = jax.tree.map(lambda x: x + 0.01, trainer.init_state(base, seed=0).trainable)
        loss = jax.value_and_grad(lambda t, tr=trainer, b=step_base, m=step_batch: tr.loss_fn(t, b, m,
                                  jax.random.key(0)), has_aux=True)  # fmt: skip
        out.append(jax.jit(loss)(trainable))
    ((l0, n0), g0), ((l1, n1), g1) = out
    assert float(n0) == float(n1) and float(l0) == pytest.approx(float(l1), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_training_with_a_host_embedding_table_matches_step_for_step(tmp_path):
    """The loop gathers each batch's rows on the host; three steps give the device table's losses and state."""
    from jaxtrans.train.data import InMemoryBatches
    from jaxtrans.train.loop import LoopConfig, train
    from tests.train_job import build

    trainer, base = build(dropout=0.0)
    finals = []
    for on_host in (False, True):
        t = dataclasses.replace(trainer, host_embedding=on_host)
        data = InMemoryBatches(examples(), batch_size=8, accum=2, seed=3)
        loop = LoopConfig(total_steps=3, save_every=3, progress=False)
        finals.append(train(t, base, data, loop, str(tmp_path / f"host{on_host}")).trainable)
        assert "embedding" in base  # the caller's base is left whole
    losses = [(tmp_path / f"host{h}" / "metrics.jsonl").read_text() for h in (False, True)]
    read = lambda text: [round(json.loads(line)["loss"], 6) for line in text.splitlines() if '"loss"' in line]  # noqa: E731
    assert read(losses[0]) == read(losses[1]) and len(read(losses[0])) == 3
    for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_a_host_embedding_table_is_refused_for_a_tied_head():
    from jaxtrans.errors import JaxtransError

    cfg = dataclasses.replace(tiny_config(), tie_embeddings=True)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with pytest.raises(JaxtransError, match="lora.host_embedding.*tied"):
        Trainer(cfg, llama.Adapters(lora=LoraConfig.make(4, 8, 0.0)), OptimConfig(total_steps=2), mesh,
                host_embedding=True)  # fmt: skip
