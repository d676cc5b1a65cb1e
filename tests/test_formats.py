"""Golden token ids and loss masks of the transfer formats, and packing invariants."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jaxtrans.data.formats import Tags, encode_chat, encode_text, recovery_answer, taco_answer, tcot_answer
from jaxtrans.data.pack import pack
from jaxtrans.errors import JaxtransError

TCOT = [
    {"role": "user", "content": "สวัสดี"},
    {"role": "assistant", "content": tcot_answer("Hello", "Hi there!", "สวัสดีครับ")},
]


@pytest.fixture(scope="module")
def smollm2():
    from jaxtrans.pretrained import load_tokenizer, resolve

    return load_tokenizer(resolve("embedded:smollm2"))


@pytest.fixture(scope="module")
def llama2(shared_data):
    from jaxtrans.vocab.base import hf_tokenizer_for_spm

    return hf_tokenizer_for_spm(os.path.join(shared_data, "tokenizer-llama2", "tokenizer.model"))


def test_tcot_golden_llama2(llama2):
    ids, trained = encode_chat(llama2, TCOT)
    assert ids.tolist() == [
        1, 29961, 25580, 29962, 29871, 30547, 30492, 30510, 30547, 30718, 30691, 518, 29914, 25580, 29962,
        529, 1430, 29958, 15043, 529, 1525, 5550, 1164, 1660, 29958, 6324, 727, 29991, 529, 4690, 29958,
        29871, 30547, 30492, 30510, 30547, 30718, 30691, 30759, 30297, 30510, 30526, 29871, 2,
    ]  # fmt: skip
    assert trained.tolist() == [0] * 15 + [1] * 29
    assert llama2.decode(ids) == "<s>[INST] สวัสดี [/INST] <EN> Hello <RESPONSE> Hi there! <TH> สวัสดีครับ </s>"


def test_tcot_golden_smollm2(smollm2):
    ids, trained = encode_chat(smollm2, TCOT)
    assert len(ids) == 79 and trained.tolist() == [0] * 42 + [1] * 37
    assert ids[42:47].tolist() == [44, 2680, 46, 38699, 2067]  # "<EN> Hello"
    assert smollm2.decode(ids[trained == 1]) == "<EN> Hello <RESPONSE> Hi there! <TH> สวัสดีครับ<|im_end|>\n"
    assert smollm2.decode(ids[trained == 0]).endswith("<|im_start|>user\nสวัสดี<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("tok_name", ["smollm2", "llama2"])
def test_recovery_taco_and_multi_turn(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    end = "<|im_end|>\n" if tok_name == "smollm2" else " </s>"
    rec = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": recovery_answer("Blue.")}]
    ids, trained = encode_chat(tok, rec)
    assert tok.decode(ids[trained == 1]) == "<RESPONSE> Blue." + end
    answer = taco_answer("Say hi", "Hi!", "नमस्ते!", "Nepali")
    taco = [{"role": "user", "content": "नमस्ते भन्नुहोस्"}, {"role": "assistant", "content": answer}]
    ids, trained = encode_chat(tok, taco)
    expected = "Instruction in English: Say hi\nResponse in English: Hi!\nResponse in Nepali: नमस्ते!" + end
    assert tok.decode(ids[trained == 1]) == expected
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine."},
    ]
    ids, trained = encode_chat(tok, chat)
    runs = np.flatnonzero(np.diff(np.concatenate([[0], trained, [0]])))  # start/stop of trained spans
    spans = [tok.decode(ids[a:b]) for a, b in zip(runs[::2], runs[1::2], strict=True)]
    assert spans == ["Hello!" + end, "Fine." + end]  # both assistant turns, nothing of the user's
    with pytest.raises(JaxtransError, match="must end with an assistant message"):
        encode_chat(tok, chat[:3])


def test_tags_are_configurable():
    assert tcot_answer("q", "a", "ก", Tags(target="<NE>")) == "<EN> q <RESPONSE> a <NE> ก"


def test_packing_keeps_examples_apart(smollm2):
    examples = [encode_text(smollm2, t) for t in ["one two three", "four", "five six seven eight nine ten"]]
    rows, stats = pack(examples, seq_len=16, pad_id=2)
    assert stats.rows == 1 and stats.examples == 3
    seg, pos, tgt, tok = rows["segment_ids"][0], rows["positions"][0], rows["targets"][0], rows["tokens"][0]
    start = 0
    for k, (ids, _) in enumerate(examples, 1):
        n = len(ids) - 1
        assert (seg[start : start + n] == k).all()
        assert pos[start : start + n].tolist() == list(range(n))
        assert tgt[start : start + n].tolist() == ids[1:].tolist()  # targets never cross into the next example
        assert tok[start : start + n].tolist() == ids[:-1].tolist()
        start += n
    assert (seg[start:] == 0).all() and (rows["loss_mask"][0][start:] == 0).all()
    long = [(np.arange(40), np.ones(40, np.int32))]
    assert pack(long, 16)[1].truncated == 1 and pack(long, 16, too_long="skip")[1].skipped == 1
    with pytest.raises(JaxtransError, match="example 0 has 40 tokens, more than the 16-token rows"):
        pack(long, 16, too_long="error")


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<EN> What is X? <RESPONSE> X is Y. <TH> X คือ Y", True),
        ("<EN>q<RESPONSE>a<TH>t", True),  # no spaces needed
        ("preamble <EN> q <RESPONSE> a <TH> t", True),  # text before the structure does not break it
        ("<EN> q <TH> t <RESPONSE> a", False),  # out of order
        ("<EN> q <RESPONSE> a <TH>", False),  # no target answer
        ("<EN> <RESPONSE> a <TH> t", False),  # empty English query
        ("<EN> q <RESPONSE> a", False),  # cut before the target tag
        ("> What is the English word? Thai word", False),  # the base tokens, not the tags
        ("<RESPONSE> an English answer", False),
    ],
)
def test_tcot_format_on_golden_answers(text, ok):
    from jaxtrans.infer.answer_formats import format_rate
    from jaxtrans.infer.tcot import in_format

    assert in_format(text) is ok
    assert in_format(text.replace("<TH>", "<NE>"), Tags(target="<NE>")) is ok
    assert format_rate([text, "<EN> q <RESPONSE> a <TH> t"], "tcot", Tags(), "Thai") == (1.0 if ok else 0.5)
    assert format_rate([], "tcot", Tags(), "Thai") == 0.0


@pytest.mark.parametrize(
    "text,ok",
    [
        ("Instruction in English: Say hi.\nResponse in English: Hi!\nResponse in Nepali: नमस्ते!", True),
        ("Response in English: Hi!\nResponse in Nepali: नमस्ते!", True),  # the restated instruction is optional
        ("response in english: Hi! response in nepali: नमस्ते", True),  # case does not matter
        ("Instruction in English: Say hi.\nResponse in English: Hi!", False),  # cut before the Nepali section
        ("Response in Nepali: नमस्ते\nResponse in English: Hi!", False),  # out of order
        ("Response in English:\nResponse in Nepali: नमस्ते", False),  # empty English response
        ("Response in English: Hi!\nResponse in Nepali:", False),  # empty Nepali response
        ("Response in English: Hi!\nResponse in Hindi: नमस्ते", False),  # another language's section
        ("नमस्ते, म ठिक छु।", False),  # a plain answer
    ],
)
def test_taco_format_on_golden_answers(text, ok):
    """TaCo's format rate (``eval.answer_format="taco"``) reads the two response sections, in order."""
    from jaxtrans.infer.answer_formats import FORMATS, format_rate
    from jaxtrans.infer.taco import parse

    assert FORMATS["taco"].in_format(text, Tags(), "Nepali") is ok
    assert format_rate([text, "Response in English: a\nResponse in Nepali: b"], "taco", Tags(), "Nepali") == (
        1.0 if ok else 0.5
    )
    if ok:
        assert parse(text, "Nepali").answer.startswith("नमस्ते") and parse(text, "Nepali").en_answer.startswith("Hi")


