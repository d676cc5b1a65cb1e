"""``--dry_run``: will it fit, and how fast? Compile the train step from shapes alone, for the real target.

No weight is read. The model's ``config.json`` comes from the local path, from
a table of well-known hub models (so a 7B or 70B plan works offline), or from
the hub (config only). The step is lowered for the configured mesh and the
largest train stage's batch and compiled: for a TPU (``--device v5e`` ...)
by the TPU compiler itself on an abstract slice (``jaxtrans.topology``, needs
libtpu), for an NVIDIA GPU (``--device H100``, ``RTX4090`` ...) by the XLA GPU
compiler on abstract GPUs (``jaxtrans.gpu``, needs the CUDA plugin); without
them by the local compiler, labelled an estimate. It prints the attention
kernel the compiler emitted, the compiled per-device peak
beside the analytic memory floor (``jaxtrans.costs``) and the largest buffers
of the compiled step, and FLOPs counted from the shapes (XLA's own count sees
a scanned layer once) with the tokens/s they give at an MFU.
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

from jaxtrans import costs, gpu, platforms, sharding
from jaxtrans import topology as tpu
from jaxtrans.devices import DEVICES, GiB
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama
from jaxtrans.model.config import ModelConfig, from_hf_config

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
    "meta-llama/Meta-Llama-3-8B": {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 8192,
                                   "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
                                   "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8},
}  # fmt: skip
PRESETS["meta-llama/Meta-Llama-3-8B-Instruct"] = PRESETS["meta-llama/Meta-Llama-3-8B"]
PRESETS["meta-llama/Llama-3.1-8B"] = {**PRESETS["meta-llama/Meta-Llama-3-8B"], "max_position_embeddings": 131072,
                                      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 8192}}  # fmt: skip
PRESETS["meta-llama/Llama-3.1-8B-Instruct"] = PRESETS["meta-llama/Llama-3.1-8B"]
PRESETS["meta-llama/Llama-3.1-70B-Instruct"] = {**PRESETS["meta-llama/Llama-3.1-8B"], "hidden_size": 8192,
                                                "intermediate_size": 28672, "num_hidden_layers": 80,
                                                "num_attention_heads": 64, "num_key_value_heads": 8}  # fmt: skip
_QWEN3 = {"model_type": "qwen3", "vocab_size": 151936, "head_dim": 128, "num_attention_heads": 32,
          "num_key_value_heads": 8, "num_hidden_layers": 36, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
          "rope_theta": 1_000_000.0, "attention_bias": False, "hidden_act": "silu"}  # fmt: skip
PRESETS["Qwen/Qwen3-8B"] = {**_QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False}
PRESETS["Qwen/Qwen3-4B"] = {**_QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "tie_word_embeddings": True}
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


def _trainer(cfg: Any, devices: list | None = None) -> tuple[Any, Any]:
    """The Trainer of the config's largest train step (rows x length), built from shapes; and that stage."""
    from jaxtrans.curriculum.train import check_batch, optim_config
    from jaxtrans.pipeline import lora_config
    from jaxtrans.train.step import Trainer

    m = cfg.model
    attn = m.attention
    if devices is None and attn in ("auto", "dot_product", "flash", "triton"):  # an estimate on the local compiler:
        attn = "chunked"  # other backends' fused kernels do not compile here; "chunked" has their memory profile
    mcfg = model_config(m.path, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention=attn,
                        loss_chunk=m.get("loss_chunk", 0), mlp_chunk=m.get("mlp_chunk", 0))  # fmt: skip
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    platforms.check_host_memory(list(mesh.devices.flat), m.remat)
    for name in cfg.curriculum:
        if cfg.stages[name].kind == "train":
            check_batch(name, cfg.stages[name], mesh)
    stages = [cfg.stages[n] for n in cfg.curriculum]
    new_tokens = sum(s.new_tokens for s in stages if s.kind == "vocab")
    multiple = max([s.pad_to_multiple for s in stages if s.kind == "vocab"] or [0])
    padding = (-(mcfg.vocab_size + new_tokens)) % multiple if multiple and new_tokens else 0
    adapters = llama.Adapters(lora=lora_config(cfg), quantized=cfg.lora.quantized,
                              quantized_head=cfg.lora.get("quantize_head", False), new_tokens=new_tokens + padding,
                              padding_rows=padding)  # fmt: skip
    biggest = max((s for s in stages if s.kind == "train"), key=lambda s: s.seq_len * s.batch_size)
    trainer = Trainer(mcfg, adapters, optim_config(biggest), mesh, modules_to_save=tuple(cfg.lora.modules_to_save),
                      host_embedding=cfg.lora.get("host_embedding", False))  # fmt: skip
    return trainer, biggest


