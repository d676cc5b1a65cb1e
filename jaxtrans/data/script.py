"""Is this text in the declared language's script? A guard against training one language under another's name.

The share of letters (Unicode category ``L*``) that fall in the script of the
language code: Thai for ``th``, Devanagari for ``ne``/``hi``/``mr``, Han for
Chinese, and so on. For ``zh_hant`` / ``zh_hans`` the Han letters must also be
of the declared variety: among the characters that exist in only one of the two
systems (CC-CEDICT's lists, via ``hanzidentifier``), the declared one's share.
Codes not in :data:`SCRIPTS` are not checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from jaxtrans.errors import JaxtransError

# Han ideographs, then CJK punctuation and full-width forms (a new Chinese token may be punctuation only)
_HAN = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F), (0x3000, 0x303F), (0xFF00, 0xFFEF))
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF))
# language code -> (script name, code point ranges of its letters); also what vocabulary extension counts as the
# target script (jaxtrans.vocab.corpus)
SCRIPTS: dict[str, tuple[str, tuple[tuple[int, int], ...]]] = {
    "th": ("Thai", ((0x0E00, 0x0E7F),)),
    "lo": ("Lao", ((0x0E80, 0x0EFF),)),
    "ne": ("Devanagari", ((0x0900, 0x097F), (0xA8E0, 0xA8FF))),
    "hi": ("Devanagari", ((0x0900, 0x097F), (0xA8E0, 0xA8FF))),
    "mr": ("Devanagari", ((0x0900, 0x097F), (0xA8E0, 0xA8FF))),
    "zh": ("Han", _HAN),
    "zh_hans": ("Han", _HAN),
    "zh_hant": ("Han", _HAN),
    "ja": ("Han and kana", _HAN + _KANA),
    "ko": ("Hangul", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F))),
    "ru": ("Cyrillic", ((0x0400, 0x04FF),)),
    "uk": ("Cyrillic", ((0x0400, 0x04FF),)),
    "ar": ("Arabic", ((0x0600, 0x06FF), (0x0750, 0x077F))),
    "el": ("Greek", ((0x0370, 0x03FF),)),
    "he": ("Hebrew", ((0x0590, 0x05FF),)),
    "km": ("Khmer", ((0x1780, 0x17FF),)),
    "my": ("Myanmar", ((0x1000, 0x109F),)),
}
MIN_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class ScriptShare:
    script: str
    share: float  # of letters in the script
    letters: int
    variety: str = ""  # zh_hant / zh_hans: "Traditional" or "Simplified"
    variety_share: float = 1.0  # of the characters that tell the two apart
    telling: int = 0


def _in(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    c = ord(ch)
    return any(lo <= c <= hi for lo, hi in ranges)


def measure(texts: Iterable[str], code: str) -> ScriptShare | None:
    """The script share of ``texts`` for language ``code`` (None when the code's script is not known)."""
    if code not in SCRIPTS:
        return None
    name, ranges = SCRIPTS[code]
    letters = inside = trad = simp = 0
    only_trad, only_simp = _varieties() if code in ("zh_hant", "zh_hans") else (frozenset(), frozenset())
    for text in texts:
        for ch in text:
            if ch.isalpha():
                letters += 1
                inside += _in(ch, ranges)
                trad += ch in only_trad
                simp += ch in only_simp
    share = inside / letters if letters else 0.0
    if code not in ("zh_hant", "zh_hans"):
        return ScriptShare(name, share, letters)
    variety, mine = ("Traditional", trad) if code == "zh_hant" else ("Simplified", simp)
    return ScriptShare(name, share, letters, variety, mine / (trad + simp) if trad + simp else 1.0, trad + simp)


def _varieties() -> tuple[frozenset[str], frozenset[str]]:
    from hanzidentifier import helpers

    shared = helpers.SHARED_CHARACTERS
    return frozenset(helpers.TRADITIONAL_CHARACTERS - shared), frozenset(helpers.SIMPLIFIED_CHARACTERS - shared)


def check(texts: Iterable[str], code: str, what: str) -> ScriptShare | None:
    """Refuse ``texts`` (one data source, named by ``what``) when under 80% of its letters are in ``code``'s
    script, or, for Chinese, of its declared variety."""
    got = measure(texts, code)
    if got is None or got.letters == 0:
        return got
    if got.share < MIN_SHARE:
        raise JaxtransError(
            f"{what}: only {got.share:.0%} of its {got.letters} letters are {got.script}, the script of the declared "
            f"language {code!r} (at least {MIN_SHARE:.0%} needed); point it at {got.script} text or fix language.code"
        )
    if got.variety and got.telling >= 20 and got.variety_share < MIN_SHARE:
        raise JaxtransError(
            f"{what}: only {got.variety_share:.0%} of its {got.telling} characters that differ between Traditional "
            f"and Simplified Chinese are {got.variety}, as language {code!r} declares; use {got.variety} text or "
            f"declare {'zh_hans' if code == 'zh_hant' else 'zh_hant'}"
        )
    return got