def test_answer_format_follows_the_curriculum():
    """A TaCo recipe is checked for TaCo's format, a TransLLM one for TCOT; an unknown format is refused."""
    from jaxtrans import config
    from jaxtrans.curriculum.points import spec
    from jaxtrans.errors import JaxtransError
    from jaxtrans.eval.suite import EvalSpec

    assert spec(config.load_file("configs/taco_nepali.py:local")).answer_format == "taco"
    assert spec(config.load_file("configs/thai.py")).answer_format == "tcot"
    with pytest.raises(JaxtransError, match="answer_format='tcoot' is unknown; use one of tcot, taco"):
        EvalSpec.from_config({"answer_format": "tcoot"})


@pytest.mark.parametrize("name", ["smollm2", "llama2"])
def test_answers_are_cut_at_whole_characters(name, request):
    """Every prefix of a Thai answer's ids (as ``max_new_tokens`` cuts them) decodes to whole characters: a
    prefix of the text, no U+FFFD, and the dropped partial sequence counted."""
    from jaxtrans.data.template import decode_answer, decode_counted

    tok = request.getfixturevalue(name)
    text = "สวัสดีครับ ภาษาไทย 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    partial = 0
    for n in range(1, len(ids) + 1):
        got = decode_answer(tok, ids[:n], [])
        assert "\ufffd" not in got and text.startswith(got), (n, got)
        partial += decode_counted(tok, ids[:n], [])[1] > 0
    assert decode_answer(tok, ids, []) == text and decode_counted(tok, ids, []) == (text, 0)
    assert partial > 0  # byte-level pieces of Thai / the emoji: some cuts fall inside a character


