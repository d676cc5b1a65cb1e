"""The answer formats a transfer method teaches, by name: how to check an answer is in the format and how to
take out the part a reader wants (the target-language answer, or the English one).

One table entry per method; ``EvalSpec.answer_format`` picks one, and the suite reports
``{name}_format_rate`` on target-language prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxtrans.data.formats import Tags
from jaxtrans.infer import taco, tcot


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
    label: str  # as the report names it
    shape: Callable[[Tags, str], str]  # what "in format" means, for the report
    in_format: Callable[[str, Tags, str], bool]  # (text, tags, language name)
    answer: Callable[[str, Tags, str], str | None]  # the target-language part, None when missing
    english: Callable[[str, Tags, str], str | None]  # the answer to an English prompt, None when missing
    pivot: Callable[[str, Tags, str], str | None]  # the question restated in English, None when missing


FORMATS = {
    "tcot": AnswerFormat(
        "TCOT",
        lambda t, lang: f"{t.english} … {t.response} … {t.target} in order",
        lambda s, t, lang: tcot.in_format(s, t),
        lambda s, t, lang: tcot.parse(s, t).answer,
        lambda s, t, lang: tcot.parse(s, t).answer,  # of "<RESPONSE> answer", the recovery-KD shape
        lambda s, t, lang: tcot.parse(s, t).en_query,
    ),
    "taco": AnswerFormat(
        "TaCo",
        lambda t, lang: f"'Response in English:' … 'Response in {lang}:' in order",
        lambda s, t, lang: taco.in_format(s, lang),
        lambda s, t, lang: taco.parse(s, lang).answer,
        lambda s, t, lang: taco.parse(s, lang).en_answer,
        lambda s, t, lang: taco.parse(s, lang).en_instruction,
    ),
}


def pivot_chrf(texts: list[str], english: list[str], name: str, tags: Tags, language: str) -> float:
    """Corpus chrF of the English restatements in ``texts`` (TCOT's ``<EN>`` query) against the questions' own
    English: whether the pivot is the question asked (100: restated exactly; a missing one counts as empty)."""
    import sacrebleu

    get = FORMATS[name].pivot
    return sacrebleu.corpus_chrf([get(s, tags, language) or "" for s in texts], [list(english)]).score


def format_rate(texts: list[str], name: str, tags: Tags, language: str) -> float:
    """The fraction of ``texts`` (answers to target-language prompts) in format ``name``."""
    check = FORMATS[name].in_format
    return sum(check(s, tags, language) for s in texts) / max(len(texts), 1)