def _per_device(tree: Any) -> int:
    """Bytes of a tree of sharded abstract arrays that one device holds."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        total += int(jnp.dtype(leaf.dtype).itemsize) * math.prod(leaf.sharding.shard_shape(leaf.shape))
    return total


def _compile(trainer: Any, stage: Any) -> tuple[Any, Any, Any, float]:
    """(compiled step, abstract base, abstract state, compile seconds) for one batch of ``stage``."""
    from jaxtrans.train import host_embedding

    abstract = trainer.device_base(nn.meta.unbox(llama.abstract_params(trainer.cfg, trainer.adapters)))
    base = _abstract(abstract, trainer.base_shardings())
    state = _abstract(jax.eval_shape(lambda b: trainer.init_state(b), base), trainer.state_shardings())
    shape = (stage.get("accum", 1), stage.batch_size, stage.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=trainer.batch_sharding()) for k in trainer.batch_keys()}
    if host_embedding.BATCH_KEY in batch:  # the rows gathered on the host, in the compute dtype
        rows = (*shape, trainer.cfg.hidden_size)
        batch[host_embedding.BATCH_KEY] = jax.ShapeDtypeStruct(
            rows, trainer.cfg.dtype, sharding=trainer.batch_sharding()
        )
    t0 = time.perf_counter()
    compiled = trainer.compiled_step(base).lower(state, base, batch).compile()
    return compiled, base, state, time.perf_counter() - t0


def _target(cfg: Any, device: str, topology: str | None, description: str | None = None) -> tuple[list | None, str]:
    """(abstract devices or None for the local backend, what compiles the step, in words).

    ``description``: a ``GpuTargetConfigProto`` text file that replaces the GPU's own (a card the table lacks).
    """
    if device not in DEVICES:
        raise JaxtransError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    if description and not gpu.is_gpu(device):
        raise JaxtransError(f"--gpu_description is for GPU devices; {device} is not one (use --device H100 ...)")
    if gpu.is_gpu(device):
        text = gpu.read_description(description) if description else None
        if topology is None and not gpu.has_plugin():
            print(f"jaxtrans: the XLA GPU compiler needs the CUDA plugin (pip install '{gpu.PLUGIN}', no GPU needed); "
                  "planning with the local compiler instead")  # fmt: skip
            return None, (f"{jax.default_backend().upper()} compiler: an estimate for {device}, not the GPU's "
                          f"(for the XLA GPU compiler: pip install '{gpu.PLUGIN}')")  # fmt: skip
        topology = topology or gpu.default_topology((cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
        gpu.check(device, topology)
        name = "described in " + description if description else DEVICES[device].gpu.name
        return gpu.devices(device, topology, text), f"XLA GPU compiler (CUDA plugin, abstract {topology} of {name})"
    if not tpu.is_tpu(device):
        if topology:
            raise JaxtransError(f"--topology is for TPU and GPU devices; {device} compiles with the local backend")
        return None, f"{jax.default_backend().upper()} compiler (an estimate for {device}, not its own compiler)"
    if topology is None and not tpu.has_libtpu():
        return None, (f"{jax.default_backend().upper()} compiler: an estimate, not the TPU's (for the TPU compiler: "
                      f"pip install {tpu.LIBTPU})")  # fmt: skip
    topology = topology or tpu.default_topology(device, (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    tpu.check(device, topology)
    return tpu.devices(topology), f"TPU compiler (libtpu, abstract {topology} slice)"


DUMP_ENV = "JAXTRANS_PLAN_DUMP"  # where --dry_run asks XLA to write its buffer reports (set before jax starts)


def dump_flags(directory: str) -> str:
    """XLA flags that write the optimized step's memory-usage report (largest live buffers) into ``directory``."""
    return f"--xla_dump_to={directory} --xla_dump_hlo_pass_re=NONE --xla_dump_hlo_module_re=.*step_fn.*"