@pytest.mark.parametrize(
    "text,kept",
    [
        ("The capital is Paris. It has many muse", "The capital is Paris."),
        ("Steps:\n1. Boil water\n2. Add te", "Steps:\n1. Boil water"),  # "2." is a list number, not an end
        ("Is it true? Yes, it is! Mostly so, and th", "Is it true? Yes, it is!"),
        ("One long clause that never ends before the cut", "One long clause that never ends before the cut"),
        ("Hi. Then a very long second sentence that runs on and on and on", "Hi. Then a very long second sentence"
         " that runs on and on and on"),  # the last end keeps under a third: the whole text stays
    ],
)  # fmt: skip
def test_cut_answers_are_trimmed_to_whole_sentences(text, kept):
    """A training answer that ``max_new_tokens`` ended is kept up to its last whole sentence, so recovery KD and
    TCOT never teach a stop (or a ``<TH>``) in the middle of a sentence."""
    from jaxtrans.curriculum.fillers import whole_sentences

    assert whole_sentences(text) == kept


def test_thinking_is_off_in_prompts_and_trained_answers(smollm2):
    """A template that reads ``enable_thinking`` (as Qwen3's does: an empty think block opens the answer when it
    is off) renders prompts and trained answers alike, so the answer's tokens are found and trained."""
    import copy

    tok = copy.deepcopy(smollm2)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and loop.last and enable_thinking is defined and not enable_thinking %}"
        "<think></think>{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}"
    )
    from jaxtrans.data.template import render

    prompt = tok.decode(render(tok, [{"role": "user", "content": "Hi"}]))
    assert prompt.endswith("<|im_start|>assistant\n<think></think>")
    ids, trained = encode_chat(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert tok.decode(ids[trained == 1]) == "Hello<|im_end|>\n"


def test_the_pivot_is_scored_against_the_questions_own_english():
    """``pivot_chrf_questions``: the <EN> query (TaCo: the English instruction) against the question's English."""
    from jaxtrans.data.embedded import records
    from jaxtrans.infer.answer_formats import pivot_chrf

    english = ["Why is the sky blue?", "How many provinces does Thailand have?"]
    same = [f"<EN> {e} <RESPONSE> An answer. <TH> คำตอบ" for e in english]
    assert pivot_chrf(same, english, "tcot", Tags(), "Thai") == pytest.approx(100.0)
    other = ["<EN> What does the English word 'telegram' mean? <RESPONSE> A message. <TH> ข้อความ", "no pivot"]
    assert pivot_chrf(other, english, "tcot", Tags(), "Thai") < 30
    taco = [f"Instruction in English: {e}\nResponse in English: A.\nResponse in Thai: ก" for e in english]
    assert pivot_chrf(taco, english, "taco", Tags(), "Thai") == pytest.approx(100.0)
    rows = [r for _, r in records("thai_questions")]
    assert len(rows) == 24 and all(r["prompt"] and r["english"].endswith(("?", ".")) for r in rows)
