"""The same step on different meshes of 8 CPU devices gives the same numbers; shardings follow the rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig, RopeConfig
from jaxtrans.model.lora import LoraConfig
from jaxtrans.train.data import InMemoryBatches
from jaxtrans.train.optim import OptimConfig
from jaxtrans.train.step import Trainer
from tests.train_job import build, examples

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2)]


def _run(mesh_sizes, steps=5):
    trainer, base = build(mesh_sizes, dropout=0.1)
    data = InMemoryBatches(examples(), batch_size=8, accum=2, seed=3)
    batch0 = next(data)
    batch_sh = trainer.batch_sharding()
    put = lambda b: {k: jax.device_put(v, batch_sh) for k, v in b.items()}  # noqa: E731
    state = trainer.init_state(base)
    micro = {k: v[0] for k, v in put(batch0).items()}
    grad_fn = jax.jit(jax.grad(lambda t: trainer.loss_fn(t, base, micro, jax.random.key(0))[0]))
    grads = jax.device_get(grad_fn(state.trainable))
    step = trainer.compiled_step(base)
    losses = []
    for batch in [batch0] + [next(data) for _ in range(steps - 1)]:
        state, m = step(state, base, put(batch))
        losses.append(float(m["loss"]))
    return trainer, state, grads, losses


def test_meshes_agree_and_state_is_sharded_by_the_rules():
    assert len(jax.devices()) == 8
    results = {m: _run(m) for m in MESHES}
    _, ref_state, ref_grads, ref_losses = results[(1, 1, 1)]
    for mesh, (trainer, state, grads, losses) in results.items():
        np.testing.assert_allclose(losses, ref_losses, atol=1e-5, err_msg=str(mesh))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            assert np.abs(a - b).max() <= 1e-5, mesh
        for a, b in zip(jax.tree.leaves(state.trainable), jax.tree.leaves(ref_state.trainable), strict=True):
            assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5, mesh
        # the trained state carries exactly the shardings the rules table gives
        expected = trainer.state_shardings()
        for arr, sh in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
            assert arr.sharding.is_equivalent_to(sh, arr.ndim), (mesh, arr.shape, arr.sharding, sh)
    trainer, state, _, _ = results[(2, 2, 2)]
    lora_q = state.trainable["lora"]["layers"]["attn"]["q"]
    assert tuple(lora_q["a"].sharding.spec) == (None, "fsdp", None)  # A follows the kernel's input side
    # B its output (heads) side; its rank axis takes fsdp, which its other axes leave free
    assert tuple(lora_q["b"].sharding.spec) == (None, "fsdp", "tensor", None)
    mlp_a = state.trainable["lora"]["layers"]["mlp"]["down"]["a"]
    assert tuple(mlp_a.sharding.spec) == (None, "tensor", "fsdp")
    mlp_b = state.trainable["lora"]["layers"]["mlp"]["down"]["b"]
    assert tuple(mlp_b.sharding.spec) == (None, None, "fsdp")  # embed has fsdp; the rank stays whole


def test_lora_step_flops_show_no_frozen_weight_gradients():
    """Forward+backward of a LoRA step costs <= 2.2x the forward: no dW for the frozen kernels."""
    cfg = ModelConfig(
        vocab_size=256,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=4,
        num_heads=8,
        num_kv_heads=8,
        head_dim=64,
        rope=RopeConfig(head_dim=64),
    )
    trainer = Trainer(cfg, llama.Adapters(lora=LoraConfig.make(8, 16)), OptimConfig(1e-3, total_steps=10), _mesh1())
    base = jax.eval_shape(lambda: llama.init_params(cfg))
    base = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_rep()), base)
    state = jax.eval_shape(lambda: trainer.init_state(llama.init_params(cfg)))
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, trainer.state_shardings()
    )
    batch = {k: jax.ShapeDtypeStruct((1, 4, 128), jnp.int32, sharding=_rep()) for k in examples(n=1)}

    def forward(b, bt):
        logits, _ = llama.Llama(cfg).apply({"params": b}, bt["tokens"][0], bt["segment_ids"][0], bt["positions"][0])
        return jnp.sum(logits)

    fwd = _flops(jax.jit(forward).lower(base, batch))
    step = _flops(jax.jit(trainer.step_fn).lower(state, base, batch))
    print(f"forward {fwd / 1e9:.2f} GFLOP, LoRA train step {step / 1e9:.2f} GFLOP, ratio {step / fwd:.2f}")
    assert step <= 2.2 * fwd


def _flops(lowered) -> float:
    cost = lowered.compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _mesh1():
    from jaxtrans import sharding

    return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _rep():
    from jaxtrans import sharding

    return sharding.replicated(_mesh1())