def largest_buffers(directory: str | None, n: int = 8) -> list[tuple[int, str]]:
    """(bytes, shapes) of the ``n`` largest device-memory buffers in the newest step report XLA wrote to
    ``directory`` (host-memory buffers, offloaded activations, are counted apart: ``host_bytes``)."""
    if not directory or not os.path.isdir(directory):
        return []
    reports = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith("memory-usage-report.txt")]
    if not reports:
        return []
    rows, device_space = [], True
    with open(max(reports, key=os.path.getmtime)) as f:
        for line in f:
            if line.startswith("Memory Space:"):  # device memory first (color 0), then host memory (offloads)
                device_space = "color=0" in line
            parts = [p.strip() for p in line.split(";")]
            if not device_space:
                continue
            if len(parts) == 5 and parts[1][:1].isdigit():
                rows.append((_bytes(parts[1]), parts[4][:160]))
    return sorted(rows, key=lambda r: -r[0])[:n]


def _bytes(text: str) -> int:
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for unit in ("KiB", "MiB", "GiB", "B"):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    return 0


# the custom calls each attention kernel compiles to (the first found names the kernel)
KERNELS = (("__cudnn$fmha", "cuDNN flash attention"), ("mha_forward", "Pallas Triton flash attention"),
           ("tpu_custom_call", "Pallas TPU flash attention"))  # fmt: skip


def attention_kernel(hlo_text: str) -> str:
    """Which attention kernel a compiled step runs, read from its optimized HLO."""
    for marker, name in KERNELS:
        if marker in hlo_text:
            return name
    return "XLA attention (no fused kernel)"


def plan(
    cfg: Any, device: str = "H100", mfu: float = 0.4, topology: str | None = None, description: str | None = None
) -> dict[str, Any]:
    """Compile the configured train step from shapes; returns (and prints) the numbers."""
    from jaxtrans.pipeline import check

    check(cfg)
    devices, compiler = _target(cfg, device, topology, description)
    trainer, biggest = _trainer(cfg, devices)
    try:
        compiled, base, state, compile_s = _compile(trainer, biggest)
    except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a step that cannot fit its chip's memory
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise JaxtransError(
            f"does NOT fit: the {compiler} refuses the step on a {device} chip ({str(e).splitlines()[0][:160]}); "
            "shard over more chips (mesh.fsdp), quantise the base (lora.quantized), or shorten the rows"
        ) from None
    mem = compiled.memory_analysis()
    host = _host_peak(mem) + host_table_bytes(trainer)
    cost = compiled.cost_analysis()  # None from the deviceless GPU compiler
    cost = (cost[0] if isinstance(cost, list) and cost else cost) or {}
    xla_flops = float(cost.get("flops", 0.0))
    peak = _device_peak(mem)
    accum, rows, seq = biggest.get("accum", 1), biggest.batch_size, biggest.seq_len
    flops = costs.step_flops(trainer.cfg, trainer.adapters, accum * rows * seq, seq, tuple(cfg.lora.modules_to_save))
    trainable = _per_device(state.trainable)
    floor = costs.memory_floor(trainer.cfg, trainer.adapters, rows // sharding.data_parallel_size(trainer.mesh), seq,
                               _per_device(base), _per_device(state), trainable)  # fmt: skip
    spec = DEVICES[device]
    step_s = flops.total / (trainer.mesh.size * spec.peak_flops * mfu)
    adapters, lc = trainer.adapters, trainer.adapters.lora
    result = {
        "model": cfg.model.path, "params": trainer.cfg.num_params, "mesh": dict(trainer.mesh.shape),
        "devices": trainer.mesh.size, "compiler": compiler, "attention": trainer.cfg.attention,
        "attention_kernel": attention_kernel(compiled.as_text()),
        "adapters": {"lora_rank": lc.rank, "targets": list(lc.targets), "quantized": adapters.quantized,
                     "quantized_head": adapters.quantized_head,
                     "new_tokens": adapters.new_tokens},
        "stage": [n for n in cfg.curriculum if cfg.stages[n] is biggest][0],
        "batch": {"accum": accum, "batch": rows, "seq_len": seq},
        "per_device_bytes": {"frozen_base": _per_device(base), "trainable_and_optimizer": _per_device(state),
                             "arguments": mem.argument_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
                             "peak": peak},
        "host_bytes": host, "host_table_bytes": host_table_bytes(trainer), "host_memory": spec.host_memory,
        "host_fits": host <= spec.host_memory,
        "floor_bytes": floor, "floor_total": sum(floor.values()), "peak_over_floor": peak / sum(floor.values()),
        "flops_per_step": {"forward": flops.forward, "backward": flops.backward, "recompute": flops.recompute,
                           "total": flops.total},
        "xla_flops_per_step_per_device": xla_flops, "compile_seconds": round(compile_s, 1), "device": device,
        "fits": peak <= spec.usable_memory and host <= spec.host_memory,
        "tokens_per_second_at_mfu": {"mfu": mfu, "tokens_per_s": accum * rows * seq / step_s, "step_s": step_s},
        "largest_buffers": largest_buffers(os.environ.get(DUMP_ENV)),
    }  # fmt: skip
    _print(result, spec.usable_memory)
    return result


