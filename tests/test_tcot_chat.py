"""TCOT parsing, missing-tag recovery and the multi-turn English-history rule."""

from __future__ import annotations

import pytest

from jaxtrans.data.formats import Tags
from jaxtrans.infer.tcot import parse
from jaxtrans.infer.tcot_chat import TcotChat


def test_parse_complete_partial_and_english():
    p = parse("<EN> How are you? <RESPONSE> I am fine. <TH> สบายดีครับ")
    assert (p.en_query, p.en_answer, p.answer, p.complete) == ("How are you?", "I am fine.", "สบายดีครับ", True)
    p = parse("<EN> How are you? <RESPONSE> I am fine.")
    assert (p.en_answer, p.answer, p.complete) == ("I am fine.", None, False)
    p = parse("<RESPONSE> Paris is the capital.")  # an English query: recovery-KD form
    assert (p.answer, p.complete) == ("Paris is the capital.", True)
    p = parse("<EN> Q <RESPONSE> A <NE> नमस्ते", Tags(target="<NE>"))
    assert p.answer == "नमस्ते"


class FakeTokenizer:
    """Characters as ids; a chat template that shows the roles, so prompts can be read back."""

    chat_template = "x"
    eos_token_id = 0
    pad_token_id = bos_token_id = None

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, return_dict, **template_vars):
        text = "".join(f"[{m['role']}]{m['content']}" for m in messages) + (
            "[assistant]" if add_generation_prompt else ""
        )
        return [ord(c) for c in text]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def _chat(outputs: list[str]):
    prompts: list[str] = []
    queue = list(outputs)

    def complete(ids):
        prompts.append("".join(chr(i) for i in ids))
        return [ord(c) for c in queue.pop(0)]

    return TcotChat(FakeTokenizer(), complete, max_retries=2), prompts


def test_missing_tags_are_inserted_and_generation_continues():
    chat, prompts = _chat([" <EN> Hi there <RESPONSE> Hello!", " สวัสดี"])
    reply = chat.send("หวัดดี")
    assert reply.answer == "สวัสดี" and reply.complete and reply.retries == 1
    assert prompts[1].endswith("<EN> Hi there <RESPONSE> Hello! <TH>")  # continued after the inserted tag
    chat, prompts = _chat(["<EN> Hi there", " Hello! <TH> สวัสดี"])
    reply = chat.send("หวัดดี")
    assert prompts[1].endswith("<EN> Hi there <RESPONSE>") and reply.en_answer == "Hello!" and reply.complete


def test_retries_are_bounded_and_fall_back_to_english():
    chat, prompts = _chat(["<EN> Q", " A", ""])
    reply = chat.send("คำถาม")
    assert len(prompts) == 3 and reply.retries == 2
    assert not reply.complete and reply.answer == "A"


def test_history_is_english_queries_and_response_tagged_answers():
    chat, prompts = _chat(["<EN> What is 2+2? <RESPONSE> 4. <TH> สี่", "<EN> And 3+3? <RESPONSE> 6. <TH> หก"])
    chat.send("2+2 เท่ากับเท่าไร")
    chat.send("แล้ว 3+3 ล่ะ")
    assert prompts[1] == "[user]What is 2+2?[assistant]<RESPONSE> 4.[user]แล้ว 3+3 ล่ะ[assistant]"
    assert chat.history == [("What is 2+2?", "4."), ("And 3+3?", "6.")]


@pytest.mark.parametrize("raw", ["no tags at all", "<EN> only a query"])
def test_incomplete_outputs_never_crash(raw):
    chat, _ = _chat([raw, raw, raw])
    assert isinstance(chat.send("x").answer, str)
