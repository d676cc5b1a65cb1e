"""Export to HF (merged) and PEFT, import from PEFT: logits equal transformers/peft, including new tokens."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import torch

import jaxtrans
from jaxtrans.errors import JaxtransError
from jaxtrans.export import export_merged, export_peft, import_peft
from jaxtrans.infer.generate import SamplingConfig, generate
from jaxtrans.model import llama
from jaxtrans.model.lora import LoraConfig
from tests.conftest import tiny_hf_model

NEW, PAD = 5, 3  # new tokens, and padding rows that export leaves out


def _trained(cfg, adapters, seed=0):
    """Adapters as if trained: A random (PEFT init), B and the new rows random too."""
    t = jax.device_get(llama.init_trainable(cfg, adapters, seed))
    rng = np.random.default_rng(seed)
    t = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.05, x.shape).astype(x.dtype) if p[-1].key == "b" else np.asarray(x), t
    )
    if "new_rows" in t:
        t["new_rows"] = {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in t["new_rows"].items()}
    return t


def _ours(cfg, adapters, base, trainable, tokens):
    variables = {"params": base, **trainable}
    logits, _ = llama.Llama(cfg, adapters).apply(variables, np.asarray(tokens, np.int32))
    return np.asarray(logits, np.float64)


FAMILIES = {
    "llama": dict(tie_word_embeddings=False),
    # Qwen3: q/k norms; odd sizes (grouped KV heads, head_dim not hidden/heads)
    "qwen3": dict(tie_word_embeddings=False, num_attention_heads=6, num_key_value_heads=2, head_dim=20, hidden_size=72),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(tmp_path_factory, request):
    hf, path = tiny_hf_model(tmp_path_factory.mktemp("m"), request.param, **FAMILIES[request.param])
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    return hf, path, model


@pytest.mark.parametrize("new_tokens", [0, NEW])
def test_merged_export_matches_transformers(tiny, tmp_path, new_tokens):
    from transformers import AutoModelForCausalLM

    _, _, model = tiny
    cfg = model.config
    pad = PAD if new_tokens else 0
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8), new_tokens=new_tokens + pad, padding_rows=pad)
    trainable = _trained(cfg, adapters)
    out = export_merged(str(tmp_path / "hf"), cfg, model.params, trainable, adapters, max_shard_bytes=40_000)
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))  # sharded above the size limit
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.vocab_size == cfg.vocab_size + new_tokens
    tokens = np.array([[1, 5, 9, 96, 40, 2, 7, 3], [4, 4, 8, 15, 16, 23, 42, 11]])
    if new_tokens:
        tokens[0, 3], tokens[1, 2] = cfg.vocab_size + 1, cfg.vocab_size + 4  # new tokens in the input
    ours = _ours(cfg, adapters, model.params, trainable, tokens)[..., : cfg.vocab_size + new_tokens]
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy().astype(np.float64)
    assert np.abs(ours - ref).max() <= 1e-4
    prompt = tokens[0, :5].tolist()
    mine = generate(cfg, {"params": model.params, **trainable}, [prompt], SamplingConfig(max_new_tokens=12),
                    adapters=adapters)[0]  # fmt: skip
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert mine == theirs[0, 5:].tolist()


def test_peft_export_loads_in_peft(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, path, model = tiny
    cfg = model.config
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8, targets="q,k,v,o,gate,up,down"), new_tokens=NEW + PAD,
                              padding_rows=PAD)  # fmt: skip
    trainable = _trained(cfg, adapters, seed=1)
    out = export_peft(str(tmp_path / "peft"), cfg, trainable, adapters, base_model_name=path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base.resize_token_embeddings(cfg.vocab_size + NEW)  # PEFT's rule for new tokens: resize, then load
    peft_model = PeftModel.from_pretrained(base, out).eval()
    tokens = np.array([[1, 5, cfg.vocab_size + 2, 96, 40, 2, cfg.vocab_size, 3]])
    ours = _ours(cfg, adapters, model.params, trainable, tokens)[..., : cfg.vocab_size + NEW]
    with torch.no_grad():
        ref = peft_model(torch.tensor(tokens)).logits.numpy().astype(np.float64)
    assert np.abs(ours - ref).max() <= 1e-4
    # and back: importing our export gives the same trees
    adapters2, trainable2 = import_peft(out, cfg)
    assert adapters2.lora == adapters.lora and adapters2.new_tokens == NEW
    for k in ("a", "b"):
        np.testing.assert_array_equal(
            trainable2["lora"]["layers"]["mlp"]["down"][k], trainable["lora"]["layers"]["mlp"]["down"][k]
        )


def test_peft_trained_adapter_imports(tiny, tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    _, path, model = tiny
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    pc = PeftLoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, pc).eval()
    peft_model.save_pretrained(str(tmp_path / "theirs"))
    adapters, trainable = import_peft(str(tmp_path / "theirs"), model.config)
    assert adapters.lora.targets == ("q", "v", "down")
    tokens = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    ours = _ours(model.config, adapters, model.params, trainable, tokens)
    with torch.no_grad():
        ref = peft_model(torch.tensor(tokens)).logits.numpy().astype(np.float64)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - _ours(model.config, llama.Adapters(), model.params, {}, tokens)).max() > 1e-3  # it matters


def test_bad_export_and_import_inputs(tiny, tmp_path):
    _, _, model = tiny
    cfg = model.config
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8))
    trainable = _trained(cfg, adapters)
    out = export_peft(str(tmp_path / "a"), cfg, trainable, adapters)
    with pytest.raises(JaxtransError, match="already exists; choose another path or pass --overwrite"):
        export_peft(out, cfg, trainable, adapters)
    export_peft(out, cfg, trainable, adapters, overwrite=True)
    # an adapter for a different base (hidden size 64 vs 32)
    _, other = tiny_hf_model(tmp_path, "llama", hidden_size=32, intermediate_size=48, num_attention_heads=2,
                             num_key_value_heads=1)  # fmt: skip
    other_model, _ = jaxtrans.load_pretrained(other, with_tokenizer=False)
    with pytest.raises(JaxtransError, match="trained on a different base model"):
        import_peft(out, other_model.config)
    with pytest.raises(JaxtransError, match="not a PEFT adapter directory"):
        import_peft(str(tmp_path), cfg)

    class Tok:
        def __len__(self):
            return cfg.vocab_size + 7

    with pytest.raises(JaxtransError, match="the tokenizer has 104 tokens but the model 97"):
        export_merged(str(tmp_path / "m"), cfg, model.params, trainable, adapters, tokenizer=Tok())
    assert not os.path.exists(tmp_path / "m")  # nothing half-written
    with pytest.raises(JaxtransError, match="exceeds the 64-token cache"):
        generate(cfg, {"params": model.params}, [list(range(60))], SamplingConfig(max_new_tokens=8))


@pytest.mark.parametrize("tied", [False, True])
def test_peft_export_carries_modules_to_save(tmp_path, tied):
    """Fully trained embedding / LM head (lora.modules_to_save, as TransLLM's scripts train) go out as PEFT's
    modules_to_save, new-token rows included, and PEFT's logits equal jaxtrans'."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, path = tiny_hf_model(tmp_path, "llama", tie_word_embeddings=tied, seed=4)
    model, _ = jaxtrans.load_pretrained(path, with_tokenizer=False)
    cfg = model.config
    adapters = llama.Adapters(lora=LoraConfig.make(4, 8), new_tokens=NEW + PAD, padding_rows=PAD)
    trainable = _trained(cfg, adapters, seed=2)
    rng = np.random.default_rng(5)
    trained_base = {"embedding": np.asarray(model.params["embedding"]) + rng.normal(0, 0.05, (cfg.vocab_size, 64))}
    if not tied:
        kernel = np.asarray(model.params["lm_head"]["kernel"])
        trained_base["lm_head"] = {"kernel": kernel + rng.normal(0, 0.05, kernel.shape)}
    trainable["base"] = jax.tree.map(lambda x: np.asarray(x, np.float32), trained_base)
    out = export_peft(str(tmp_path / "peft"), cfg, trainable, adapters, base_model_name=path)
    import json

    config = json.load(open(os.path.join(out, "adapter_config.json")))
    assert config["modules_to_save"] == ["embed_tokens", "lm_head"]
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base.resize_token_embeddings(cfg.vocab_size + NEW)
    peft_model = PeftModel.from_pretrained(base, out).eval()
    tokens = np.array([[1, 5, cfg.vocab_size + 2, 96, 40, 2, cfg.vocab_size, 3]])
    rest = {k: v for k, v in trainable.items() if k != "base"}
    ours, _ = llama.Llama(cfg, adapters).apply({"params": {**model.params, **trainable["base"]}, **rest}, tokens)
    ours = np.asarray(ours, np.float64)[..., : cfg.vocab_size + NEW]
    with torch.no_grad():
        ref = peft_model(torch.tensor(tokens)).logits.numpy().astype(np.float64)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = _ours(cfg, adapters, model.params, rest, tokens)[..., : cfg.vocab_size + NEW]
    assert np.abs(plain - ref).max() > 1e-3  # the trained modules matter: leaving them out is visible
    with pytest.raises(JaxtransError, match="trains whole modules"):
        import_peft(out, cfg)
