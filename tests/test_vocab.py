"""Vocabulary extension on every tokenizer layout in use today: invariants, fertility, records, bad input.

Layouts: the real Llama-2 SentencePiece model (also with user-defined and control pieces appended after
its vocabulary), SmolLM2's real byte-level BPE, and synthetic byte-level BPEs built with ``tokenizers``
(tests/layouts.py): Llama-3 (specials and reserved specials *after* the BPE vocabulary, GPT-4 regex),
Qwen2/GPT-4 style, and specials first (SmolLM2).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxtrans.errors import JaxtransError
from jaxtrans.vocab.base import load_tokenizer
from jaxtrans.vocab.extend import ExtendConfig, extend, load_report
from jaxtrans.vocab.fertility import fertility
from jaxtrans.vocab.init import new_rows, prepare
from jaxtrans.vocab.pretokenize import script_marks, target_pretokenizer, widen_pattern
from tests import layouts

MIXED = [
    "ผมชอบ Python มาก และใช้ JAX ทุกวัน",
    "The meeting is at 3pm ที่กรุงเทพฯ, see you there!",
    "ราคา 1,250 บาท (ประมาณ 35 USD) รวม VAT แล้ว",
    'เขาพูดว่า "don\'t worry" แล้วก็เดินไป\n\nบรรทัดใหม่ ๑๒๓',
]
THAI = [(0x0E00, 0x0E7F)]


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


def _extended(corpus, tmp_path_factory, base, n, **kw):
    out = str(tmp_path_factory.mktemp("tok") / "extended")
    extend(base, [corpus["train"]], ExtendConfig("th", n, pad_to_multiple=128, **kw), out)
    return out


@pytest.fixture(scope="module")
def llama2(shared_data, corpus, tmp_path_factory):
    base = os.path.join(shared_data, "tokenizer-llama2", "tokenizer.model")
    return base, _extended(corpus, tmp_path_factory, base, 8000)


@pytest.fixture(scope="module")
def llama2_user_defined(shared_data, corpus, tmp_path_factory):
    """Llama-2's model with control and user-defined pieces appended after its vocabulary (Mistral-v3 style)."""
    from jaxtrans.vocab import spm

    proto = spm.read_proto(os.path.join(shared_data, "tokenizer-llama2", "tokenizer.model"))
    for piece, kind in [("[INST]", 3), ("[/INST]", 3), ("<tool>", 4), ("<|pad|>", 4)]:
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, 0.0, kind
    d = tmp_path_factory.mktemp("ud")
    (d / "tokenizer.model").write_bytes(proto.SerializeToString())
    return str(d / "tokenizer.model"), _extended(corpus, tmp_path_factory, str(d / "tokenizer.model"), 2000)


@pytest.fixture(scope="module")
def smollm2(corpus, tmp_path_factory):
    return "embedded:smollm2", _extended(corpus, tmp_path_factory, "embedded:smollm2", 8000)


@pytest.fixture(scope="module", params=layouts.LAYOUTS)
def synthetic(request, shared_data, corpus, tmp_path_factory):
    base = layouts.build(request.param, shared_data, str(tmp_path_factory.mktemp("base")))
    return base, _extended(corpus, tmp_path_factory, base, 2000)


def _english_conversations(english):
    return [
        [{"role": "user", "content": english[i]}, {"role": "assistant", "content": english[i + 1]}]
        for i in range(0, 40, 2)
    ]


def _check_invariants(base_path, out, corpus, english):
    from tokenizers import Tokenizer

    base, ext = load_tokenizer(base_path), load_tokenizer(out)
    report = load_report(out)
    # every original token, BPE and added/special, keeps its id: the whole table compared
    base_vocab, ext_vocab = base.get_vocab(), ext.get_vocab()
    assert {t: ext_vocab[t] for t in base_vocab} == base_vocab
    first = max(base_vocab.values()) + 1
    assert report["base_vocab_size"] == first
    new_ids = sorted(e["id"] for e in report["entries"])
    assert new_ids == list(range(first, first + report["new_tokens"]))  # contiguous after the largest original id
    assert len(ext) == len(ext_vocab) == first + report["new_tokens"] == report["vocab_size"]
    # transformers, tokenizers and the saved tokenizer.json agree
    raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert raw.get_vocab(with_added_tokens=True) == ext_vocab
    assert ext.convert_ids_to_tokens(list(base_vocab.values())) == list(base_vocab)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ext, name) == getattr(base, name), name
    # English encodes to exactly the same ids, special tokens included
    for text in english:
        assert ext(text)["input_ids"] == base(text)["input_ids"], text
    # chat template output is identical for English conversations
    if base.chat_template:
        for conv in _english_conversations(english):
            a = base.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            assert ext.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == a
            assert ext(a, add_special_tokens=False)["input_ids"] == base(a, add_special_tokens=False)["input_ids"]
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
    return base, ext, report