def _device_peak(mem: Any) -> int:
    """Bytes a compiled program holds in device memory at once: arguments, outputs not aliased to them, temporaries."""
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes)


def host_table_bytes(trainer: Any) -> int:
    """Host bytes of the frozen embedding table with ``lora.host_embedding`` (each process holds it whole)."""
    if not trainer.host_embedding:
        return 0
    c = trainer.cfg
    return c.vocab_size * c.hidden_size * jnp.dtype(c.param_dtype).itemsize


def _host_peak(mem: Any) -> int:
    """Bytes a compiled step keeps in host memory (offloaded activations): the host side of its memory analysis."""
    return int(mem.host_argument_size_in_bytes + mem.host_output_size_in_bytes - mem.host_alias_size_in_bytes
               + mem.host_temp_size_in_bytes)  # fmt: skip


def plan_generation(
    cfg: Any, device: str = "H100", topology: str | None = None, prompt_len: int = 512, description: str | None = None
) -> dict:
    """Compile the frozen model's batched decode (recovery-KD answers, evaluation) from shapes, for the same
    target as :func:`plan`: ``generation.batch_size`` prompts of ``prompt_len`` tokens plus
    ``generation.max_new_tokens``; the KV cache is the part that grows with them."""
    from jaxtrans.infer.generate import SamplingConfig, _compiled_decode

    devices, compiler = _target(cfg, device, topology, description)
    trainer, _ = _trainer(cfg, devices)
    gen, mcfg, mesh = cfg.generation, trainer.cfg, trainer.mesh
    frozen = llama.Adapters(quantized=trainer.adapters.quantized, quantized_head=trainer.adapters.quantized_head)
    abstract = llama.abstract_params(mcfg, trainer.adapters)  # generation keeps every table on the device
    base = _abstract(nn.meta.unbox(abstract), sharding.logical_to_sharding(abstract, mesh, trainer.rules))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ids = jax.ShapeDtypeStruct((gen.batch_size, prompt_len), jnp.int32, sharding=replicated)
    scalars = (jax.ShapeDtypeStruct((1,), jnp.int32, sharding=replicated),
               jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated))  # fmt: skip
    sampling = SamplingConfig(max_new_tokens=gen.max_new_tokens)
    t0 = time.perf_counter()
    try:
        lowered = _compiled_decode().lower(mcfg, {"params": base}, ids, ids, *scalars, sampling=sampling,
                                           adapters=frozen, scan_layers=True)  # fmt: skip
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise JaxtransError(
            f"generation does NOT fit: the {compiler} refuses a decode of {gen.batch_size} x ({prompt_len} + "
            f"{gen.max_new_tokens}) tokens on a {device} chip; lower generation.batch_size or shard (mesh.fsdp)"
        ) from None
    mem = compiled.memory_analysis()
    peak = _device_peak(mem)
    kv = 2 * mcfg.num_layers * gen.batch_size * (prompt_len + gen.max_new_tokens) * mcfg.num_kv_heads * mcfg.head_dim
    result = {
        "compiler": compiler, "batch": gen.batch_size, "prompt_len": prompt_len, "new_tokens": gen.max_new_tokens,
        "weights_per_device": _per_device(base), "temporaries": mem.temp_size_in_bytes, "peak": peak,
        "kv_cache_bytes": kv * jnp.dtype(mcfg.dtype).itemsize, "compile_seconds": round(time.perf_counter() - t0, 1),
        "fits": peak <= DEVICES[device].usable_memory,
    }  # fmt: skip
    print(f"  generation (frozen model: recovery-KD answers, evaluation), {compiler}: {gen.batch_size} prompts x "
          f"({prompt_len} + {gen.max_new_tokens}) tokens: peak {peak / GiB:.2f} GiB per device (weights "
          f"{result['weights_per_device'] / GiB:.2f}, KV cache {result['kv_cache_bytes'] / GiB:.2f} in all); "
          f"{'fits' if result['fits'] else 'does NOT fit'}; compiled in {result['compile_seconds']} s")  # fmt: skip
    return result


