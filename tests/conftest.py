"""Shared fixtures. Eight host CPU devices are forced before JAX starts, for the sharding tests."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu (test extra) is for deviceless TPU compiles, not a backend
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocess runs of the same tiny configs share XLA's persistent compilation cache (one per test session): a
# re-run then loads its executables instead of compiling them again (about half of a tiny run's time).
COMPILE_CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": __import__("tempfile").mkdtemp(prefix="jaxtrans-test-xla-cache-"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    # the original model's measurements are cached per test session, not in the user's ~/.cache/jaxtrans
    "JAXTRANS_BASELINE_CACHE": __import__("tempfile").mkdtemp(prefix="jaxtrans-test-baselines-"),
}
os.environ.setdefault("JAXTRANS_BASELINE_CACHE", COMPILE_CACHE_ENV["JAXTRANS_BASELINE_CACHE"])


def pytest_sessionfinish(session, exitstatus) -> None:
    """The session's caches go with it (they were left in /tmp, one pair per run)."""
    import shutil

    for key in ("JAX_COMPILATION_CACHE_DIR", "JAXTRANS_BASELINE_CACHE"):
        shutil.rmtree(COMPILE_CACHE_ENV[key], ignore_errors=True)


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
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
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


@pytest.fixture(scope="session")
def smol_tiny(tmp_path_factory) -> str:
    """A random tiny Llama directory that speaks SmolLM2's tokenizer (byte-level BPE with a chat template)."""
    from jaxtrans.pretrained import load_tokenizer, resolve

    tok = load_tokenizer(resolve("embedded:smollm2"))
    _, path = tiny_hf_model(
        tmp_path_factory.mktemp("smol_tiny"), vocab_size=len(tok), hidden_size=32, intermediate_size=64,
        max_position_embeddings=512, tie_word_embeddings=True,
    )  # fmt: skip
    tok.save_pretrained(path)
    return path