@pytest.mark.parametrize("which", ["llama2", "smollm2"])
def test_invariants_and_fertility_on_real_tokenizers(which, request, corpus, english):
    base_path, out = request.getfixturevalue(which)
    base, ext, report = _check_invariants(base_path, out, corpus, english)
    before, after = fertility(base, corpus["held"]), fertility(ext, corpus["held"])
    print(f"{which}: Thai tokens/char {before['tokens_per_char']:.3f} -> {after['tokens_per_char']:.3f}")
    assert after["tokens_per_char"] <= 0.32  # 8,000 new tokens: as good as a Thai-only tokenizer of that size
    assert report["model_vocab_size"] % 128 == 0
    if report["kind"] == "bpe":
        assert report["pretokenizer"] == "target marks kept on letters"


def test_sentencepiece_and_transformers_segment_alike(llama2, corpus, english):
    """The saved tokenizer.model (SentencePiece) and tokenizer.json (transformers) give the same ids.

    Compared wherever the two libraries agree on the *base* model (they differ on runs of spaces already).
    """
    import sentencepiece as spm

    base_path, out = llama2
    sp_base, hf_base = spm.SentencePieceProcessor(model_file=base_path), load_tokenizer(base_path)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    hf = load_tokenizer(out)
    checked = 0
    for text in corpus["held"] + MIXED + english[:100]:
        if sp_base.encode(text) != hf_base(text, add_special_tokens=False)["input_ids"]:
            continue
        assert sp.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text[:80]
        checked += 1
    assert checked >= 0.95 * len(corpus["held"])


def test_invariants_with_control_and_user_defined_pieces_after_the_vocabulary(llama2_user_defined, corpus, english):
    base_path, out = llama2_user_defined
    base, ext, _ = _check_invariants(base_path, out, corpus, english)
    for piece in ("[INST]", "<tool>"):
        assert (
            ext(f"a {piece} b", add_special_tokens=False)["input_ids"]
            == base(f"a {piece} b", add_special_tokens=False)["input_ids"]
        )


def test_invariants_on_synthetic_layouts(synthetic, corpus, english):
    base_path, out = synthetic
    base, ext, report = _check_invariants(base_path, out, corpus, english)
    before, after = fertility(base, corpus["held"]), fertility(ext, corpus["held"])
    assert after["tokens_per_char"] < 0.6 * before["tokens_per_char"]
    if "llama3" in base_path:  # the specials after the BPE vocabulary are where they were
        vocab = base.get_vocab()
        assert ext.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>"]) == [
            vocab["<|begin_of_text|>"],
            vocab["<|eot_id|>"],
        ]
        assert min(report["special_tokens"].values()) > vocab["<|reserved_special_token_39|>"]


def test_pretokenizer_keeps_marks_and_leaves_other_text_alone(shared_data, english, tmp_path):
    from tokenizers import Tokenizer

    marks = script_marks(THAI)
    assert marks == [(0x0E31, 0x0E31), (0x0E34, 0x0E3A), (0x0E47, 0x0E4E)]
    wide = widen_pattern(layouts.GPT4_PATTERN, marks)
    assert r"[^\r\n\p{L}\x{0E31}\x{0E34}-\x{0E3A}\x{0E47}-\x{0E4E}\p{N}]?[\p{L}\x{0E31}" in wide
    base = Tokenizer.from_file(os.path.join(layouts.build("llama3", shared_data, str(tmp_path)), "tokenizer.json"))
    before = json.loads(base.to_str())
    after = {**before, "pre_tokenizer": target_pretokenizer(before["pre_tokenizer"], THAI)}
    new = Tokenizer.from_str(json.dumps(after))
    assert [p for p, _ in new.pre_tokenizer.pre_tokenize_str("ที่กรุงเทพฯ เมื่อวาน")] == [
        "à¸Ĺà¸µà¹Īà¸ģà¸£à¸¸à¸ĩà¹Ģà¸Ĺà¸ŀà¸¯",
        "Ġà¹Ģà¸¡à¸·à¹Īà¸Ńà¸§à¸²à¸Ļ",
    ]  # whole words, where the base cuts at every vowel sign and tone mark
    assert len(base.pre_tokenizer.pre_tokenize_str("ที่กรุงเทพฯ")) > 3
    for text in english + MIXED[1:2]:
        if not any(0x0E00 <= ord(c) <= 0x0E7F for c in text):
            assert new.pre_tokenizer.pre_tokenize_str(text) == base.pre_tokenizer.pre_tokenize_str(text)
    # GPT-2's built-in pattern (ByteLevel use_regex) becomes an explicit, equivalent Split
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert target_pretokenizer(byte_level, THAI)["pretokenizers"][1]["use_regex"] is False
    assert target_pretokenizer(byte_level, [(0x4E00, 0x9FFF)]) is None  # Han has no combining marks
    assert target_pretokenizer({"type": "Metaspace", "replacement": "▁"}, THAI) is None


