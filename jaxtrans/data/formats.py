"""Training examples as token ids with loss masks: the transfer formats and plain chat.

Targets of the three methods:

* TCOT (TransLLM): user asks in the target language; the assistant answers
  ``<EN> {English query} <RESPONSE> {English answer} <TH> {target answer}``.
* Recovery KD (TransLLM): user asks in English; the assistant answers
  ``<RESPONSE> {the frozen chat model's own answer}``.
* TaCo: ``Instruction in English: ...\\nResponse in English: ...\\nResponse in {lang}: ...``.

Conversations are rendered with the tokenizer's own chat template (Llama-2
``[INST]`` when it has none). The loss covers exactly the assistant turns: for
each assistant message the conversation up to it is rendered with a generation
prompt and then with the message, and the tokens the message adds (its text and
the template's end-of-turn) are the trained ones. Plain text (pretraining) is
trained on every token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxtrans.data.template import render
from jaxtrans.errors import JaxtransError

# Loss-mask values of a training row: 0 not trained, 1 next-token cross-entropy, 2 distilled from the frozen
# model (recovery_logits; see jaxtrans.train.distill).
TRAINED, DISTILLED = 1, 2


@dataclasses.dataclass(frozen=True)
class Tags:
    """TransLLM's tags; ``target`` names the target language (``<TH>`` for Thai, ``<NE>`` for Nepali ...)."""

    english: str = "<EN>"
    response: str = "<RESPONSE>"
    target: str = "<TH>"


def tcot_answer(en_query: str, en_answer: str, target_answer: str, tags: Tags = Tags()) -> str:
    parts = (tags.english, en_query.strip(), tags.response, en_answer.strip(), tags.target, target_answer.strip())
    return " ".join(parts)


def recovery_answer(answer: str, tags: Tags = Tags()) -> str:
    return f"{tags.response} {answer.strip()}"


def taco_answer(en_instruction: str, en_response: str, target_response: str, language: str) -> str:
    return (
        f"Instruction in English: {en_instruction.strip()}\n"
        f"Response in English: {en_response.strip()}\n"
        f"Response in {language}: {target_response.strip()}"
    )


def translate_prompt(text: str, source: str, target: str) -> str:
    return f"Translate the following {source} text into {target}.\n{text.strip()}"


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) for a conversation: ``trained`` is 1 on the assistant turns' tokens, 0 elsewhere."""
    if not messages or messages[-1].get("role") != "assistant":
        raise JaxtransError("a training conversation must end with an assistant message")
    full = render(tokenizer, messages, add_generation_prompt=False)
    trained = np.zeros(len(full), np.int32)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if upto[: len(prompt)] != prompt or full[: len(upto)] != upto:
            raise JaxtransError(
                "the chat template does not render conversations as prefixes of each other, so assistant tokens "
                "cannot be located; use a template without history-dependent rewriting"
            )
        trained[len(prompt) : len(upto)] = 1
    return np.asarray(full, np.int32), trained


def encode_text(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) for plain text: BOS if the tokenizer adds one, the text, EOS; every token trained."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    trained = np.ones(len(ids), np.int32)
    if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id:
        trained[0] = 0  # nothing predicts the BOS
    return np.asarray(ids, np.int32), trained
