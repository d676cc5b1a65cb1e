"""The XLA GPU compiler, without a GPU: the train step compiled for abstract H100 and A100 devices (the CUDA
plugin's deviceless topologies), ``auto`` attention as a fused kernel, and refusals before compiling."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import REPO, tiny_hf_model

needs_plugin = pytest.mark.skipif(
    not __import__("jaxtrans.gpu", fromlist=["has_plugin"]).has_plugin(),
    reason="the CUDA plugin is not installed (pip install jax-cuda12-plugin==0.10.2; no GPU needed)",
)
SEQ = 640  # five 128-position blocks; no model dimension (the 49,152 vocabulary included) has a factor 5


@pytest.fixture(scope="module")
def gpu_tiny(tmp_path_factory) -> str:
    """A tiny Llama with 64-wide heads (Triton's tiles want at least 16), speaking SmolLM2's tokenizer."""
    from jaxtrans.pretrained import load_tokenizer, resolve

    tok = load_tokenizer(resolve("embedded:smollm2"))
    _, path = tiny_hf_model(
        tmp_path_factory.mktemp("gpu_tiny"), vocab_size=len(tok), hidden_size=256, intermediate_size=512,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
    )  # fmt: skip
    tok.save_pretrained(path)
    return path


def _config(model_dir: str, mesh: tuple[int, int, int]):
    from jaxtrans.config import load_file

    cfg = load_file(os.path.join(REPO, "tests", "tiny_two_stages.py") + ":" + model_dir).unlock()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
    cfg.model.remat, cfg.model.dtype, cfg.model.param_dtype = "full", "bfloat16", "bfloat16"
    for stage in ("a", "b"):
        cfg.stages[stage].seq_len, cfg.stages[stage].batch_size = SEQ, 4
    return cfg


def _square_arrays(hlo: str, t: int) -> list[str]:
    """Array shapes in an HLO module with two dimensions of length ``t``: a [T, T] mask or score array."""
    shapes = re.findall(r"\b(?:pred|s8|u8|s32|u32|bf16|f16|f32)\[([0-9,]+)\]", hlo)
    return sorted({s for s in shapes if [int(d) for d in s.split(",")].count(t) >= 2})


@needs_plugin
@pytest.mark.parametrize(
    "device, topology, mesh",
    [
        ("H100", "1x1x1", (1, 1, 1)),
        ("A100-80GB", "1x1x1", (1, 1, 1)),
        ("H100", "1x1x4", (1, 4, 1)),
        ("A100-80GB", "1x1x4", (2, 2, 1)),
    ],
)
def test_the_train_step_compiles_for_abstract_gpus_with_flash_attention(gpu_tiny, device, topology, mesh):
    import jax

    from jaxtrans import plan

    cfg = _config(gpu_tiny, mesh)
    assert cfg.model.attention == "auto"
    devices, compiler = plan._target(cfg, device, topology)
    assert compiler.startswith("XLA GPU compiler") and all(d.platform == "gpu" for d in devices)
    trainer, stage = plan._trainer(cfg, devices)
    compiled, _, state, _ = plan._compile(trainer, stage)
    hlo = compiled.as_text()
    assert plan.attention_kernel(hlo) == "Pallas Triton flash attention"
    assert hlo.count("mha_forward") >= 2 and "mha_backward" in hlo  # the forward (twice under remat) and backward
    assert _square_arrays(hlo, SEQ) == []  # packed rows: segment ids, never a [T, T] mask or score array
    rules, got = trainer.state_shardings(), compiled.output_shardings[0]
    for want, have, leaf in zip(jax.tree.leaves(rules), jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
        assert have.is_equivalent_to(want, leaf.ndim), (want, have)
    result = plan.plan(cfg, device, topology=topology)
    assert result["attention_kernel"] == "Pallas Triton flash attention"
    assert 0 < result["per_device_bytes"]["peak"] <= 1.5 * result["floor_total"], result


@needs_plugin
def test_the_reference_attention_is_what_materialises_scores(gpu_tiny):
    """The check above can fail: the reference attention on the same target builds [T, T] arrays."""
    from jaxtrans import plan

    cfg = _config(gpu_tiny, (1, 1, 1))
    cfg.model.attention = "xla"
    trainer, stage = plan._trainer(cfg, plan._target(cfg, "H100", "1x1x1")[0])
    hlo = plan._compile(trainer, stage)[0].as_text()
    assert plan.attention_kernel(hlo) == "XLA attention (no fused kernel)" and _square_arrays(hlo, SEQ)


@needs_plugin
def test_the_frozen_models_decode_compiles_for_an_abstract_gpu(gpu_tiny):
    from jaxtrans import plan

    cfg = _config(gpu_tiny, (1, 1, 1))
    result = plan.plan_generation(cfg, "RTX4090", prompt_len=128)
    assert result["compiler"].startswith("XLA GPU compiler") and result["fits"]
    assert result["peak"] >= result["weights_per_device"]


@needs_plugin
def test_a_host_embedding_table_leaves_the_device_and_its_rows_come_per_batch(tmp_path):
    """``lora.host_embedding`` on an untied model, one abstract H100: the step's arguments lose the table and gain
    the batch's rows (bf16 [1, B, T, D]); the plan counts the table in host memory."""
    from jaxtrans import plan
    from jaxtrans.pretrained import load_tokenizer, resolve

    tok = load_tokenizer(resolve("embedded:smollm2"))
    _, path = tiny_hf_model(
        tmp_path, vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
    )  # fmt: skip
    tok.save_pretrained(path)
    cfg = _config(path, (1, 1, 1))
    on_device = plan.plan(cfg, "H100", topology="1x1x1")
    cfg.lora.host_embedding = True
    hosted = plan.plan(cfg, "H100", topology="1x1x1")
    table, rows = len(tok) * 256 * 2, 4 * SEQ * 256 * 2
    assert hosted["host_table_bytes"] == table and hosted["host_bytes"] >= table
    args = on_device["per_device_bytes"]["arguments"] - hosted["per_device_bytes"]["arguments"]
    unread = 4 * SEQ * 4  # no new rows: the step no longer reads the int32 token ids, and XLA drops them
    assert args in (table - rows, table - rows + unread), (args, table, rows)


def test_gpu_plan_errors_come_before_compiling(gpu_tiny, monkeypatch, tmp_path):
    from jaxtrans import gpu, plan
    from jaxtrans.errors import JaxtransError

    cfg = _config(gpu_tiny, (1, 4, 1))
    with pytest.raises(JaxtransError, match=r"unknown device 'RTX5000x'; known: .*RTX4090"):
        plan.plan(cfg, "RTX5000x")
    with pytest.raises(JaxtransError, match=r"GPU topology '4' is not PARTITIONSxHOSTSxGPUS"):
        plan.plan(cfg, "H100", topology="4")
    bad = tmp_path / "card.txtpb"
    bad.write_text("gpu_device_info { core_count: 1 ")
    with pytest.raises(JaxtransError, match="does not parse as a GpuTargetConfigProto"):
        plan.plan(cfg, "H100", description=str(bad))
    if gpu.has_plugin():
        with pytest.raises(JaxtransError, match="needs 4 devices but 8 are available"):
            plan.plan(cfg, "H100", topology="1x1x8")
        fields = tmp_path / "fields.txtpb"
        fields.write_text(gpu.description_of("H100").replace("core_count", "sm_count"))
        with pytest.raises(JaxtransError, match='refuses the H100 description: .*has no field named "sm_count"'):
            plan.plan(cfg, "H100", topology="1x1x4", description=str(fields))
    monkeypatch.setattr(gpu, "has_plugin", lambda: False)
    with pytest.raises(
        JaxtransError, match=r"compiling for H100 needs the CUDA plugin: pip install 'jax-cuda12-plugin==0.10.2'"
    ):
        plan.plan(cfg, "H100", topology="1x1x4")
    devices, compiler = plan._target(cfg, "H100", None)  # no topology asked for: the local compiler, labelled
    assert devices is None and "an estimate for H100" in compiler and "pip install 'jax-cuda12-plugin" in compiler
