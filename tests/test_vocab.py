"""Vocabulary extension: invariants on real tokenizers, zip-tie by hand, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxtrans.errors import JaxtransError
from jaxtrans.vocab.__main__ import fertility, load_any_tokenizer
from jaxtrans.vocab.extend import ExtendConfig, extend, load_report
from jaxtrans.vocab.init import new_rows, prepare

MIXED = [
    "ผมชอบ Python มาก และใช้ JAX ทุกวัน",
    "The meeting is at 3pm ที่กรุงเทพฯ, see you there!",
    "ราคา 1,250 บาท (ประมาณ 35 USD) รวม VAT แล้ว",
]


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    """Thai text (government news + social media); every tenth document is held back."""
    docs = [json.loads(line)["text"] for line in open(os.path.join(shared_data, "th-thaigov", "thaigov_sample.jsonl"))]
    social = [x.strip() for x in open(os.path.join(shared_data, "th-wisesight", "pos.txt")) if x.strip()]
    train = [d for i, d in enumerate(docs) if i % 10] + [w for i, w in enumerate(social) if i % 10]
    held = [d for i, d in enumerate(docs) if i % 10 == 0] + [w for i, w in enumerate(social) if i % 10 == 0]
    d = tmp_path_factory.mktemp("corpus")
    (d / "train.txt").write_text("\n".join(t.replace("\n", " ") for t in train))
    return {"train": str(d / "train.txt"), "held": [t.replace("\n", " ") for t in held]}


@pytest.fixture(scope="module")
def english(shared_data):
    texts = []
    for line in open(os.path.join(shared_data, "eval-mt-bench", "question.jsonl")):
        texts += json.loads(line)["turns"]
    alpaca = json.load(open(os.path.join(shared_data, "en-instruct-alpaca", "alpaca_data_1k.json")))
    texts += [r["instruction"] + ("\n" + r["input"] if r["input"] else "") for r in alpaca[:300]]
    return texts


def _extended(corpus, tmp_path_factory, base, n):
    out = str(tmp_path_factory.mktemp("tok") / "extended")
    extend(base, [corpus["train"]], ExtendConfig("th", n, pad_to_multiple=128), out)
    return out


@pytest.fixture(scope="module")
def llama2(shared_data, corpus, tmp_path_factory):
    base = os.path.join(shared_data, "tokenizer-llama2", "tokenizer.model")
    return base, _extended(corpus, tmp_path_factory, base, 8000)


@pytest.fixture(scope="module")
def smollm2(corpus, tmp_path_factory):
    return "embedded:smollm2", _extended(corpus, tmp_path_factory, "embedded:smollm2", 8000)


@pytest.mark.parametrize("which", ["llama2", "smollm2"])
def test_invariants(which, request, corpus, english):
    base_path, out = request.getfixturevalue(which)
    base, ext = load_any_tokenizer(base_path), load_any_tokenizer(out)
    report = load_report(out)
    # every original token keeps its id
    base_vocab = base.get_vocab()
    ext_vocab = ext.get_vocab()
    assert all(ext_vocab[tok] == i for tok, i in base_vocab.items())
    assert report["base_vocab_size"] == len(base) and len(ext) == len(base) + report["new_tokens"]
    # English encodes to exactly the same ids
    for text in english:
        assert ext(text)["input_ids"] == base(text)["input_ids"], text
    # Thai and mixed text round-trip wherever the base tokenizer round-trips
    checked = 0
    for text in corpus["held"] + MIXED:
        if base.decode(base(text, add_special_tokens=False)["input_ids"]) != text:
            continue
        assert ext.decode(ext(text, add_special_tokens=False)["input_ids"]) == text
        checked += 1
    assert checked >= 0.9 * len(corpus["held"])
    # the transfer tags are single special tokens
    for tag, tid in report["special_tokens"].items():
        assert ext(tag, add_special_tokens=False)["input_ids"] == [tid]
    # Thai gets much cheaper
    before, after = fertility(base, corpus["held"]), fertility(ext, corpus["held"])
    ratio = before["tokens_per_char"] / after["tokens_per_char"]
    print(f"{which}: Thai tokens/char {before['tokens_per_char']:.3f} -> {after['tokens_per_char']:.3f} ({ratio:.2f}x)")
    assert ratio >= 2.5
    assert report["model_vocab_size"] % 128 == 0


def test_zip_tie_on_a_hand_made_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from jaxtrans.vocab.extend import _bpe_base_ids

    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")])))
    splits = _bpe_base_ids(tok, ["abc", "ca", "abab"])
    assert splits == [[3, 2], [2, 0], [3, 3]]
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, -2.0]], np.float32)
    head = emb.T * 10  # an untied head [D, V]
    rows = new_rows(emb, head, splits, padding=1)
    # by hand: abc -> mean(E[ab], E[c]) = ((4+2)/2, (-2+2)/2) = (3, 0); ca -> (1.5, 1); abab -> (4, -2)
    np.testing.assert_allclose(rows["embedding"], [[3.0, 0.0], [1.5, 1.0], [4.0, -2.0], [0.0, 0.0]])
    np.testing.assert_allclose(rows["head"], np.array([[30.0, 0.0], [15.0, 10.0], [40.0, -20.0], [0.0, 0.0]]).T)
    first = new_rows(emb, head, splits, head="first")
    np.testing.assert_allclose(first["head"], np.array([[40.0, -20.0], [20.0, 20.0], [40.0, -20.0]]).T)
    np.testing.assert_allclose(first["embedding"], rows["embedding"][:3])  # the embedding stays the mean
    mean = new_rows(emb, None, splits, method="mean")["embedding"]
    np.testing.assert_allclose(mean, np.tile(emb.mean(0), (3, 1)))
    rand = new_rows(emb, None, splits * 300, method="random", seed=0)["embedding"]
    assert abs(rand.std() - emb.std()) < 0.1 * emb.std()


def test_model_rows_follow_the_report(smollm2):
    import jax
    import jax.numpy as jnp

    import jaxtrans
    from jaxtrans.model import llama

    _, out = smollm2
    model, _ = jaxtrans.load_pretrained("embedded:smollm2", with_tokenizer=False)
    adapters, rows = prepare(model.config, model.params, out)
    report = load_report(out)
    assert adapters.new_tokens == report["model_vocab_size"] - model.config.vocab_size
    entry = report["entries"][0]
    expect = np.asarray(model.params["embedding"])[entry["base_ids"]].mean(0)
    np.testing.assert_allclose(rows["embedding"][0], expect, rtol=1e-6)
    tokens = jnp.asarray([[1, 2, entry["id"], report["vocab_size"] - 1]], jnp.int32)
    logits, _ = llama.Llama(model.config, adapters).apply({"params": model.params, "new_rows": rows}, tokens)
    assert logits.shape[-1] == report["model_vocab_size"]
    assert float(jnp.max(logits[..., report["vocab_size"] :])) <= -1e8  # padding rows are never predicted
    with pytest.raises(JaxtransError, match="extends a 49152-token vocabulary but the model has 100"):
        prepare(model.config.replace(vocab_size=100), jax.tree.map(lambda x: x[:100], model.params), out)


def _assert_refused(tmp_path, match, base, corpus, cfg=None):
    out = tmp_path / "out"
    with pytest.raises(JaxtransError, match=match):
        extend(base, corpus, cfg or ExtendConfig("th", 500), str(out))
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".vocab-")]


def test_bad_input(tmp_path, shared_data):
    llama2 = os.path.join(shared_data, "tokenizer-llama2", "tokenizer.model")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    english = tmp_path / "english.txt"
    english.write_text("Only English here.\nNothing else.\n")
    _assert_refused(tmp_path, "is empty", llama2, [str(empty)])
    _assert_refused(tmp_path, "has no 'th' characters", llama2, [str(english)])
    with pytest.raises(JaxtransError, match="leaves no room"):
        ExtendConfig("th", 3)
    # a SentencePiece unigram model is not supported
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=str(english),
        model_prefix=str(tmp_path / "uni"),
        vocab_size=30,
        model_type="unigram",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    _assert_refused(tmp_path, "UNIGRAM model", str(tmp_path / "uni.model"), [str(english)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "สวัสดี"}\n{not json\n')
    _assert_refused(tmp_path, r"bad.jsonl:2: malformed JSON", llama2, [str(bad)])
    (tmp_path / "existing").mkdir()
    with pytest.raises(JaxtransError, match="already exists"):
        extend(llama2, [str(bad)], ExtendConfig("th", 500), str(tmp_path / "existing"))
