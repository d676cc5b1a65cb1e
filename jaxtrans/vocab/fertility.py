"""Tokenizer fertility: how many tokens a text costs, per character and per whitespace word."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fertility(tokenizer: Any, texts: Sequence[str]) -> dict[str, float]:
    """Tokens per character and per whitespace word (no special tokens counted)."""
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    tokens = sum(len(x) for x in enc)
    chars = sum(len(t) for t in texts)
    words = sum(len(t.split()) for t in texts)
    return {
        "tokens": tokens,
        "chars": chars,
        "words": words,
        "tokens_per_char": tokens / max(chars, 1),
        "tokens_per_word": tokens / max(words, 1),
    }
