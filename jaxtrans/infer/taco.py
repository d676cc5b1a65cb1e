"""Split a TaCo generation ``Instruction in English: … Response in English: … Response in <lang>: …``."""

from __future__ import annotations

import dataclasses

_INSTRUCTION, _EN_RESPONSE = "Instruction in English:", "Response in English:"


@dataclasses.dataclass(frozen=True)
class TacoParts:
    en_instruction: str | None
    en_answer: str | None
    answer: str | None  # the target-language response
    complete: bool  # both response sections present, in order, each with text


def _marks(language: str) -> tuple[str, str, str]:
    return _INSTRUCTION, _EN_RESPONSE, f"Response in {language}:"


def parse(text: str, language: str) -> TacoParts:
    """Whatever sections exist (matched case-insensitively); the instruction section is optional, as in TaCo's
    answers to questions already in English."""
    low = text.lower()
    found = {m: low.find(m.lower()) for m in _marks(language)}
    order = sorted((i, m) for m, i in found.items() if i >= 0)
    parts: dict[str, str] = {}
    for k, (i, m) in enumerate(order):
        end = order[k + 1][0] if k + 1 < len(order) else len(text)
        parts[m] = text[i + len(m) : end].strip() if end > i else ""
    instruction, en, target = _marks(language)
    in_order = found[en] >= 0 and found[target] > found[en]
    complete = in_order and bool(parts.get(en)) and bool(parts.get(target))
    return TacoParts(parts.get(instruction), parts.get(en), parts.get(target), complete)


def in_format(text: str, language: str) -> bool:
    """TaCo format: a ``Response in English:`` section, then a ``Response in <language>:`` section, both with
    text (the ``Instruction in English:`` restatement before them is not required)."""
    return parse(text, language).complete
