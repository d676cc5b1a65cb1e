"""Shared fixtures. Eight host CPU devices are forced before JAX starts, for the sharding tests."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(scope="session")
def shared_data() -> str:
    if not os.path.isdir(SHARED):
        pytest.skip(f"../shared/data is not beside the repository ({SHARED}); these tests read real public data")
    return SHARED


def tiny_hf_model(tmp_path, model_type: str = "llama", seed: int = 0, **overrides):
    """Save a random tiny transformers model; every weight (norms and biases too) is randomised."""
    import torch
    import transformers

    base = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    base.update(overrides)
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[model_type]
    config = cls[0](**base)
    torch.manual_seed(seed)
    model = cls[1](config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    path = os.path.join(str(tmp_path), f"{model_type}-{seed}")
    model.save_pretrained(path)
    return model, path
