"""Chat prompts as token ids: the tokenizer's own chat template, with a Llama-2 ``[INST]`` fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation under the model's chat template.

    Thinking is off (``enable_thinking=False``, which Qwen3's template reads and others ignore): TCOT and
    recovery answers are generated and trained as direct answers, the same way in both."""
    if getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False,
                enable_thinking=False,
            )
        )  # fmt: skip
    # Llama-2 chat format, for tokenizers saved without a template: the system prompt goes inside the first [INST]
    system = ""
    if messages and messages[0]["role"] == "system":
        system = f"<<SYS>>\n{messages[0]['content'].strip()}\n<</SYS>>\n\n"
        messages = messages[1:]
    text = ""
    for i in range(0, len(messages), 2):
        user = (system if i == 0 else "") + messages[i]["content"].strip()
        text += f"{tokenizer.bos_token or ''}[INST] {user} [/INST]"
        if i + 1 < len(messages):
            text += f" {messages[i + 1]['content'].strip()} {tokenizer.eos_token or ''}"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS plus the end-of-turn tokens chat templates use."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def chat_ids(tokenizer: Any, questions: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Single-turn prompts for ``questions`` and the stop ids to end the answers."""
    prompts = [render(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    return prompts, stop_token_ids(tokenizer)


def decode_answer(tokenizer: Any, ids: Sequence[int], stops: Sequence[int]) -> str:
    """Text of generated ids without the stop tokens, keeping added special tokens such as the TCOT tags.

    Only whole characters are kept: byte-level tokens that do not complete a
    UTF-8 character (an answer cut inside a Thai character, or stray bytes
    the model emitted) decode to U+FFFD, and those are dropped; see
    :func:`decode_counted` to count them.
    """
    return decode_counted(tokenizer, ids, stops)[0]


REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 byte sequence to


def decode_counted(tokenizer: Any, ids: Sequence[int], stops: Sequence[int]) -> tuple[str, int]:
    """:func:`decode_answer`'s text and how many incomplete UTF-8 sequences it dropped, from one decode."""
    drop = set(stops) | {tokenizer.pad_token_id, tokenizer.bos_token_id}
    text = tokenizer.decode([t for t in ids if t not in drop], skip_special_tokens=False)
    return text.replace(REPLACEMENT, "").strip(), text.count(REPLACEMENT)
