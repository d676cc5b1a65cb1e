"""Target-language text for tokenizer training, and which characters count as the target script.

Sources: plain text files (one document per line), JSON lines / JSON files
(a ``field`` per record, ``text`` by default), or ``hf:NAME[:SPLIT]`` for a
``datasets`` hub dataset (streamed). Every source is checked before training:
an empty corpus, or one without a single character of the target script, is an
error naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

from jaxtrans import stop
from jaxtrans.data.script import SCRIPTS
from jaxtrans.errors import JaxtransError


def script_ranges(language: str) -> tuple[tuple[int, int], ...]:
    """The code point ranges of the language's script (``jaxtrans.data.script``): a new token must have one."""
    if language not in SCRIPTS:
        raise JaxtransError(f"no script known for language {language!r}; known: {', '.join(sorted(SCRIPTS))}")
    return SCRIPTS[language][1]


def has_script_char(text: str, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(lo <= ord(ch) <= hi for ch in text for lo, hi in ranges)


def _decode(path: str, lineno: int, raw: bytes, last: bool) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if last and e.reason == "unexpected end of data":
            raise JaxtransError(
                f"{path}:{lineno}: the file ends inside a multi-byte UTF-8 character (cut short?); "
                "remove the partial character or re-copy the file"
            ) from None
        raise JaxtransError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None


def _iter_file(path: str, field: str) -> Iterator[str]:
    if not os.path.isfile(path):
        raise JaxtransError(f"corpus file {path} does not exist")
    if path.endswith(".json"):
        with open(path, "rb") as f:
            data = f.read()
        try:
            records = json.loads(_decode(path, 1, data, last=True))
        except json.JSONDecodeError as e:
            raise JaxtransError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        except RecursionError:
            raise JaxtransError(f"{path}: JSON nested too deeply for the parser; flatten the records") from None
        for i, rec in enumerate(records if isinstance(records, list) else [records]):
            if not isinstance(rec, dict) or field not in rec:
                raise JaxtransError(f"{path}: record {i} has no {field!r} field")
            yield str(rec[field])
        return
    for lineno, raw, last in _lines(path):
        stop.check()  # SIGTERM: between lines
        line = _decode(path, lineno, raw, last).rstrip("\r\n")
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise JaxtransError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            except RecursionError:
                raise JaxtransError(f"{path}:{lineno}: JSON nested too deeply for the parser; flatten it") from None
            if not isinstance(rec, dict) or field not in rec:
                raise JaxtransError(f"{path}:{lineno}: no {field!r} field")
            yield str(rec[field])
        else:
            yield line


def _lines(path: str) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw line, is it the last line), streamed."""
    with open(path, "rb") as f:
        prev = None
        for lineno, raw in enumerate(f, 1):
            if prev is not None:
                yield lineno - 1, prev, False
            prev = raw
        if prev is not None:
            yield lineno, prev, True


def _iter_hub(spec: str, field: str) -> Iterator[str]:
    import datasets

    _, name, *rest = spec.split(":")
    split = rest[0] if rest else "train"
    for rec in datasets.load_dataset(name, split=split, streaming=True):
        yield str(rec[field])


def iter_texts(sources: Sequence[str], field: str = "text") -> Iterator[str]:
    for src in sources:
        yield from (_iter_hub(src, field) if src.startswith("hf:") else _iter_file(src, field))


def load_corpus(sources: Sequence[str], language: str, field: str = "text", max_chars: int = 50_000_000) -> list[str]:
    """All documents (up to ``max_chars``), after checking the corpus is usable for ``language``."""
    if not sources:
        raise JaxtransError("no corpus given; pass target-language text files")
    ranges = script_ranges(language)
    texts, total = [], 0
    for text in iter_texts(sources, field):
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not texts or total == 0:
        raise JaxtransError(f"the corpus {', '.join(sources)} is empty")
    if not any(has_script_char(t, ranges) for t in texts):
        raise JaxtransError(
            f"the corpus {', '.join(sources)} has no {language!r} characters; check the files and the language"
        )
    return texts