def _print(r: dict[str, Any], capacity: int) -> None:
    b, f = r["per_device_bytes"], r["flops_per_step"]
    print(f"plan: {r['model']} ({r['params'] / 1e9:.2f}B parameters) on mesh {r['mesh']} ({r['devices']} devices)")
    print(f"  compiled by: {r['compiler']}; attention {r['attention']}: {r['attention_kernel']}")
    print(f"  adapters: LoRA r={r['adapters']['lora_rank']} on {','.join(r['adapters']['targets'])}"
          f"{', NF4 base' if r['adapters']['quantized'] else ''}, {r['adapters']['new_tokens']} new rows")  # fmt: skip
    print(f"  step: stage {r['stage']!r}, batch {r['batch']}; compiled in {r['compile_seconds']} s")
    for k, v in b.items():
        print(f"  per device {k:24s} {v / GiB:8.2f} GiB")
    print(f"  analytic floor per device {r['floor_total'] / GiB:.2f} GiB (peak / floor {r['peak_over_floor']:.2f}):")
    for k, v in r["floor_bytes"].items():
        print(f"    {k:24s} {v / GiB:8.2f} GiB")
    xla = r["xla_flops_per_step_per_device"]
    xla_text = (f"XLA's count per device {xla / 1e12:.2f} TFLOP sees a scanned layer once" if xla
                else "this compiler gives no FLOP count of its own")  # fmt: skip
    print(
        f"  FLOPs per step (all devices, from the shapes): {f['total'] / 1e12:.2f} TFLOP (forward "
        f"{f['forward'] / 1e12:.2f}, backward {f['backward'] / 1e12:.2f}, remat {f['recompute'] / 1e12:.2f}); "
        + xla_text
    )
    t = r["tokens_per_second_at_mfu"]
    print(
        f"  at {t['mfu']:.0%} MFU on {r['device']}: {t['tokens_per_s']:.0f} tokens/s (global), {t['step_s']:.2f} s/step"
    )
    if r["largest_buffers"]:
        print("  largest buffers of the compiled step (XLA's memory-usage report):")
        for size, shapes in r["largest_buffers"]:
            print(f"    {size / GiB:8.3f} GiB  {shapes}")
    if r["host_bytes"]:
        table = r["host_table_bytes"]
        parts = [f"offloaded activations {(r['host_bytes'] - table) / GiB:.2f} GiB"] if r["host_bytes"] > table else []
        parts += [f"embedding table {table / GiB:.2f} GiB"] if table else []
        print(f"  host memory per device {r['host_bytes'] / GiB:8.2f} GiB ({', '.join(parts)}; a usual "
              f"{r['device']} machine has {r['host_memory'] / GiB:.0f} GiB per device"
              f"{'' if r['host_fits'] else ': does NOT fit'})")  # fmt: skip
    verdict = "fits" if r["fits"] else "does NOT fit"
    print(f"  {verdict} in {r['device']} memory ({capacity / GiB:.1f} GiB usable per device; peak "
          f"{b['peak'] / GiB:.2f} GiB)")  # fmt: skip