def test_pretokenize_off_keeps_the_base_pretokenizer(smollm2, corpus, tmp_path):
    out = str(tmp_path / "plain")
    report = extend("embedded:smollm2", [corpus["train"]], ExtendConfig("th", 300, pretokenize=False), out)
    assert report["pretokenizer"] == "unchanged"
    base, ext = load_tokenizer("embedded:smollm2"), load_tokenizer(out)
    assert ext.backend_tokenizer.pre_tokenizer.__getstate__() == base.backend_tokenizer.pre_tokenizer.__getstate__()


def test_zip_tie_on_a_hand_made_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from jaxtrans.vocab.bpe import base_splits

    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")])))
    splits = base_splits(tok, ["abc", "ca", "abab"])
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


def test_the_record_reproduces_the_resize(shared_data, corpus, tmp_path):
    """jaxtrans_vocab.json names the base, its vocabulary digest and the init method; rows follow the record."""
    base = layouts.build("llama3", shared_data, str(tmp_path))
    out = str(tmp_path / "ext")
    report = extend(base, [corpus["train"]], ExtendConfig("th", 200, init="mean", head_init="first"), out)
    assert report["init"] == {"method": "mean", "head": "first", "seed": 0, "options": {}}
    assert report["base_vocab_digest"] == load_report(out)["base_vocab_digest"]
    n = report["base_vocab_size"]
    rng = np.random.default_rng(0)
    params = {"embedding": rng.normal(size=(n, 8)).astype(np.float32), "lm_head": {"kernel": rng.normal(size=(8, n))}}

    class Cfg:
        vocab_size, tie_embeddings = n, False

    _, rows = prepare(Cfg, params, out)  # the recorded method, not zip_tie
    np.testing.assert_allclose(rows["embedding"][0], params["embedding"].mean(0), rtol=1e-5)
    again = str(tmp_path / "again")
    extend(base, [corpus["train"]], ExtendConfig("th", 200, init="mean", head_init="first"), again)
    same = [open(os.path.join(d, "tokenizer.json"), "rb").read() for d in (out, again)]
    assert same[0] == same[1]


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
    with pytest.raises(JaxtransError, match="pad_to_multiple=-7 is negative"):
        ExtendConfig("th", 500, pad_to_multiple=-7)
    with pytest.raises(JaxtransError, match="init 'fvt' is not one of zip_tie, mean, random, mean_cov, omp"):
        ExtendConfig("th", 500, init="fvt")
    with pytest.raises(JaxtransError, match="no script known for language 'xx'"):
        ExtendConfig("xx", 500)
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
    cut = tmp_path / "cut.txt"
    cut.write_bytes("สวัสดีครับ\nทดสอบ".encode()[:-1])  # the last character loses its last byte
    _assert_refused(tmp_path, r"cut.txt:2: the file ends inside a multi-byte UTF-8 character", llama2, [str(cut)])
    good = tmp_path / "good.txt"
    good.write_text("สวัสดีครับ ผมชื่อสมชาย\nวันนี้อากาศดีมาก\n" * 20)
    _assert_refused(tmp_path, "special tokens \\['<s>'\\] already exist", llama2, [str(good)],
                    ExtendConfig("th", 500, special_tokens=("<s>", "<TH>")))  # fmt: skip
    _assert_refused(tmp_path, "has no tokenizer", str(tmp_path), [str(good)])
    (tmp_path / "existing").mkdir()
    with pytest.raises(JaxtransError, match="already exists"):
        extend(llama2, [str(bad)], ExtendConfig("th", 500), str(tmp_path / "existing"))


