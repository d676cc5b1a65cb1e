"""Tensor sources: read one named HF tensor at a time from safetensors or GGUF.

A source speaks HF tensor names (``model.layers.3.self_attn.q_proj.weight``) in
HF layout, whatever the file format, so the loader and the exporter know one
naming scheme. Nothing here reads pickle or runs remote code.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Protocol

import numpy as np

from jaxtrans.errors import JaxtransError


class TensorSource(Protocol):
    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def get(self, name: str) -> np.ndarray: ...

    def hf_config(self) -> dict[str, Any]: ...


def check_safetensors(path: str) -> None:
    """A safetensors file whose header parses and whose tensors all lie within the file (a cut-off download or
    copy fails here, with its name, instead of deep inside a load)."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        try:
            if n < 0 or 8 + n > size:
                raise ValueError("header runs past the end of the file")
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError) as e:
            raise JaxtransError(f"{path} is not a readable safetensors file ({e}); download or copy it again") from None
    if 8 + n + end > size:
        raise JaxtransError(
            f"{path} is truncated: its tensors need {8 + n + end} bytes but the file has {size}; "
            "download or copy it again"
        )


class SafetensorsSource:
    """A local HF model directory: ``config.json`` plus one or more ``*.safetensors`` files."""

    def __init__(self, model_dir: str):
        from safetensors import safe_open

        self.model_dir = model_dir
        config_path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(config_path):
            raise JaxtransError(
                f"{model_dir} has no config.json; point the model path at a HF model directory "
                "(config.json + *.safetensors) or a .gguf file"
            )
        with open(config_path) as f:
            try:
                self._config = json.load(f)
            except json.JSONDecodeError as e:
                raise JaxtransError(f"{config_path} is not valid JSON: {e}") from None
        index_path = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p for p in os.listdir(model_dir) if p.endswith(".safetensors"))
        if not files:
            bins = [p for p in os.listdir(model_dir) if p.endswith((".bin", ".pt", ".pth"))]
            hint = " (found pickle weights; jaxtrans never unpickles: convert them to safetensors)" if bins else ""
            raise JaxtransError(f"{model_dir} has no *.safetensors weights{hint}")
        self._file_of: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for name in files:
            path = os.path.join(model_dir, name)
            if not os.path.isfile(path):
                raise JaxtransError(f"safetensors shard {path} listed in the index is missing")
            check_safetensors(path)
            with safe_open(path, framework="np") as f:
                for key in f.keys():
                    self._file_of[key] = path
                    self._shapes[key] = tuple(f.get_slice(key).get_shape())
        self._open: dict[str, Any] = {}

    def hf_config(self) -> dict[str, Any]:
        return dict(self._config)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def get(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        path = self._file_of[name]
        if path not in self._open:
            self._open[path] = safe_open(path, framework="np")
        return self._open[path].get_tensor(name)


# GGUF tensor names -> HF names (per layer `{}`)
_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# llama.cpp's converter permutes q/k rows into interleaved rotary order for these architectures
_GGUF_PERMUTED = ("llama", "mistral")


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q/k rows (the inverse of its ``permute``)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource:
    """A GGUF file, dequantised with the ``gguf`` package's numpy code (no torch)."""

    def __init__(self, path: str):
        import gguf

        if not os.path.isfile(path):
            raise JaxtransError(f"GGUF file {path} does not exist")
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as e:  # the gguf package raises assorted errors on a bad file
            raise JaxtransError(f"{path} is not a readable GGUF file: {e}") from None
        self.path = path
        self.arch = self._field("general.architecture")
        self._tensors = {}
        for t in self.reader.tensors:
            hf = self._hf_name(t.name)
            if hf is not None:
                self._tensors[hf] = t
        self._config = self._build_config()

    def _field(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def _hf_name(self, gguf_name: str) -> str | None:
        if gguf_name in _GGUF_NAMES:
            return _GGUF_NAMES[gguf_name]
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
        if m and m.group(2) in _GGUF_LAYER_NAMES:
            return f"model.layers.{m.group(1)}.{_GGUF_LAYER_NAMES[m.group(2)]}"
        if gguf_name == "rope_freqs.weight":
            raise JaxtransError(
                f"{self.path} uses llama3 rope frequencies stored in GGUF; load the HF safetensors "
                "checkpoint of this model instead"
            )
        return None

    def _build_config(self) -> dict[str, Any]:
        a = self.arch
        if a not in ("llama", "mistral", "qwen2", "qwen3"):
            raise JaxtransError(f"unsupported GGUF architecture {a!r}; jaxtrans supports llama, mistral, qwen2, qwen3")
        heads = int(self._field(f"{a}.attention.head_count"))
        hidden = int(self._field(f"{a}.embedding_length"))
        tokens = self._field("tokenizer.ggml.tokens") or []
        cfg: dict[str, Any] = {
            "model_type": a,
            "vocab_size": int(self._field(f"{a}.vocab_size", len(tokens))),
            "hidden_size": hidden,
            "intermediate_size": int(self._field(f"{a}.feed_forward_length")),
            "num_hidden_layers": int(self._field(f"{a}.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self._field(f"{a}.attention.head_count_kv", heads)),
            "head_dim": int(self._field(f"{a}.attention.key_length", hidden // heads)),
            "rms_norm_eps": float(self._field(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
            "max_position_embeddings": int(self._field(f"{a}.context_length", 2048)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "rope_parameters": {"rope_type": "default", "rope_theta": float(self._field(f"{a}.rope.freq_base", 1e4))},
            "bos_token_id": self._field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self._field("tokenizer.ggml.eos_token_id"),
        }
        scaling = self._field(f"{a}.rope.scaling.type")
        if scaling == "linear":
            cfg["rope_parameters"].update(rope_type="linear", factor=float(self._field(f"{a}.rope.scaling.factor")))
        elif scaling not in (None, "none"):
            raise JaxtransError(f"GGUF rope scaling {scaling!r} is not supported; use the HF checkpoint")
        return cfg

    def hf_config(self) -> dict[str, Any]:
        return dict(self._config)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        # GGUF lists dimensions innermost first; HF layout is the reverse.
        return {name: tuple(int(d) for d in reversed(t.shape)) for name, t in self._tensors.items()}

    def get(self, name: str) -> np.ndarray:
        import gguf

        t = self._tensors[name]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if self.arch in _GGUF_PERMUTED:
            if name.endswith("q_proj.weight"):
                w = _unpermute(w, self._config["num_attention_heads"])
            elif name.endswith("k_proj.weight"):
                w = _unpermute(w, self._config["num_key_value_heads"])
        return w
