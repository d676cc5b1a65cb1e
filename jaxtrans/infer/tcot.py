"""Split a TCOT generation ``<EN> query <RESPONSE> answer <TH> target answer`` into its parts."""

from __future__ import annotations

import dataclasses

from jaxtrans.data.formats import Tags


@dataclasses.dataclass(frozen=True)
class TcotParts:
    en_query: str | None
    en_answer: str | None
    answer: str | None  # the target-language answer (or, for an English query, the <RESPONSE> part)
    complete: bool  # every tag the format expects was present


def parse(text: str, tags: Tags = Tags()) -> TcotParts:
    """Tags may be missing: whatever parts exist are returned and ``complete`` says whether all did."""

    def between(start: str, end: str | None) -> str | None:
        i = text.find(start)
        if i < 0:
            return None
        i += len(start)
        j = text.find(end, i) if end else -1
        return (text[i:j] if j >= 0 else text[i:]).strip()

    en_query = between(tags.english, tags.response)
    en_answer = between(tags.response, tags.target)
    target = between(tags.target, None)
    if en_query is None and target is None and en_answer is not None:  # English query: "<RESPONSE> answer"
        return TcotParts(None, en_answer, en_answer, True)
    complete = all((en_query, en_answer, target))  # an empty part is as good as a missing one
    return TcotParts(en_query, en_answer, target, complete)


def in_format(text: str, tags: Tags = Tags()) -> bool:
    """Whether ``text`` has TCOT's structure: the English tag, the response tag and the target tag in this
    order, with something (query, English answer, target answer) after each."""
    marks = (tags.english, tags.response, tags.target)
    starts, at = [], 0
    for mark in marks:
        i = text.find(mark, at)
        if i < 0:
            return False
        starts.append(i)
        at = i + len(mark)
    ends = [*starts[1:], len(text)]
    return all(text[s + len(m) : e].strip() for s, m, e in zip(starts, marks, ends, strict=True))