def test_cli_says_what_it_could_not_do(shared_data, tmp_path):
    """Asking for more tokens than the corpus yields is said on stderr; bad values exit 2 with one line."""
    import subprocess
    import sys

    small = tmp_path / "small.txt"
    small.write_text("สวัสดีครับ ผมชื่อสมชาย\nวันนี้อากาศดีมาก\n" * 20)
    base = layouts.build("llama3", shared_data, str(tmp_path))
    cmd = [sys.executable, "-m", "jaxtrans.vocab", "extend", "--base", base, "--corpus", str(small)]
    run = subprocess.run([*cmd, "--new-tokens", "100000", "--out", str(tmp_path / "o")], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "asked for 99997 new 'th' tokens, the corpus yielded" in run.stderr
    bad = subprocess.run([*cmd, "--pad-to", "-7", "--out", str(tmp_path / "p")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("jaxtrans: error: pad_to_multiple")
    assert not (tmp_path / "p").exists()


def test_omp_recovers_a_known_sparse_combination():
    from jaxtrans.vocab.omp import omp, omp_rows

    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(500, 32))
    target = 0.7 * atoms[3] - 0.2 * atoms[10] + 1.5 * atoms[42]
    idx, coef = omp(atoms, target, k=8)
    assert sorted(idx.tolist()) == [3, 10, 42]
    np.testing.assert_allclose(dict(zip(idx.tolist(), coef, strict=True))[10], -0.2, atol=1e-9)
    idx, coef = omp(atoms, target, k=1)  # k bounds the combination
    assert len(idx) == 1 and idx[0] in (3, 10, 42)
    # the batched version with a candidate pool finds the same
    (idx2,), (coef2,) = omp_rows(atoms, target[None], k=8)
    assert sorted(idx2.tolist()) == [3, 10, 42]


def test_mean_cov_and_omp_rows_and_the_record_recreates_them():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(16, 16))
    emb = (rng.normal(size=(4000, 16)) @ mix + 3.0).astype(np.float32)  # correlated dimensions, non-zero mean
    splits = [[i, i + 1] for i in range(0, 3000, 3)]  # 1,000 new tokens
    rows = new_rows(emb, None, splits, method="mean_cov", seed=0)["embedding"]
    np.testing.assert_allclose(rows.mean(0), emb.mean(0), atol=0.35)
    cov, ref = np.cov(rows.T), np.cov(emb.T)
    assert np.abs(cov - ref).max() <= 0.1 * np.abs(ref).max()
    small = new_rows(emb, None, splits, method="mean_cov", seed=0, cov_scale=1e-4)["embedding"]
    spread = (small - emb.mean(0)).std() / (emb - emb.mean(0)).std()
    assert 0.005 < spread < 0.02  # sqrt(1e-4) = 1% of the originals' spread: almost the mean (transformers-style)
    # omp: the embedding row reproduces the zip-tie vector; the untied head takes the same coefficients
    # (in 128 dimensions, as real tables have hundreds: in 16, random rows out-correlate the pieces)
    wide, wide_head = rng.normal(size=(2000, 128)).astype(np.float32), rng.normal(size=(128, 2000)).astype(np.float32)
    out = new_rows(wide, wide_head, splits[:20], method="omp", k=8)
    zip_tie = new_rows(wide, wide_head, splits[:20])
    np.testing.assert_allclose(out["embedding"], zip_tie["embedding"], atol=1e-4)
    np.testing.assert_allclose(out["head"], zip_tie["head"], atol=1e-4)  # the pieces, with weights 1/2 each
    # the same method, options and seed give identical rows (what the record is for)
    again = new_rows(emb, None, splits, method="mean_cov", seed=0)["embedding"]
    np.testing.assert_array_equal(rows, again)
    assert not np.array_equal(rows, new_rows(emb, None, splits, method="mean_cov", seed=1)["embedding"])


def test_prepare_uses_the_recorded_method_and_options(shared_data, corpus, tmp_path):
    base = layouts.build("llama3", shared_data, str(tmp_path))
    out = str(tmp_path / "ext")
    report = extend(base, [corpus["train"]], ExtendConfig("th", 150, init="mean_cov", init_cov_scale=0.5, init_seed=7),
                    out)  # fmt: skip
    assert report["init"] == {"method": "mean_cov", "head": "zip_tie", "seed": 7, "options": {"cov_scale": 0.5}}
    n = report["base_vocab_size"]
    rng = np.random.default_rng(0)
    params = {"embedding": rng.normal(size=(n, 8)).astype(np.float32)}

    class Cfg:
        vocab_size, tie_embeddings = n, True

    _, rows = prepare(Cfg, params, out)
    splits = [e["base_ids"] for e in sorted(report["entries"], key=lambda e: e["id"])]
    expect = new_rows(params["embedding"], None, splits, method="mean_cov", seed=7, cov_scale=0.5)["embedding"]
    np.testing.assert_array_equal(rows["embedding"], expect)
