"""KV-cache decoding equals a full forward pass at every position; sampling options behave."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtrans
from jaxtrans.infer.generate import SamplingConfig, _pick, generate
from jaxtrans.model import llama
from tests.conftest import tiny_hf_model


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cache_decode_matches_full_forward(tmp_path, scan_layers):
    _, path = tiny_hf_model(tmp_path, "llama", num_key_value_heads=2)
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    cfg, module = model.config, model.module
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(2, 10)).astype(np.int32)
    segment = np.ones_like(tokens)
    segment[1, :3] = 0  # row 1 is left-padded
    positions = llama.positions_from_segments(jnp.asarray(segment))
    full, _ = module.apply({"params": model.params}, tokens, segment, positions)

    cache = llama.KVCache.empty(cfg, batch=2, max_len=16)
    # prefill 4 tokens (scanned), then one token at a time (scanned, or unrolled over per-layer weights)
    logits, cache = module.apply({"params": model.params}, tokens[:, :4], segment[:, :4], positions[:, :4], cache)
    variables = {"params": model.params}
    if not scan_layers:
        module = llama.Llama(cfg, scan_layers=False)
        variables, cache = llama.unstack_layers(variables), cache.unstacked()
    steps = [logits]
    for t in range(4, 10):
        sl = slice(t, t + 1)
        logits, cache = module.apply(variables, tokens[:, sl], segment[:, sl], positions[:, sl], cache)
        steps.append(logits)
    decoded = jnp.concatenate(steps, axis=1)
    valid = segment.astype(bool)
    assert int(cache.index) == 10
    assert np.abs(np.asarray(decoded) - np.asarray(full))[valid].max() <= 1e-5


def test_generate_batched_equals_one_by_one(tmp_path):
    _, path = tiny_hf_model(tmp_path, "llama")
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11]]
    sampling = SamplingConfig(max_new_tokens=8)
    batched = generate(model.config, {"params": model.params}, prompts, sampling)
    for prompt, got in zip(prompts, batched, strict=True):
        assert generate(model.config, {"params": model.params}, [prompt], sampling)[0] == got
    # the scanned and the unrolled decode loops pick the same tokens
    for scan_layers in (True, False):
        assert generate(model.config, {"params": model.params}, prompts, sampling, scan_layers=scan_layers) == batched


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 200)
    top1 = {int(_pick(logits, k, SamplingConfig(temperature=1.0, top_k=1))[0]) for k in keys}
    assert top1 == {0}
    top2 = {int(_pick(logits, k, SamplingConfig(temperature=1.0, top_k=2))[0]) for k in keys}
    assert top2 == {0, 1}
    nucleus = {int(_pick(logits, k, SamplingConfig(temperature=1.0, top_p=0.7))[0]) for k in keys}
    assert nucleus == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert int(_pick(logits, keys[0], SamplingConfig())[0]) == 0


def test_unrolled_decoding_with_lora_on_an_nf4_base_equals_the_scanned_one():
    from jaxtrans.model import nf4
    from jaxtrans.model.lora import LoraConfig
    from tests.train_job import tiny_config

    cfg = tiny_config()
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8), quantized=True)
    trainable = llama.init_trainable(cfg, adapters, seed=3)
    trainable["lora"] = jax.tree.map(lambda x: x + 0.05, trainable["lora"])  # a non-zero B
    variables = {"params": nf4.quantize_params(llama.init_params(cfg, seed=1)), **trainable}
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    sampling = SamplingConfig(max_new_tokens=6)
    scanned = generate(cfg, variables, prompts, sampling, adapters=adapters, scan_layers=True)
    assert generate(cfg, variables, prompts, sampling, adapters=adapters, scan_layers=False) == scanned


@pytest.mark.parametrize("scan_layers", [True, False])
def test_chunked_decoding_picks_generates_tokens_and_stops_rows(tmp_path, scan_layers):
    """The server's path: a chunk at a time, per-row budgets and seeds, rows stopped between chunks."""
    from jaxtrans.infer.generate import Decoding

    _, path = tiny_hf_model(tmp_path, "llama")
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    variables, cfg = {"params": model.params}, model.config
    prompts = [[5, 6, 7, 8, 9], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11]]
    greedy = SamplingConfig(max_new_tokens=16)
    whole = generate(cfg, variables, prompts, greedy, stop_ids=[7])
    dec = Decoding(cfg, variables, prompts, [16, 16, 16], [0, 1, 2], greedy, stop_ids=[7], scan_layers=scan_layers)
    while not dec.done:
        got = dec.step(5)
    assert got == whole
    dec = Decoding(cfg, variables, prompts, [3, 16, 16], [0, 1, 2], greedy, scan_layers=scan_layers)
    first = dec.step(5)
    dec.stop([1])
    while not dec.done:
        last = dec.step(5)
    assert last[0] == whole[0][:3] and last[1] == first[1] == whole[1][:6] and last[2] == whole[2]  # 1 + 5 new
    sampled = SamplingConfig(max_new_tokens=16, temperature=1.0)
    twins = Decoding(cfg, variables, [prompts[0]] * 3, [16] * 3, [4, 4, 5], sampled, scan_layers=scan_layers)
    rows = twins.step(16)
    assert rows[0] == rows[1] != rows[2]  # a row's seed, not its place in the batch, decides its samples
