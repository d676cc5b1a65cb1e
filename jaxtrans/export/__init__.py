"""Export to the tools people serve with, and import from PEFT.

* :func:`export_merged`: base + LoRA merged (and new-token rows appended) as a
  HF model directory: sharded safetensors with an index, ``config.json`` with
  the new vocabulary size, the tokenizer, ``generation_config.json``. Padding
  rows (vocabulary rounded up for TPUs) are left out: HF has no use for them.
* :func:`export_peft`: the adapter in PEFT's format (``adapter_config.json`` +
  ``adapter_model.safetensors``); new-token rows as PEFT's
  ``trainable_token_indices`` (the base must be resized to the new vocabulary
  first, as PEFT requires; ``jaxtrans_adapter.json`` records the size).
* :func:`import_peft`: a PEFT LoRA adapter (and trainable-token rows) as our
  ``lora`` / ``new_rows`` trees, checked against the model's shapes.

Both exports write into a temporary directory and rename it at the end, so a
failure leaves nothing behind; an existing directory is refused unless
``overwrite``. Merging onto an NF4 base dequantises it first and warns: the
merged weights carry the 4-bit rounding, as with PEFT's merge on bitsandbytes.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxtrans import stop
from jaxtrans.errors import JaxtransError
from jaxtrans.model import llama, lora, nf4
from jaxtrans.model.config import ModelConfig, to_hf_config
from jaxtrans.staging import staged_dir
from jaxtrans.weights.loader import hf_layout
from jaxtrans.weights.tensors import check_safetensors

_HF_MODULE = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_OUR_PATH = {"q": "attn", "k": "attn", "v": "attn", "o": "attn", "gate": "mlp", "up": "mlp", "down": "mlp"}
ADAPTER_INFO = "jaxtrans_adapter.json"


def _staged(out_dir: str, overwrite: bool) -> Any:
    if os.path.exists(out_dir) and not overwrite:
        raise JaxtransError(f"{out_dir} already exists; choose another path or pass --overwrite")
    return staged_dir(out_dir, prefix=".export-")


def dequantized(params: Any, cfg: ModelConfig) -> Any:
    """Float parameters from a tree whose block kernels may be NF4 (4-bit rounding stays in the values)."""
    flat = traverse_util.flatten_dict(params)
    shapes = traverse_util.flatten_dict(jax.eval_shape(lambda: llama.init_params(cfg)))
    out, done = {}, set()
    for path, leaf in flat.items():
        module = path[:-1]
        if path[-1] in nf4.NF4._fields:
            if module in done:
                continue
            q = nf4.NF4(*(flat[module + (f,)] for f in nf4.NF4._fields))
            shape = shapes[module + ("kernel",)].shape
            if module[0] == "layers":  # stacked: one NF4 tensor per layer
                out[module + ("kernel",)] = jax.vmap(lambda x, s=shape: nf4.dequantize(x, s[1:], jnp.float32))(q)
            else:  # the LM head (lora.quantize_head)
                out[module + ("kernel",)] = nf4.dequantize(q, shape, jnp.float32)
            done.add(module)
        else:
            out[path] = leaf
    return traverse_util.unflatten_dict(out)


def merged_params(
    cfg: ModelConfig, base: Any, trainable: dict[str, Any], adapters: llama.Adapters
) -> tuple[ModelConfig, Any]:
    """(config with the new vocabulary size, float32 parameters with LoRA merged and new rows appended)."""
    import dataclasses

    if adapters.quantized or adapters.quantized_head:
        warnings.warn(
            "merging LoRA into a 4-bit (NF4) base: the merged weights carry the 4-bit rounding of the base, "
            "so they differ slightly from the unquantised model plus adapter (as with PEFT's merge on bitsandbytes)",
            stacklevel=2,
        )
        base = dequantized(base, cfg)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(base))
    if "base" in trainable:  # modules_to_save: fully trained copies replace the base ones
        params.update(jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(trainable["base"])))
    if "lora" in trainable and adapters.lora is not None:
        params = jax.tree.map(np.asarray, lora.merge(params, jax.device_get(trainable["lora"]), adapters.lora))
    n_new = adapters.new_tokens - adapters.padding_rows
    if n_new > 0:
        rows = jax.device_get(trainable["new_rows"])
        params["embedding"] = np.concatenate([params["embedding"], np.asarray(rows["embedding"])[:n_new]], axis=0)
        if not cfg.tie_embeddings:
            head = np.asarray(rows["head"])[:, :n_new]
            params["lm_head"] = {"kernel": np.concatenate([params["lm_head"]["kernel"], head], axis=1)}
    return dataclasses.replace(cfg, vocab_size=cfg.vocab_size + max(n_new, 0)), params


def _hf_tensors(cfg: ModelConfig, params: Any, dtype: np.dtype) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, entry in hf_layout(cfg).items():
        w = np.asarray(flat[path])
        if entry.stacked:
            for i in range(cfg.num_layers):
                out[entry.template.format(i)] = np.ascontiguousarray(entry.to_hf(w[i]).astype(dtype))
        else:
            out[entry.template] = np.ascontiguousarray(entry.to_hf(w).astype(dtype))
    return out


def _save_sharded(tensors: dict[str, np.ndarray], out: str, max_shard_bytes: int) -> None:
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    stop.check()
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        stop.check()  # SIGTERM: between files (the staging folder is removed)
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out, fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)


def export_merged(
    out_dir: str,
    cfg: ModelConfig,
    base: Any,
    trainable: dict[str, Any],
    adapters: llama.Adapters,
    tokenizer: Any = None,
    dtype: str = "float32",
    max_shard_bytes: int = 5 << 30,
    overwrite: bool = False,
    vocab_record: dict | None = None,
) -> str:
    """Write the merged model as a HF directory that ``AutoModelForCausalLM.from_pretrained`` loads.

    ``vocab_record`` (the extended tokenizer's ``jaxtrans_vocab.json``) is kept
    beside it, so the resize and its row initialisation can be reproduced.
    """
    if tokenizer is not None and len(tokenizer) != cfg.vocab_size + adapters.new_tokens - adapters.padding_rows:
        raise JaxtransError(
            f"the tokenizer has {len(tokenizer)} tokens but the model {cfg.vocab_size} + "
            f"{adapters.new_tokens - adapters.padding_rows} new rows; export with the tokenizer the adapters were "
            "trained with"
        )
    with _staged(out_dir, overwrite) as tmp:
        new_cfg, params = merged_params(cfg, base, trainable, adapters)
        _save_sharded(_hf_tensors(new_cfg, params, np.dtype(jnp.dtype(dtype))), tmp, max_shard_bytes)
        hf_cfg = to_hf_config(new_cfg)
        hf_cfg["torch_dtype"] = dtype
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            from jaxtrans.data.template import stop_token_ids

            hf_cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
            gen = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": stop_token_ids(tokenizer)}
            if tokenizer.pad_token_id is not None:
                gen["pad_token_id"] = tokenizer.pad_token_id
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(gen, f, indent=2)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
        _write_vocab_record(tmp, vocab_record)
    return out_dir


def _write_vocab_record(out: str, record: dict | None) -> None:
    if record is not None:
        from jaxtrans.vocab.extend import REPORT

        with open(os.path.join(out, REPORT), "w") as f:
            json.dump(record, f, ensure_ascii=False, indent=1)


def _peft_prefix(layer: int, name: str) -> str:
    return f"base_model.model.model.layers.{layer}.{_HF_MODULE[name]}"


_PEFT_MODULE_KEY = {
    "embed_tokens": "base_model.model.model.embed_tokens.weight",
    "lm_head": "base_model.model.lm_head.weight",
}


def _peft_modules(cfg: ModelConfig, adapters: llama.Adapters, trainable: dict[str, Any]) -> dict[str, np.ndarray]:
    """Fully trained tensors (``modules_to_save``) as PEFT's ``modules_to_save`` weights, [rows, D] in HF layout.

    A module that is saved whole carries the new-token rows too (PEFT copies the resized module), so those
    rows are not also trainable tokens. With tied embeddings the trained embedding is also the LM head, as in
    jaxtrans' forward pass, so it is saved for ``lm_head`` as well.
    """
    base = jax.device_get(trainable.get("base", {}))
    unsupported = sorted(set(base) - {"embedding", "lm_head"})
    if unsupported:
        raise JaxtransError(
            f"modules_to_save {unsupported} have no PEFT form here (PEFT export takes embedding and lm_head); "
            "export the merged model instead (export_merged)"
        )
    n_new = adapters.new_tokens - adapters.padding_rows
    rows = jax.device_get(trainable.get("new_rows", {}))
    out: dict[str, np.ndarray] = {}
    if "embedding" in base:
        emb = np.asarray(base["embedding"], np.float32)
        if n_new:
            emb = np.concatenate([emb, np.asarray(rows["embedding"], np.float32)[:n_new]])
        out["embed_tokens"] = emb
        if cfg.tie_embeddings:
            out["lm_head"] = emb
    if "lm_head" in base and not cfg.tie_embeddings:
        head = np.asarray(base["lm_head"]["kernel"], np.float32).T
        if n_new:
            head = np.concatenate([head, np.asarray(rows["head"], np.float32)[:, :n_new].T])
        out["lm_head"] = head
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _peft_lora_tensors(cfg: ModelConfig, lc: lora.LoraConfig, trained: Any) -> dict[str, np.ndarray]:
    """PEFT's per-layer ``lora_A`` [r, in] / ``lora_B`` [out, r] from our stacked A [L, *in, r] / B [L, r, *out]."""
    tensors = {}
    flat = traverse_util.flatten_dict(jax.device_get(trained))
    for name in lc.targets:
        a = np.asarray(flat[("layers", _OUR_PATH[name], name, "a")], np.float32)
        b = np.asarray(flat[("layers", _OUR_PATH[name], name, "b")], np.float32)
        for i in range(cfg.num_layers):
            tensors[f"{_peft_prefix(i, name)}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, lc.rank).T)
            tensors[f"{_peft_prefix(i, name)}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(lc.rank, -1).T)
    return tensors


def _peft_token_tensors(
    cfg: ModelConfig, n_new: int, trainable: dict[str, Any], modules: dict, tensors: dict[str, np.ndarray]
) -> dict[str, list[int]] | None:
    """New-token rows as PEFT ``trainable_tokens`` deltas (added to ``tensors``); their ids, or None.

    A module trained whole (``modules_to_save``) already holds its new rows.
    """
    if n_new <= 0:
        return None
    token_ids = list(range(cfg.vocab_size, cfg.vocab_size + n_new))
    rows = jax.device_get(trainable["new_rows"])
    out = {}
    if "embed_tokens" not in modules:
        emb = np.asarray(rows["embedding"], np.float32)[:n_new]
        tensors["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"] = emb
        out["embed_tokens"] = token_ids
    if not cfg.tie_embeddings and "lm_head" not in modules:
        head = np.asarray(rows["head"], np.float32)[:, :n_new].T
        tensors["base_model.model.lm_head.token_adapter.trainable_tokens_delta"] = np.ascontiguousarray(head)
        out["lm_head"] = token_ids
    return out or None


def _peft_config(
    lc: lora.LoraConfig | None, base_model_name: str, modules: list[str], trainable_tokens: dict | None
) -> dict[str, Any]:
    """``adapter_config.json``: LoRA settings, whole modules, trainable token ids."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name or None,
        "r": lc.rank if lc else 8,
        "lora_alpha": lc.alpha if lc else 8,
        "lora_dropout": lc.dropout if lc else 0.0,
        "use_rslora": lc.rslora if lc else False,
        "target_modules": sorted(_HF_MODULE[t].split(".")[-1] for t in lc.targets) if lc else [],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": modules or None,
        "trainable_token_indices": trainable_tokens,
    }


def export_peft(
    out_dir: str,
    cfg: ModelConfig,
    trainable: dict[str, Any],
    adapters: llama.Adapters,
    base_model_name: str = "",
    overwrite: bool = False,
    tokenizer: Any = None,
    tags: Any = None,
    vocab_record: dict | None = None,
) -> str:
    """Write the adapter so that ``PeftModel.from_pretrained(base, out_dir)`` loads it.

    ``tokenizer`` (the extended one, when the vocabulary grew) is saved beside
    it; ``tags`` (TCOT tags) go to ``jaxtrans_adapter.json`` for the chat tool;
    ``vocab_record`` (``jaxtrans_vocab.json``) is kept beside it and its
    summary (sizes, init method) goes to ``jaxtrans_adapter.json``.
    """
    from safetensors.numpy import save_file

    if adapters.lora is None and adapters.new_tokens == 0 and not trainable.get("base"):
        raise JaxtransError("nothing to export: the run has no LoRA adapters, new-token rows or modules_to_save")
    with _staged(out_dir, overwrite) as tmp:
        lc = adapters.lora
        tensors = _peft_lora_tensors(cfg, lc, trainable["lora"]) if lc is not None else {}
        modules = _peft_modules(cfg, adapters, trainable)
        for module, weight in modules.items():
            tensors[_PEFT_MODULE_KEY[module]] = weight
        n_new = adapters.new_tokens - adapters.padding_rows
        trainable_tokens = _peft_token_tensors(cfg, n_new, trainable, modules, tensors)
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        config = _peft_config(lc, base_model_name, sorted(modules), trainable_tokens)
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        info: dict[str, Any] = {"base_vocab_size": cfg.vocab_size, "vocab_size": cfg.vocab_size + n_new}
        if tags is not None:
            info["tags"] = {"english": tags.english, "response": tags.response, "target": tags.target}
        if vocab_record is not None:
            info["vocab"] = {k: v for k, v in vocab_record.items() if k != "entries"}
        with open(os.path.join(tmp, ADAPTER_INFO), "w") as f:
            json.dump(info, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_vocab_record(tmp, vocab_record)
    return out_dir


def _import_lora(adapter_dir: str, cfg: ModelConfig, adapters: llama.Adapters, tensors: dict) -> dict[str, Any]:
    """Our stacked ``lora`` tree from PEFT's per-layer tensors, each checked against this model's shapes."""
    abstract = traverse_util.flatten_dict(jax.eval_shape(lambda: llama.init_trainable(cfg, adapters)).get("lora", {}))
    flat: dict[tuple, np.ndarray] = {}
    for path, leaf in abstract.items():
        name, ab = path[2], path[3]
        per_layer = leaf.shape[1:]
        stack = []
        for i in range(cfg.num_layers):
            key = f"{_peft_prefix(i, name)}.lora_{ab.upper()}.weight"
            alt = key.replace(".weight", ".default.weight")
            w = tensors.get(key, tensors.get(alt))
            if w is None:
                raise JaxtransError(f"{adapter_dir}: tensor {key} is missing; the adapter is incomplete")
            w = w.T  # PEFT: A [r, in], B [out, r]; ours: A [*in, r], B [r, *out]
            if ab == "a":
                expected = (math.prod(per_layer[:-1]), per_layer[-1])
            else:
                expected = (per_layer[0], math.prod(per_layer[1:]))
            if tuple(w.shape) != expected:
                raise JaxtransError(
                    f"{adapter_dir}: {key} has shape {tuple(w.T.shape)}, which does not fit this model's {name} "
                    f"projection {tuple(per_layer)}; the adapter was trained on a different base model"
                )
            stack.append(w.reshape(per_layer))
        flat[path] = np.stack(stack).astype(leaf.dtype)
    return traverse_util.unflatten_dict(flat)


def _token_ids(adapter_dir: str, cfg: ModelConfig, tokens: Any) -> list[int]:
    """PEFT's trainable token ids; only new rows right after the model's vocabulary can be imported."""
    if not tokens:
        return []
    ids = tokens.get("embed_tokens") if isinstance(tokens, dict) else tokens
    if list(ids) != list(range(cfg.vocab_size, cfg.vocab_size + len(ids))):
        raise JaxtransError(
            f"{adapter_dir}: trainable tokens {ids[:3]}... are not new rows after the model's {cfg.vocab_size}; "
            "only adapters that add new tokens at the end of the vocabulary can be imported"
        )
    return list(ids)


def _import_rows(adapter_dir: str, cfg: ModelConfig, tensors: dict) -> dict[str, np.ndarray]:
    rows = {"embedding": tensors["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]}
    if rows["embedding"].shape[1] != cfg.hidden_size:
        raise JaxtransError(f"{adapter_dir}: new-token rows have width {rows['embedding'].shape[1]}, not "
                            f"{cfg.hidden_size}; the adapter was trained on a different base model")  # fmt: skip
    if not cfg.tie_embeddings:
        rows["head"] = tensors["base_model.model.lm_head.token_adapter.trainable_tokens_delta"].T
    return rows


def adapter_base(adapter_dir: str) -> str | None:
    """The base model an adapter names (PEFT's ``base_model_name_or_path``), if it names one."""
    try:
        with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
            name = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):  # missing or damaged: import_peft says which, in one line
        return None
    return name if isinstance(name, str) and name else None


def same_model(recorded: str, given: str) -> bool:
    """Whether two model names can be the same model: equal, the same local folder (symlinks resolved), or a
    hub id and a local folder of the same name (``org/Name`` and ``/models/Name``)."""
    if recorded == given:
        return True
    from jaxtrans.pretrained import resolve

    local = lambda p: resolve(p).path if p.startswith("embedded:") else p  # noqa: E731  (no download)
    recorded, given = local(recorded), local(given)
    if os.path.exists(recorded) and os.path.exists(given):
        return os.path.realpath(recorded) == os.path.realpath(given)
    name = lambda p: os.path.basename(os.path.normpath(p)).lower()  # noqa: E731
    return name(recorded) == name(given)


def import_peft(adapter_dir: str, cfg: ModelConfig) -> tuple[llama.Adapters, dict[str, Any]]:
    """(Adapters, trainable) from a PEFT LoRA directory, checked against ``cfg``'s shapes."""
    from safetensors.numpy import load_file

    config_path = os.path.join(adapter_dir, "adapter_config.json")
    weights_path = os.path.join(adapter_dir, "adapter_model.safetensors")
    for p in (config_path, weights_path):
        if not os.path.isfile(p):
            raise JaxtransError(f"{adapter_dir} is not a PEFT adapter directory: {os.path.basename(p)} is missing")
    with open(config_path) as f:
        try:
            pc = json.load(f)
        except json.JSONDecodeError as e:
            raise JaxtransError(f"{config_path} is not valid JSON ({e}); export the adapter again") from None
    if not isinstance(pc, dict) or pc.get("peft_type") != "LORA":
        kind = pc.get("peft_type") if isinstance(pc, dict) else type(pc).__name__
        raise JaxtransError(f"{adapter_dir}: peft_type {kind!r} is not LORA")
    check_safetensors(weights_path)
    if pc.get("modules_to_save"):
        raise JaxtransError(
            f"{adapter_dir} trains whole modules ({pc['modules_to_save']}), which jaxtrans cannot load as an adapter "
            "yet; merge it with PEFT (merge_and_unload) and load the merged model instead"
        )
    tensors = load_file(weights_path)
    found = {k.split(".lora_A.")[0].split(".")[-1] for k in tensors if ".lora_A." in k}
    unknown = found - {f"{n}_proj" for n in lora.LINEAR}
    if unknown:
        raise JaxtransError(f"{adapter_dir}: LoRA on {sorted(unknown)}; jaxtrans adapts q,k,v,o,gate,up,down only")
    targets = [n for n in lora.LINEAR if f"{n}_proj" in found]
    if not targets and not pc.get("trainable_token_indices"):
        raise JaxtransError(
            f"{adapter_dir} holds no LoRA tensors and no new-token rows: the adapter is empty; export it again "
            "from its run (python -m jaxtrans.export --run RUN --peft DIR)"
        )
    lc = lora.LoraConfig.make(
        int(pc["r"]), float(pc["lora_alpha"]), 0.0, ",".join(targets), bool(pc.get("use_rslora", False))
    )
    adapters = llama.Adapters(lora=lc)
    trainable: dict[str, Any] = {"lora": _import_lora(adapter_dir, cfg, adapters, tensors)}
    ids = _token_ids(adapter_dir, cfg, pc.get("trainable_token_indices") or {})
    if ids:
        trainable["new_rows"] = _import_rows(adapter_dir, cfg, tensors)
        adapters = llama.Adapters(lora=lc, new_tokens=len(ids))
    return adapters, trainable
