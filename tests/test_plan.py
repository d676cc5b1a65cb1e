"""The ``--dry_run`` planner: shapes-only compile, XLA's memory numbers, clear errors before compiling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PLAN = """
import json, sys
from jaxtrans.config import load_file
from jaxtrans.plan import plan
cfg = load_file(sys.argv[1]).unlock()
for key, value in json.loads(sys.argv[2]).items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
print("PLAN " + json.dumps(plan(cfg, sys.argv[3])))
"""


def _plan(config: str, overrides: dict, devices: int, device: str = "H100") -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", PLAN, config, json.dumps(overrides), device], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("PLAN ")][-1]
    return json.loads(line[5:])


LLAMA2_QLORA = {
    "curriculum": ["transfer"],
    "lora.quantized": True,
    "lora.rank": 64,
    "stages.transfer.batch_size": 1,
    "stages.transfer.seq_len": 2048,
}


def test_llama2_7b_qlora_plan_and_fsdp_divides_the_state():
    """Numbers are the XLA GPU compiler's with the CUDA plugin (the test extra), else XLA:CPU's estimate."""
    one = _plan("configs/thai.py:llama2_7b", {**LLAMA2_QLORA, "mesh.data": 1}, devices=1)
    b1 = one["per_device_bytes"]
    print(json.dumps(one, indent=1))
    assert one["batch"] == {"accum": 1, "batch": 1, "seq_len": 2048}
    assert b1["frozen_base"] <= 0.6 * one["params"]  # NF4 blocks (0.516 B) + bf16 embeddings and head (2 B)
    assert b1["frozen_base"] + b1["trainable_and_optimizer"] <= 6 * 2**30
    assert one["compile_seconds"] <= 120
    eight = _plan("configs/thai.py:llama2_7b", {**LLAMA2_QLORA, "mesh.data": 1, "mesh.fsdp": 8,
                                                "stages.transfer.batch_size": 8}, devices=8)  # fmt: skip
    b8 = eight["per_device_bytes"]
    print(json.dumps(eight, indent=1))
    state1 = b1["frozen_base"] + b1["trainable_and_optimizer"]
    state8 = b8["frozen_base"] + b8["trainable_and_optimizer"]
    assert state8 <= state1 / 8 * 1.1
    assert eight["compile_seconds"] <= 120


def test_plan_errors_before_compiling():
    """On the local compiler (``cpu``: this machine's 8 devices) and on 8 abstract GPUs alike."""
    for device in ("cpu", "H100"):
        with pytest.raises(AssertionError, match="batch_size=12 is not divisible by the data-parallel size 8"):
            _plan("configs/thai.py:llama2_7b", {"mesh.data": 8, "stages.transfer.batch_size": 12}, 8, device)
    with pytest.raises(AssertionError, match="needs 3 devices but 8 are available"):
        _plan("configs/thai.py:llama2_7b", {"mesh.data": 3}, devices=8, device="cpu")


# ---------------------------------------------------------------- FLOPs from the shapes


def _unrolled_step_flops(cfg, adapters, rows: int, seq: int) -> float:
    """XLA's count of a LoRA forward+backward on a model without scan, accumulation or chunked loops."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from jaxtrans.model import llama

    model = llama.Llama(cfg, adapters, scan_layers=False)
    variables = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
    params = variables.pop("params")
    tokens = jax.ShapeDtypeStruct((rows, seq), jnp.int32)

    def loss(trainable, params, tokens):
        seg = jnp.ones_like(tokens)
        total, _ = model.apply({"params": params, **trainable}, tokens, seg, None, tokens, seg, method="loss")
        return total

    cost = jax.jit(jax.grad(loss)).lower(variables, params, tokens).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.parametrize("targets, new_tokens, tie", [("all-linear", 64, False), ("q,v", 0, True)])
def test_analytic_flops_equal_xlas_count_on_an_unrolled_model(targets, new_tokens, tie):
    from jaxtrans.costs import step_flops
    from jaxtrans.model import llama
    from jaxtrans.model.config import ModelConfig, RopeConfig
    from jaxtrans.model.lora import LoraConfig

    cfg = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=64, rope=RopeConfig(head_dim=64), tie_embeddings=tie)  # fmt: skip
    adapters = llama.Adapters(lora=LoraConfig.make(8, 16.0, 0.0, targets), new_tokens=new_tokens)
    rows, seq = 2, 128
    xla = _unrolled_step_flops(cfg, adapters, rows, seq)
    ours = step_flops(cfg, adapters, rows * seq, seq)
    print(f"analytic {ours.total:.4g} vs XLA {xla:.4g}: {ours.total / xla:.4f}")
    assert abs(ours.total / xla - 1) <= 0.05


def test_the_7b_plan_counts_every_layer():
    """XLA's count of the scanned step saw one layer (2.9 TFLOP); the shapes say what a 2,048-token step costs."""
    from jaxtrans.costs import step_flops
    from jaxtrans.model import llama
    from jaxtrans.model.lora import LoraConfig
    from jaxtrans.plan import model_config

    cfg = model_config("meta-llama/Llama-2-7b-hf", remat="full")
    adapters = llama.Adapters(lora=LoraConfig.make(64, 128.0, 0.0, "all-linear"), quantized=True)
    flops = step_flops(cfg, adapters, 2048, 2048)
    forward = 2 * cfg.num_params * 2048
    assert flops.total >= 55e12 and flops.forward >= 0.95 * forward
    assert 3.0 <= flops.total / forward <= 3.6  # forward, input gradients, the forward again under remat


# ---------------------------------------------------------------- the TPU compiler, without a TPU

needs_libtpu = pytest.mark.skipif(
    not __import__("jaxtrans.topology", fromlist=["has_libtpu"]).has_libtpu(),
    reason="libtpu is not installed (pip install libtpu==0.0.42.1; the test extra installs it)",
)


def _tiny_tpu_config(model_dir: str, mesh: tuple[int, int, int]):
    from jaxtrans.config import load_file

    cfg = load_file(os.path.join(REPO, "tests", "tiny_two_stages.py") + ":" + model_dir).unlock()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
    cfg.model.remat = "full"  # attention stays auto: Pallas flash on a TPU
    for stage in ("a", "b"):
        cfg.stages[stage].seq_len, cfg.stages[stage].batch_size = 512, 8
    return cfg


@needs_libtpu
@pytest.mark.parametrize("mesh", [(1, 4, 1), (2, 2, 1)])
def test_the_train_step_compiles_for_a_v5e_slice_with_pallas_flash_attention(smol_tiny, mesh):
    from jaxtrans import plan

    cfg = _tiny_tpu_config(smol_tiny, mesh)
    devices, compiler = plan._target(cfg, "v5e", "v5e:2x2")
    assert compiler.startswith("TPU compiler") and all(d.platform == "tpu" for d in devices)
    trainer, stage = plan._trainer(cfg, devices)
    compiled, _, state, _ = plan._compile(trainer, stage)
    assert compiled.as_text().count("tpu_custom_call") >= 2  # the Pallas flash kernels, forward and backward
    assert plan.attention_kernel(compiled.as_text()) == "Pallas TPU flash attention"
    import jax

    rules, got = trainer.state_shardings(), compiled.output_shardings[0]
    for want, have, leaf in zip(jax.tree.leaves(rules), jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
        assert have.is_equivalent_to(want, leaf.ndim), (want, have)
    result = plan.plan(cfg, "v5e", topology="v5e:2x2")
    assert result["per_device_bytes"]["peak"] > 0
    assert result["peak_over_floor"] <= 1.5, result


@needs_libtpu
def test_tpu_plan_errors_come_before_compiling(smol_tiny, monkeypatch):
    from jaxtrans import plan, topology
    from jaxtrans.errors import JaxtransError

    cfg = _tiny_tpu_config(smol_tiny, (1, 4, 1))
    with pytest.raises(JaxtransError, match="unknown TPU topology 'v5e:3x3'"):
        plan.plan(cfg, "v5e", topology="v5e:3x3")
    with pytest.raises(JaxtransError, match="topology v4:2x2x1 is not a v5e slice"):
        plan.plan(cfg, "v5e", topology="v4:2x2x1")
    cfg.mesh.fsdp = 8
    with pytest.raises(JaxtransError, match="needs 8 devices but 4 are available"):
        plan.plan(cfg, "v5e", topology="v5e:2x2")
    monkeypatch.setattr(topology, "has_libtpu", lambda: False)
    with pytest.raises(JaxtransError, match=r"compiling for TPU needs libtpu: pip install libtpu==0.0.42.1"):
        plan.plan(cfg, "v5e", topology="v5e:2x2")
    cfg.mesh.fsdp = 1
    devices, compiler = plan._target(cfg, "v5e", None)  # no topology asked for: the local compiler, labelled
    assert devices is None and "an estimate, not the TPU's" in compiler and "pip install libtpu" in compiler


@needs_libtpu
def test_the_frozen_models_decode_compiles_for_a_v5e_slice_with_its_kv_cache(smol_tiny):
    """Recovery-KD generation planned like the step: the TPU compiler's peak holds the weights and a KV cache
    that grows with the batch and the lengths."""
    from jaxtrans import plan

    cfg = _tiny_tpu_config(smol_tiny, (1, 4, 1))
    cfg.generation.max_new_tokens = 64
    small = plan.plan_generation(cfg, "v5e", "v5e:2x2", prompt_len=64)
    cfg.generation.batch_size *= 4
    big = plan.plan_generation(cfg, "v5e", "v5e:2x2", prompt_len=256)
    assert small["compiler"].startswith("TPU compiler") and small["fits"]
    assert big["kv_cache_bytes"] == small["kv_cache_bytes"] * 4 * (256 + 64) // (64 + 64)
    assert big["peak"] - small["peak"] >= 0.5 * (big["kv_cache_bytes"] - small["kv_cache_bytes"]) / 4  # per device
    assert small["peak"] >= small["weights_per_device"]
