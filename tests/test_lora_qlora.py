"""LoRA as a separate pytree, the masked optimizer, and NF4 storage (QLoRA)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxtrans import sharding
from jaxtrans.model import llama, nf4
from jaxtrans.model.lora import LoraConfig, merge
from jaxtrans.train.optim import OptimConfig
from jaxtrans.train.step import Trainer
from tests.train_job import examples, tiny_config

# The NF4 values as printed in the QLoRA paper (Dettmers et al. 2023, Appendix E).
PAPER_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip


def _single_mesh():
    return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _batch(accum=1, n=4, seed=0, vocab=128):
    ex = examples(n=accum * n, seed=seed, vocab=vocab)
    return {k: v.reshape(accum, n, -1) for k, v in ex.items()}


def test_untrained_adapter_is_exactly_the_base():
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    adapters = llama.Adapters(lora=LoraConfig.make(8, 16, targets="all-linear"))
    lora = llama.init_trainable(cfg, adapters)["lora"]
    tokens = jnp.asarray(examples(n=2)["tokens"])
    plain = jax.jit(lambda p: llama.Llama(cfg).apply({"params": p}, tokens)[0])(base)
    adapted = jax.jit(lambda p, lo: llama.Llama(cfg, adapters).apply({"params": p, "lora": lo}, tokens)[0])(base, lora)
    assert np.array_equal(np.asarray(plain), np.asarray(adapted))


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_adapter_equals_base_plus_adapter(rslora):
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    lora_cfg = LoraConfig.make(4, 8, targets="q_proj,v_proj,o_proj,down_proj", rslora=rslora)
    adapters = llama.Adapters(lora=lora_cfg)
    lora = llama.init_trainable(cfg, adapters)["lora"]
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)  # B != 0
    tokens = jnp.asarray(examples(n=2)["tokens"])
    adapted, _ = llama.Llama(cfg, adapters).apply({"params": base, "lora": lora}, tokens)
    merged, _ = llama.Llama(cfg).apply({"params": merge(base, lora, lora_cfg)}, tokens)
    assert np.abs(np.asarray(adapted) - np.asarray(merged)).max() <= 1e-5
    unmerged = merge(merge(base, lora, lora_cfg), lora, lora_cfg, sign=-1.0)
    for a, b in zip(jax.tree.leaves(unmerged), jax.tree.leaves(base), strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6
    assert set(traverse_util.flatten_dict(lora)) == {
        ("layers", "attn", n, ab) for n in ("q", "v", "o") for ab in "ab"
    } | {("layers", "mlp", "down", ab) for ab in "ab"}


def test_training_leaves_base_bit_identical_and_frozen_has_no_state():
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    before = jax.tree.map(np.array, base)
    trainer = Trainer(
        cfg, llama.Adapters(lora=LoraConfig.make(4, 8), new_tokens=4), OptimConfig(1e-2, total_steps=5), _single_mesh()
    )
    state = trainer.init_state(base)
    # the optimizer state holds moments for the trainable collections and nothing for the base
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert paths and not any("['params']" in p for p in paths)
    moments = [p for p in paths if ".mu[" in p]
    assert len(moments) == len(jax.tree.leaves(state.trainable))
    step = trainer.compiled_step(base)
    first = jax.tree.map(np.array, state.trainable)
    for i in range(4):
        state, metrics = step(state, base, _batch(seed=i, vocab=132))
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(before), strict=True):
        assert np.array_equal(np.asarray(a), b)
    changed = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(state.trainable), strict=True)
    ]
    assert all(changed)


def test_gradient_accumulation_equals_one_big_batch():
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    trainer = Trainer(cfg, llama.Adapters(lora=LoraConfig.make(4, 8)), OptimConfig(1e-2, total_steps=5), _single_mesh())
    big = _batch(accum=1, n=8)
    split = {k: v.reshape(4, 2, -1) for k, v in big.items()}
    _, m1 = trainer.compiled_step(base)(trainer.init_state(base), base, big)
    _, m2 = trainer.compiled_step(base)(trainer.init_state(base), base, split)
    # same loss and the same gradient (Adam's first step, ~lr*sign(g), would magnify float-order noise)
    assert abs(float(m1["loss"]) - float(m2["loss"])) <= 1e-6
    assert abs(float(m1["grad_norm"]) - float(m2["grad_norm"])) <= 1e-6 * float(m1["grad_norm"]) + 1e-9


def test_nf4_codebook_is_the_papers():
    np.testing.assert_allclose(nf4.CODEBOOK, np.array(PAPER_NF4, np.float32), atol=2e-6)
    assert nf4.CODEBOOK[7] == 0.0 and len(set(nf4.CODEBOOK.tolist())) == 16


def test_nf4_round_trip_and_storage():
    shape = (4, 576, 1536)  # SmolLM2's MLP kernels, four layers
    w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    q = nf4.quantize(w)
    back = jax.vmap(lambda *parts: nf4.dequantize(nf4.NF4(*parts), shape[1:], jnp.float32))(*q)
    err = np.asarray(back - w)
    # NF4 on N(0,1) data: RMS error about 0.09 of the std; no value further off than half the widest
    # codebook gap (0.139) times its block's absmax (< 6 for 64 normal samples), plus absmax rounding
    assert np.sqrt(np.mean(err**2)) <= 0.1
    assert np.abs(err).max() <= 0.14 * float(jnp.max(jnp.abs(w))) + 0.02
    bytes_per_param = nf4.storage_bytes(q) / w.size
    print(f"NF4 storage: {bytes_per_param:.4f} bytes/parameter")
    assert bytes_per_param <= 0.52
    assert q.codes.dtype == jnp.uint8 and q.absmax_q.dtype == jnp.int8


def test_qlora_loss_tracks_bf16_lora():
    cfg = tiny_config()
    float_base = llama.init_params(cfg, seed=1)
    lora = LoraConfig.make(8, 16)
    runs = {}
    for name, adapters, base in [
        ("bf16", llama.Adapters(lora=lora), jax.tree.map(lambda x: x.astype(jnp.bfloat16), float_base)),
        ("nf4", llama.Adapters(lora=lora, quantized=True), nf4.quantize_params(float_base)),
    ]:
        c = cfg.replace(param_dtype="bfloat16")
        trainer = Trainer(c, adapters, OptimConfig(1e-2, total_steps=30, warmup_steps=2), _single_mesh())
        state, step = trainer.init_state(base), trainer.compiled_step(base)
        losses = []
        for i in range(30):
            state, m = step(state, base, _batch(seed=i % 4))
            losses.append(float(m["loss"]))
        runs[name] = np.array(losses)
    print("bf16 base:", runs["bf16"][[0, 9, 19, 29]].round(3), "nf4 base:", runs["nf4"][[0, 9, 19, 29]].round(3))
    assert runs["nf4"][-1] < runs["nf4"][0] - 0.3  # it learns
    assert np.abs(runs["nf4"] - runs["bf16"]).max() <= 0.1


def test_modules_to_save_trains_the_full_embedding_and_leaves_the_base_alone():
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    before = np.array(base["embedding"])
    trainer = Trainer(
        cfg,
        llama.Adapters(lora=LoraConfig.make(4, 8)),
        OptimConfig(1e-2, total_steps=3),
        _single_mesh(),
        modules_to_save=("embedding",),
    )
    state = trainer.init_state(base)
    step = trainer.compiled_step(base)
    for i in range(3):
        state, _ = step(state, base, _batch(seed=i))
    assert np.array_equal(np.asarray(base["embedding"]), before)
    assert not np.array_equal(np.asarray(state.trainable["base"]["embedding"]), before)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert any("mu['base']['embedding']" in p for p in paths)
    with pytest.raises(Exception, match="not base parameters"):
        Trainer(cfg, llama.Adapters(), OptimConfig(), _single_mesh(), modules_to_save=("embed_tokens",)).init_state(
            base
        )


@pytest.mark.parametrize("frozen", ["new_rows", "lora"])
def test_each_group_has_its_own_learning_rate(frozen):
    """lr 0 for one group keeps it bit-identical while the other trains (the new-row lr acts; it is not ignored)."""
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, targets="all-linear"), new_tokens=4)
    lrs = {"new_rows": (1e-2, 0.0), "lora": (0.0, 1e-2)}[frozen]
    optim = OptimConfig(lrs[0], schedule="constant", total_steps=3, weight_decay=0.1, new_rows_learning_rate=lrs[1])
    trainer = Trainer(cfg, adapters, optim, _single_mesh())
    state = trainer.init_state(base)
    before = jax.device_get(state.trainable)
    step = trainer.compiled_step(base)
    for i in range(3):
        state, _ = step(state, base, _batch(seed=i, vocab=cfg.vocab_size + 4))
    after = jax.device_get(state.trainable)
    kept, moved = ("new_rows", "lora") if frozen == "new_rows" else ("lora", "new_rows")
    for a, b in zip(jax.tree.leaves(before[kept]), jax.tree.leaves(after[kept]), strict=True):
        assert np.array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(before[moved]), jax.tree.leaves(after[moved]), strict=True)]  # fmt: skip
    assert any(changed)
    with pytest.raises(Exception, match="new_rows_learning_rate=-1.0 must be a finite number >= 0"):
        OptimConfig(new_rows_learning_rate=-1.0)
    with pytest.raises(Exception, match="learning_rate=nan"):
        OptimConfig(learning_rate=float("nan"))


def test_bf16_first_moment_halves_it_and_tracks_f32():
    """``mu_dtype="bfloat16"`` (the 7B variants' memory policy) stores AdamW's first moment in bf16, the second in
    f32, and the losses stay with the f32 optimizer's."""
    cfg = tiny_config()
    base = llama.init_params(cfg, seed=1)
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, targets="all-linear"), new_tokens=4)
    losses = {}
    for mu in ("float32", "bfloat16"):
        trainer = Trainer(cfg, adapters, OptimConfig(1e-2, total_steps=6, mu_dtype=mu), _single_mesh())
        state = trainer.init_state(base)
        leaves = jax.tree_util.tree_leaves_with_path(state.opt_state)
        assert {x.dtype for p, x in leaves if ".mu[" in jax.tree_util.keystr(p)} == {jnp.dtype(mu)}
        assert {x.dtype for p, x in leaves if ".nu[" in jax.tree_util.keystr(p)} == {jnp.dtype("float32")}
        step, losses[mu] = trainer.compiled_step(base), []
        for _ in range(6):  # one batch, fitted: the loss must fall
            state, metrics = step(state, base, _batch(seed=0, vocab=cfg.vocab_size + 4))
            losses[mu].append(float(metrics["loss"]))
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-3)
    assert losses["float32"][-1] < losses["float32"][0]
    with pytest.raises(Exception, match="optim.mu_dtype='fp8' is not one of float32, bfloat16"):
        OptimConfig(mu_dtype="fp8")
