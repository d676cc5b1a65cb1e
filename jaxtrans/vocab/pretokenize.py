"""Target-script-aware pre-tokenisation for byte-level BPE tokenizers.

GPT-style regex pre-tokenizers (GPT-2's, GPT-4's cl100k pattern used by
Llama 3, Qwen2's) match words as ``\\p{L}+``. Combining marks (``\\p{M}``) are
not letters, so Thai, Devanagari, Khmer, Myanmar or Lao words are cut at every
vowel sign and tone mark, and a BPE trained behind such a pattern can never
learn whole syllables. We widen every ``\\p{L}`` of the pattern with the
combining marks *of the target script only*:

* outside a character class ``\\p{L}`` becomes ``[\\p{L}<marks>]``;
* inside one (``[^\\s\\p{L}\\p{N}]``) the marks are added beside ``\\p{L}``, so the
  "other symbols" alternative stops claiming them.

A regex that never meets one of those mark characters matches exactly as
before, so text with no target-script character pre-tokenises, and encodes,
to the same pieces and ids as under the base tokenizer (the tests check it on
English prompts). ``ByteLevel(use_regex=True)`` carries GPT-2's pattern
inside; it becomes an explicit ``Split`` with the widened pattern followed by
``ByteLevel(use_regex=False)``, which is the same computation.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Sequence
from typing import Any

# The pattern ByteLevel(use_regex=True) applies (tokenizers' byte_level.rs).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LETTER = (r"\p{L}", r"\p{Letter}", r"\pL")


def script_marks(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs of combining marks (Mn, Mc, Me) inside the script's code-point ranges."""
    runs: list[tuple[int, int]] = []
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            if unicodedata.category(chr(cp)).startswith("M"):
                if runs and runs[-1][1] == cp - 1:
                    runs[-1] = (runs[-1][0], cp)
                else:
                    runs.append((cp, cp))
    return runs


def _class_body(marks: Sequence[tuple[int, int]]) -> str:
    return "".join(rf"\x{{{lo:04X}}}" + (rf"-\x{{{hi:04X}}}" if hi > lo else "") for lo, hi in marks)


def widen_pattern(pattern: str, marks: Sequence[tuple[int, int]]) -> str:
    """``pattern`` with the target marks counted as letters (see the module docstring)."""
    if not marks:
        return pattern
    body = _class_body(marks)
    out: list[str] = []
    depth, i = 0, 0
    while i < len(pattern):
        letter = next((p for p in _LETTER if pattern.startswith(p, i)), None)
        if letter is not None:
            out.append(rf"\p{{L}}{body}" if depth else rf"[\p{{L}}{body}]")
            i += len(letter)
            continue
        ch = pattern[i]
        if ch == "\\":
            # an escape: \p{..} / \x{..} / \u.... as one unit, else the next character
            j = i + 2
            if j < len(pattern) + 1 and pattern[i + 1 : i + 2] in "pPx" and pattern[j : j + 1] == "{":
                j = pattern.index("}", j) + 1
            out.append(pattern[i:j])
            i = j
            continue
        if ch == "[":
            depth += 1
            if pattern.startswith("[^", i) or pattern.startswith("[]", i):
                out.append(pattern[i : i + 2])
                i += 2
                continue
        elif ch == "]" and depth:
            depth -= 1
        out.append(ch)
        i += 1
    return "".join(out)


def _widen(node: dict[str, Any], marks: Sequence[tuple[int, int]]) -> tuple[dict[str, Any], bool]:
    kind = node.get("type")
    if kind == "Sequence":
        parts = [_widen(p, marks) for p in node["pretokenizers"]]
        return {**node, "pretokenizers": [p for p, _ in parts]}, any(c for _, c in parts)
    if kind == "Split" and "Regex" in node.get("pattern", {}):
        new = widen_pattern(node["pattern"]["Regex"], marks)
        return {**node, "pattern": {"Regex": new}}, new != node["pattern"]["Regex"]
    if kind == "ByteLevel" and node.get("use_regex", True):
        split = {"type": "Split", "pattern": {"Regex": widen_pattern(GPT2_PATTERN, marks)},
                 "behavior": "Isolated", "invert": False}  # fmt: skip
        return {"type": "Sequence", "pretokenizers": [split, {**node, "use_regex": False}]}, True
    return node, False


def target_pretokenizer(pre_tokenizer: dict[str, Any] | None, ranges: Sequence[tuple[int, int]]) -> dict | None:
    """The base pre-tokenizer (tokenizer.json form) with target marks kept on their letters; ``None`` if unchanged."""
    marks = script_marks(ranges)
    if pre_tokenizer is None or not marks:
        return None
    new, changed = _widen(copy.deepcopy(pre_tokenizer), marks)
    return new if changed else None
