"""A model whose tokenizer keeps its specials after the BPE vocabulary (Llama-3 layout), extended with Thai:
it trains, exports (merged HF and PEFT), and loads in transformers/peft with equal logits and the same ids."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch

import jaxtrans
from jaxtrans import sharding
from jaxtrans.export import ADAPTER_INFO, export_merged, export_peft
from jaxtrans.model import llama
from jaxtrans.model.lora import LoraConfig
from jaxtrans.train.optim import OptimConfig
from jaxtrans.train.step import Trainer
from jaxtrans.vocab.base import load_tokenizer
from jaxtrans.vocab.extend import REPORT, ExtendConfig, extend, load_report
from jaxtrans.vocab.init import prepare
from tests import layouts
from tests.conftest import tiny_hf_model

CHAT = [
    {"role": "user", "content": "แปลเป็นภาษาอังกฤษ: ผมชอบกินข้าวผัดที่กรุงเทพฯ"},
    {"role": "assistant", "content": "I like eating fried rice in Bangkok."},
]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("l3")
    base_tok_dir = layouts.build("llama3", shared_data, str(tmp))
    base_tok = load_tokenizer(base_tok_dir)
    _, model_dir = tiny_hf_model(tmp, "llama", vocab_size=len(base_tok), max_position_embeddings=256)
    thaigov = os.path.join(shared_data, "th-thaigov", "thaigov_sample.jsonl")
    docs = [json.loads(x)["text"].replace("\n", " ") for x in open(thaigov)]
    corpus = tmp / "thai.txt"
    corpus.write_text("\n".join(docs[:-30]))
    tok_dir = str(tmp / "tok")
    extend(base_tok_dir, [str(corpus)], ExtendConfig("th", 300, pad_to_multiple=64), tok_dir)
    tok = load_tokenizer(tok_dir)
    model, _ = jaxtrans.load_pretrained(model_dir, with_tokenizer=False)
    cfg = model.config
    rows_only, rows = prepare(cfg, model.params, tok_dir)
    lc = LoraConfig.make(4, 8, targets="q,k,v,o,gate,up,down")
    adapters = llama.Adapters(lora=lc, new_tokens=rows_only.new_tokens, padding_rows=rows_only.padding_rows)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    trainer = Trainer(cfg, adapters, OptimConfig(1e-2, schedule="constant", total_steps=4), mesh)
    trainable = trainer.init_state(model.params).trainable
    trainable["new_rows"] = jax.tree.map(jax.numpy.asarray, rows)
    state = trainer.make_state(model.params, trainable)
    ids = tok(docs[-30:], add_special_tokens=True)["input_ids"]
    flat = np.concatenate([np.asarray(x) for x in ids])[: 4 * 2 * 65].reshape(4, 2, 65).astype(np.int32)
    step = trainer.compiled_step(model.params)
    losses = []
    for i in range(4):
        ones = np.ones((1, 2, 64), np.int32)
        pos = np.broadcast_to(np.arange(64, dtype=np.int32), (1, 2, 64))
        batch = {"tokens": flat[i : i + 1, :, :-1], "targets": flat[i : i + 1, :, 1:], "loss_mask": ones,
                 "segment_ids": ones, "positions": pos}  # fmt: skip
        state, metrics = step(state, model.params, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    out = jax.device_get(state.trainable)
    assert np.abs(out["new_rows"]["embedding"] - rows["embedding"]).max() > 0  # the new rows trained
    return {"base_tok": base_tok, "tok": tok, "tok_dir": tok_dir, "model": model, "model_dir": model_dir,
            "adapters": adapters, "trainable": out, "tmp": tmp}  # fmt: skip


def _ours(t, tokens):
    logits, _ = llama.Llama(t["model"].config, t["adapters"]).apply(
        {"params": t["model"].params, **t["trainable"]}, np.asarray(tokens, np.int32)
    )
    return np.asarray(logits, np.float64)[..., : len(t["tok"])]


def _chat_ids(tok):
    text = tok.apply_chat_template(CHAT, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_merged_export_keeps_special_ids_and_logits(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = trained
    record = load_report(t["tok_dir"])
    out = export_merged(str(t["tmp"] / "merged"), t["model"].config, t["model"].params, t["trainable"],
                        t["adapters"], tokenizer=t["tok"], vocab_record=record)  # fmt: skip
    hf_tok = AutoTokenizer.from_pretrained(out)
    base_vocab = t["base_tok"].get_vocab()
    assert hf_tok.convert_tokens_to_ids("<|eot_id|>") == base_vocab["<|eot_id|>"]
    assert hf_tok.bos_token_id == base_vocab["<|begin_of_text|>"]
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert base_vocab["<|eot_id|>"] in np.atleast_1d(gen["eos_token_id"]).tolist()
    assert json.load(open(os.path.join(out, REPORT)))["init"]["method"] == "zip_tie"
    ids = _chat_ids(hf_tok)
    assert ids == _chat_ids(t["tok"])
    assert max(ids) >= len(t["base_tok"])  # new Thai tokens are in the input
    assert ids.count(base_vocab["<|eot_id|>"]) == 2 and ids[0] == base_vocab["<|begin_of_text|>"]
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.vocab_size == len(t["tok"])
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy().astype(np.float64)
    assert np.abs(_ours(t, [ids]) - ref).max() <= 1e-4


def test_peft_export_loads_with_its_tokenizer(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = trained
    record = load_report(t["tok_dir"])
    out = export_peft(str(t["tmp"] / "peft"), t["model"].config, t["trainable"], t["adapters"],
                      base_model_name=t["model_dir"], tokenizer=t["tok"], vocab_record=record)  # fmt: skip
    info = json.load(open(os.path.join(out, ADAPTER_INFO)))
    assert info["vocab"]["init"] == {"method": "zip_tie", "head": "zip_tie", "seed": 0, "options": {}}
    assert info["vocab"]["base_vocab_digest"] == record["base_vocab_digest"]
    assert len(load_report(out)["entries"]) == record["new_tokens"]
    hf_tok = AutoTokenizer.from_pretrained(out)
    ids = _chat_ids(hf_tok)
    assert ids == _chat_ids(t["tok"])
    base = AutoModelForCausalLM.from_pretrained(t["model_dir"], dtype=torch.float32)
    base.resize_token_embeddings(info["vocab_size"])
    peft_model = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        ref = peft_model(torch.tensor([ids])).logits.numpy().astype(np.float64)
    assert np.abs(_ours(t, [ids]) - ref).max() <= 1e-4
