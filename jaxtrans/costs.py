"""What a LoRA/QLoRA train step must cost, counted from the shapes: FLOPs and a memory floor.

XLA's cost analysis counts the body of a ``while`` loop once, and our layers
run under ``scan``, so compiled FLOP counts are low by about the number of
layers; the planner uses these counts instead (checked against XLA's on an
unrolled model in ``tests/test_plan.py``). Matmuls and attention products
only: norms, softmax, rotary and the optimizer are a few per cent at most.

The memory floor is what a step cannot do without: the frozen base, the
trainable state with its AdamW moments and gradients, the activations the
remat policy saves, one layer's working set and the loss's logits. The
compiled peak is judged against it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtrans.model.config import ModelConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def projections(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear map of one layer, by LoRA target name."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step (all devices together), by phase."""

    forward: float
    backward: float
    recompute: float  # the forward again under remat

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.recompute


def step_flops(
    cfg: ModelConfig, adapters: Any, tokens: int, seq_len: int, modules_to_save: tuple[str, ...] = ()
) -> StepFlops:
    """FLOPs of a train step over ``tokens`` tokens in rows of ``seq_len``.

    Frozen weights get input gradients only (no weight gradient); LoRA A and B
    get both; attention scores are counted over all ``seq_len`` keys (what
    the XLA reference and the chunked path compute; a causal flash kernel skips
    about half of them).
    """
    shapes = projections(cfg)
    linear = sum(a * b for a, b in shapes.values())
    lora = adapters.lora
    lora_fwd = sum(2 * lora.rank * sum(shapes[t]) for t in lora.targets) if lora is not None else 0
    attn_fwd = 4 * seq_len * cfg.num_heads * cfg.head_dim
    layer_fwd = 2 * linear + lora_fwd + attn_fwd
    vocab = cfg.vocab_size + adapters.new_tokens
    head_fwd = 2 * cfg.hidden_size * vocab
    layer_bwd = 2 * linear + 2 * lora_fwd + 2 * attn_fwd
    head_weights = (
        2 * cfg.hidden_size * (vocab if {"lm_head", "embedding"} & set(modules_to_save) else adapters.new_tokens)
    )
    recompute = {"none": 0, "full": layer_fwd, "offload_residuals": layer_fwd, "save_dots": attn_fwd}[cfg.remat]
    # with frozen embeddings nothing needs the gradient of the first layer's input: q, k, v skip theirs
    first = 0
    if not adapters.new_tokens and "embedding" not in modules_to_save:
        first = sum(2 * a * b for t, (a, b) in shapes.items() if t in ("q", "k", "v"))
        first += sum(2 * shapes[t][0] * lora.rank for t in (lora.targets if lora else ()) if t in ("q", "k", "v"))
    n, layers = float(tokens), cfg.num_layers
    return StepFlops(
        forward=n * (layers * layer_fwd + head_fwd),
        backward=n * (layers * layer_bwd + head_fwd + head_weights - first),
        recompute=n * layers * recompute,
    )


def memory_floor(
    cfg: ModelConfig, adapters: Any, rows: int, seq_len: int, base_bytes: int, state_bytes: int, trainable_bytes: int
) -> dict[str, int]:
    """Bytes one device cannot do without, by part (``rows``: the batch rows this device computes).

    ``base_bytes``/``state_bytes``/``trainable_bytes`` are this device's shares
    of the frozen base, the train state (trainable values, AdamW moments, step)
    and the trainable values alone (their gradients are the same size).
    """
    act = DTYPE_BYTES[cfg.dtype]
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size + adapters.new_tokens
    tokens = rows * seq_len
    shapes = projections(cfg)
    if cfg.remat == "offload_residuals":
        saved = 0  # each layer's input, in host memory (see host_floor)
    elif cfg.remat == "full":
        saved = cfg.num_layers * tokens * d * act  # each layer's input
    elif cfg.remat == "save_dots":
        saved = cfg.num_layers * tokens * act * (d + sum(b for _, b in shapes.values()))
    else:
        saved = cfg.num_layers * tokens * act * (4 * d + sum(b for _, b in shapes.values()) + 2 * f)
    keys = min(seq_len, 512) if cfg.attention in ("auto", "chunked", "flash", "triton", "dot_product") else seq_len
    scores = 2 * rows * cfg.num_heads * keys * seq_len * 4  # f32 scores and probabilities (flash: one block)
    mlp_tokens = rows * cfg.mlp_chunk if cfg.mlp_chunk and seq_len % cfg.mlp_chunk == 0 else tokens
    mlp = 3 * mlp_tokens * f * act  # gate, up and their product (one chunk of them with mlp_chunk)
    weights = max(a * b for a, b in shapes.values()) * act if adapters.quantized else 0  # one dequantised kernel
    chunk = cfg.loss_chunk or seq_len
    return {
        "frozen_base": base_bytes,
        "train_state": state_bytes,
        "gradients": trainable_bytes,
        "saved_activations": saved,
        "layer_working_set": max(scores, mlp) + weights,
        "loss_logits": rows * chunk * v * 4,  # one f32 copy of a chunk's logits (their gradient can take its place)
    }
