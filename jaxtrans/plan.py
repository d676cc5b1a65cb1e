"""``--dry_run``: will it fit? Compile the train step from shapes alone and read XLA's own numbers.

No weight is read. The model's ``config.json`` comes from the local path, from
a table of well-known hub models (so a 7B or 70B plan works offline), or from
the hub (config only). The step is lowered for the configured mesh and the
largest train stage's batch, compiled, and XLA's memory analysis (per device:
arguments, outputs, temporaries) and cost analysis (FLOPs) are printed with
the tokens/s the step would reach at a given MFU on a named device, and
whether it fits that device's memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrans import sharding
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig, from_hf_config
from jaxtrans.model.lora import LoraConfig

GiB = 1 << 30

# Memory per device (bytes) and dense bf16 peak FLOP/s of the devices people ask about.
DEVICES = {
    "v4": (32 * GiB, 275e12),
    "v5e": (16 * GiB, 197e12),
    "v5p": (95 * GiB, 459e12),
    "v6e": (32 * GiB, 918e12),
    "A100-40GB": (40 * GiB, 312e12),
    "A100-80GB": (80 * GiB, 312e12),
    "H100": (80 * GiB, 989e12),
    "H200": (141 * GiB, 989e12),
    "cpu": (24 * GiB, 1e11),
}

# config.json of public models, for offline planning (architecture numbers only)
_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu"}  # fmt: skip
PRESETS = {
    "meta-llama/Llama-2-7b-hf": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "meta-llama/Llama-2-13b-hf": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824,
                                  "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40},
    "meta-llama/Llama-2-70b-hf": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672,
                                  "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
}  # fmt: skip
for _name in list(PRESETS):
    PRESETS[_name.replace("-hf", "-chat-hf")] = PRESETS[_name]


def model_config(path: str, **execution: Any) -> ModelConfig:
    """The architecture of ``path`` without reading weights."""
    if path in PRESETS:
        return from_hf_config(PRESETS[path], **execution)
    if path.startswith("embedded:") or path.endswith(".gguf") or os.path.isdir(os.path.expanduser(path)):
        from jaxtrans.pretrained import resolve

        return from_hf_config(resolve(path).source().hf_config(), **execution)
    try:
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(path, "config.json")) as f:
            return from_hf_config(json.load(f), **execution)
    except Exception as e:
        raise JaxtransError(
            f"cannot get config.json of {path} ({type(e).__name__}); give a local model directory or one of "
            f"{', '.join(sorted(PRESETS))}"
        ) from None


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def plan(cfg: Any, device: str = "H100", mfu: float = 0.4) -> dict[str, Any]:
    """Compile the configured train step from shapes; returns (and prints) the numbers."""
    from jaxtrans.pipeline import check, check_batches
    from jaxtrans.train.optim import OptimConfig
    from jaxtrans.train.step import BATCH_KEYS, Trainer

    check(cfg)
    if device not in DEVICES:
        raise JaxtransError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    m = cfg.model
    # fused kernels (cuDNN, Pallas) do not compile here; "chunked" has their memory profile in plain XLA
    attn = "chunked" if m.attention in ("dot_product", "flash") else m.attention
    mcfg = model_config(m.path, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention=attn,
                        loss_chunk=m.get("loss_chunk", 0))  # fmt: skip
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    check_batches(cfg, mesh)
    stages = [cfg.stages[n] for n in cfg.curriculum]
    new_tokens = sum(s.new_tokens for s in stages if s.kind == "vocab")
    multiple = max([s.pad_to_multiple for s in stages if s.kind == "vocab"] or [0])
    padding = (-(mcfg.vocab_size + new_tokens)) % multiple if multiple and new_tokens else 0
    lc = LoraConfig.make(cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, cfg.lora.rslora)
    adapters = llama.Adapters(lora=lc, quantized=cfg.lora.quantized, new_tokens=new_tokens + padding,
                              padding_rows=padding)  # fmt: skip
    train = [s for s in stages if s.kind == "train"]
    biggest = max(train, key=lambda s: s.seq_len * s.batch_size)
    trainer = Trainer(mcfg, adapters, OptimConfig(total_steps=biggest.steps), mesh,
                      modules_to_save=tuple(cfg.lora.modules_to_save))  # fmt: skip
    base_sh = trainer.base_shardings()
    base = _abstract(nn.meta.unbox(llama.abstract_params(mcfg, adapters)), base_sh)
    state_sh = trainer.state_shardings()
    abstract_state = jax.eval_shape(lambda b: trainer.init_state(b), base)
    state = _abstract(abstract_state, state_sh)
    accum = biggest.get("accum", 1)
    shape = (accum, biggest.batch_size, biggest.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=trainer.batch_sharding()) for k in BATCH_KEYS}
    t0 = time.perf_counter()
    compiled = trainer.compiled_step(base).lower(state, base, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0))

    def per_device(tree: Any) -> int:
        total = 0
        for leaf in jax.tree.leaves(tree):
            shard = leaf.sharding.shard_shape(leaf.shape)
            total += int(jnp.dtype(leaf.dtype).itemsize) * math.prod(shard)
        return total

    args_b, out_b = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias_b, temp_b = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    peak = args_b + out_b - alias_b + temp_b
    capacity, peak_flops = DEVICES[device]
    tokens = accum * biggest.batch_size * biggest.seq_len
    step_s = flops / (peak_flops * mfu) if flops else float("nan")
    result = {
        "model": m.path,
        "params": mcfg.num_params,
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "adapters": {
            "lora_rank": lc.rank,
            "targets": list(lc.targets),
            "quantized": adapters.quantized,
            "new_tokens": adapters.new_tokens,
        },  # fmt: skip
        "stage": [n for n in cfg.curriculum if cfg.stages[n] is biggest][0],
        "batch": {"accum": accum, "batch": biggest.batch_size, "seq_len": biggest.seq_len},
        "per_device_bytes": {
            "frozen_base": per_device(base),
            "trainable_and_optimizer": per_device(state),
            "arguments": args_b,
            "temporaries": temp_b,
            "peak": peak,
        },
        "flops_per_step_per_device": flops,
        "compile_seconds": round(compile_s, 1),
        "device": device,
        "fits": peak <= capacity,
        "tokens_per_second_at_mfu": {"mfu": mfu, "tokens_per_s": tokens / step_s} if flops else None,
    }
    _print(result, capacity)
    return result


def _print(r: dict[str, Any], capacity: int) -> None:
    b = r["per_device_bytes"]
    print(f"plan: {r['model']} ({r['params'] / 1e9:.2f}B parameters) on mesh {r['mesh']} ({r['devices']} devices)")
    print(f"  adapters: LoRA r={r['adapters']['lora_rank']} on {','.join(r['adapters']['targets'])}"
          f"{', NF4 base' if r['adapters']['quantized'] else ''}, {r['adapters']['new_tokens']} new rows")  # fmt: skip
    print(f"  step: stage {r['stage']!r}, batch {r['batch']}; compiled in {r['compile_seconds']} s")
    for k, v in b.items():
        print(f"  per device {k:24s} {v / GiB:8.2f} GiB")
    print(f"  FLOPs per step per device: {r['flops_per_step_per_device'] / 1e12:.2f} TFLOP")
    if r["tokens_per_second_at_mfu"]:
        t = r["tokens_per_second_at_mfu"]
        print(f"  at {t['mfu']:.0%} MFU on {r['device']}: {t['tokens_per_s']:.0f} tokens/s (global)")
    verdict = "fits" if r["fits"] else "does NOT fit"
    print(f"  {verdict} in {r['device']} memory ({capacity / GiB:.0f} GiB per device; peak {b['peak'] / GiB:.2f} GiB)")
