"""Logit parity with transformers (torch, fp32) on random tiny models saved with save_pretrained."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import jaxtrans
from tests.conftest import tiny_hf_model

CASES = {
    "llama2": ("llama", dict(num_key_value_heads=4, rms_norm_eps=1e-5)),
    "llama31": (
        "llama",
        dict(
            num_key_value_heads=1,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "tied": ("llama", dict(tie_word_embeddings=True)),
    "attention_bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "head_dim": ("llama", dict(head_dim=24)),
    "gqa2": ("llama", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=8)),
    "rope_linear": ("llama", dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))),
    "rope_dynamic": (
        "llama",
        dict(max_position_embeddings=8, rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)),
    ),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    # odd sizes: grouped KV heads, head_dim not hidden/heads, untied and tied heads, attention biases
    "qwen3": ("qwen3", dict(num_attention_heads=6, num_key_value_heads=2, head_dim=20, hidden_size=72)),
    "qwen3_tied_bias": ("qwen3", dict(tie_word_embeddings=True, attention_bias=True, head_dim=12)),
    "mistral_window": ("mistral", dict(sliding_window=5)),
}


def _batch(vocab: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, :4] = 0  # left padding
    mask[2, 7:] = 0  # right padding
    return tokens, mask


def _hf_logits(model, tokens, mask):
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        out = model(
            torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)
        ).logits
    return out.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    model_type, overrides = CASES[case]
    hf_model, path = tiny_hf_model(tmp_path, model_type, **overrides)
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    tokens, mask = _batch(model.config.vocab_size)
    ours = np.asarray(model(tokens, attention_mask=mask))
    ref = _hf_logits(hf_model, tokens, mask)
    valid = mask.astype(bool)
    diff = np.abs(ours - ref)[valid].max()
    assert diff <= 1e-5, f"{case}: max |jaxtrans - transformers| = {diff:.2e}"
    _check_export_layout(model, path)


def _check_export_layout(model, path):
    """The layout table maps back exactly (what export will write), and the config survives a round trip."""
    from flax import traverse_util
    from safetensors.numpy import load_file

    from jaxtrans.model.config import from_hf_config, to_hf_config
    from jaxtrans.weights.loader import hf_layout

    assert from_hf_config(to_hf_config(model.config)) == model.config
    saved = load_file(os.path.join(path, "model.safetensors"))
    flat = traverse_util.flatten_dict(model.params)
    for param, entry in hf_layout(model.config).items():
        ours = np.asarray(flat[param])
        for layer in range(model.config.num_layers) if entry.stacked else [None]:
            name = entry.template.format(layer) if layer is not None else entry.template
            np.testing.assert_array_equal(entry.to_hf(ours[layer] if layer is not None else ours), saved[name])


def test_packed_segments_equal_separate_runs(tmp_path):
    hf_model, path = tiny_hf_model(tmp_path, "llama", num_key_value_heads=2)
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    rng = np.random.default_rng(3)
    lengths = [5, 3, 6]
    pieces = [rng.integers(0, 97, size=n) for n in lengths]
    packed = np.concatenate(pieces + [np.zeros(2, np.int64)])[None]  # two trailing pad tokens
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(2, np.int64)])[None]
    packed_logits = np.asarray(model(packed, segment_ids=segments))[0]
    start = 0
    for piece in pieces:
        alone = np.asarray(model(piece[None]))[0]
        with torch.no_grad():
            ref = hf_model(torch.tensor(piece[None])).logits.numpy()[0]
        got = packed_logits[start : start + len(piece)]
        assert np.abs(got - alone).max() <= 1e-5
        assert np.abs(got - ref).max() <= 1e-5
        start += len(piece)


def test_a_qwen3_gguf_loads_with_the_checkpoints_logits(tmp_path):
    """A Qwen3 GGUF as llama.cpp names it (q/k norms as attn_q_norm/attn_k_norm, no rotary permutation)."""
    import gguf

    hf_model, path = tiny_hf_model(tmp_path, "qwen3", num_attention_heads=6, num_key_value_heads=2, head_dim=20,
                                   hidden_size=72)  # fmt: skip
    c = hf_model.config
    writer = gguf.GGUFWriter(str(tmp_path / "q3.gguf"), "qwen3")
    for key, value in (
        ("context_length", c.max_position_embeddings),
        ("embedding_length", c.hidden_size),
        ("feed_forward_length", c.intermediate_size),
        ("block_count", c.num_hidden_layers),
        ("attention.head_count", c.num_attention_heads),
        ("vocab_size", c.vocab_size),
        ("attention.head_count_kv", c.num_key_value_heads),
        ("attention.key_length", c.head_dim),
    ):
        writer.add_uint32(f"qwen3.{key}", value)
    writer.add_float32("qwen3.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    writer.add_float32("qwen3.rope.freq_base", c.rope_parameters["rope_theta"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}  # fmt: skip
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for name, tensor in hf_model.state_dict().items():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers.") :].split(".", 1)
            module = rest.rsplit(".", 1)[0]
            gname = f"blk.{i}.{layer[module]}.weight"
        else:
            gname = names[name]
        writer.add_tensor(gname, tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model, _ = jaxtrans.load_pretrained(str(tmp_path / "q3.gguf"), with_tokenizer=False)
    assert model.config.qk_norm and model.config.head_dim == 20
    tokens, mask = _batch(model.config.vocab_size)
    ours = np.asarray(model(tokens, attention_mask=mask))
    diff = np.abs(ours - _hf_logits(hf_model, tokens, mask))[mask.astype(bool)].max()
    assert diff <= 1e-5, diff
