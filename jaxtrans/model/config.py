"""Small, frozen model configs, and their translation from HF ``config.json``.

Each layer gets only the dataclass it needs (:class:`RopeConfig` for rotary
embeddings, :class:`ModelConfig` for the decoder); nothing here knows about the
run config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtrans.errors import JaxtransError, require

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
# none: keep every activation; full: keep each layer's input, recompute the layer; save_dots: keep the projections
# outputs too; offload_residuals: as full, with the layer inputs kept in host memory (pinned) between the passes
REMAT_POLICIES = ("none", "full", "save_dots", "offload_residuals")
ATTENTION = ("auto", "xla", "chunked", "dot_product", "flash", "triton")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters, as transformers 5 writes them in ``rope_parameters``."""

    head_dim: int
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    # llama3 and dynamic scaling
    original_max_position_embeddings: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # dynamic scaling compares against the model's context length
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        require(
            self.rope_type in ROPE_TYPES,
            f"unsupported rope_type {self.rope_type!r}; jaxtrans supports {', '.join(ROPE_TYPES)}",
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder: Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM2."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: RopeConfig
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before RoPE (Qwen3)
    sliding_window: int | None = None
    max_position_embeddings: int = 2048
    model_type: str = "llama"
    # execution choices (not part of the checkpoint)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the frozen base
    remat: str = "none"
    attention: str = "auto"  # one of ATTENTION; auto: the platform's flash kernel (jaxtrans.model.attention.resolve)
    loss_chunk: int = 0  # training loss over this many positions at a time, never all [T, V] logits; 0 = off
    mlp_chunk: int = 0  # the MLP over this many positions of a row at a time (scanned, rematerialised); 0 = off

    def __post_init__(self) -> None:
        require(
            self.num_heads % self.num_kv_heads == 0,
            f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}",
        )
        require(self.remat in REMAT_POLICIES, f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        require(self.attention in ATTENTION, f"attention must be one of {ATTENTION}, got {self.attention!r}")
        require(
            not (self.attention in ("flash", "triton") and self.sliding_window),
            f"{self.attention} attention has no sliding window; use attention=auto (or chunked) for this model",
        )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Parameter count of the base model (what a checkpoint holds)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        if self.o_bias:
            attn += d
        mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d + (2 * hd if self.qk_norm else 0)
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + emb + d


def _rope_from_hf(hf: dict[str, Any], head_dim: int) -> RopeConfig:
    # transformers 5 writes `rope_parameters`; older configs write rope_theta + rope_scaling.
    params = dict(hf.get("rope_parameters") or {})
    if not params:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    max_pos = int(hf.get("max_position_embeddings", 2048))
    return RopeConfig(
        head_dim=head_dim,
        theta=float(params.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", max_pos)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        max_position_embeddings=max_pos,
    )


def _window_if_used(hf: dict[str, Any]) -> int | None:
    return hf.get("sliding_window") if hf.get("use_sliding_window") else None


def _qwen3_window(hf: dict[str, Any]) -> None:
    if hf.get("use_sliding_window"):
        raise JaxtransError(
            "Qwen3 with use_sliding_window=True (a window on some layers only) is not supported; its released "
            "checkpoints keep it off"
        )
    return None


@dataclasses.dataclass(frozen=True)
class Family:
    """What one ``model_type`` differs in: its transformers class, biases, window and norms, read from and
    written to ``config.json``. A new Llama-like family is one entry of :data:`FAMILIES`."""

    architecture: str
    window: Any  # (hf config) -> sliding window or None
    qkv_bias: Any = None  # (hf config) -> bool; default: attention_bias
    qk_norm: bool = False
    written: tuple[str, ...] = ("attention_bias", "mlp_bias")  # the config keys to_hf_config writes


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", lambda hf: None),
    "mistral": Family("MistralForCausalLM", lambda hf: hf.get("sliding_window"), written=("sliding_window",)),
    "qwen2": Family("Qwen2ForCausalLM", _window_if_used, qkv_bias=lambda hf: True,
                    written=("use_sliding_window", "sliding_window")),
    "qwen3": Family("Qwen3ForCausalLM", _qwen3_window, qk_norm=True,
                    written=("attention_bias", "use_sliding_window")),
}  # fmt: skip


def from_hf_config(hf: dict[str, Any], **execution: Any) -> ModelConfig:
    """Translate a HF ``config.json`` dict; ``execution`` sets dtype/param_dtype/remat/attention."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise JaxtransError(
            f"unsupported model_type {model_type!r} in config.json; jaxtrans supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama-family decoders)"
        )
    try:
        hidden = int(hf["hidden_size"])
        heads = int(hf["num_attention_heads"])
        head_dim = int(hf.get("head_dim") or hidden // heads)
        family = FAMILIES[model_type]
        bias = bool(hf.get("attention_bias", False))
        qkv_bias = family.qkv_bias(hf) if family.qkv_bias else bias
        o_bias = bias if family.qkv_bias is None else False
        mlp_bias = bool(hf.get("mlp_bias", False)) if "mlp_bias" in family.written else False
        window = family.window(hf)
        cfg = ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rope=_rope_from_hf(hf, head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            qk_norm=family.qk_norm,
            sliding_window=int(window) if window else None,
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            model_type=model_type,
            **execution,
        )
    except KeyError as e:
        raise JaxtransError(f"config.json lacks required key {e.args[0]!r}") from None
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise JaxtransError(f"unsupported hidden_act {hf['hidden_act']!r}; Llama-family models use silu")
    return cfg


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The inverse of :func:`from_hf_config`, for export and for the parity tests."""
    rope: dict[str, Any] = {"rope_type": cfg.rope.rope_type, "rope_theta": cfg.rope.theta}
    if cfg.rope.rope_type != "default":
        rope["factor"] = cfg.rope.factor
    if cfg.rope.rope_type == "llama3":
        rope.update(
            low_freq_factor=cfg.rope.low_freq_factor,
            high_freq_factor=cfg.rope.high_freq_factor,
            original_max_position_embeddings=cfg.rope.original_max_position_embeddings,
        )
    family = FAMILIES[cfg.model_type]
    hf: dict[str, Any] = {
        "architectures": [family.architecture],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
    }
    written = {"attention_bias": cfg.o_bias or (cfg.qkv_bias and family.qkv_bias is None), "mlp_bias": cfg.mlp_bias,
               "sliding_window": cfg.sliding_window, "use_sliding_window": cfg.sliding_window is not None}  # fmt: skip
    hf.update({key: written[key] for key in family.written})
    return hf
