"""Multiple-choice scoring by log-likelihood, the way lm-evaluation-harness scores ``multiple_choice`` tasks.

Each record has a ``question``, a list of ``choices`` and the ``answer``
(an index, or the text of the right choice). The prompt is the task's template
(``{question}`` is filled in; default ``"{question}\\nAnswer:"``), each choice
is the continuation ``" " + choice``, and the model picks the choice with the
highest summed log-probability (``acc``) or the highest log-probability per
character of the choice (``acc_norm``, the harness's definition). Context and continuation are
tokenized together and split, with trailing spaces of the context moved to the
continuation, as the harness's HF backend does, so the numbers compare.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtrans.data.sources import Source
from jaxtrans.errors import JaxtransError

DEFAULT_TEMPLATE = "{question}\nAnswer:"
ROLES = ("question", "choices", "answer")


@dataclasses.dataclass(frozen=True)
class ChoiceTask:
    """One multiple-choice data set: its name in the report, where it lives, and its prompt template."""

    name: str
    source: Source
    template: str = DEFAULT_TEMPLATE

    @classmethod
    def from_config(cls, block: Any) -> ChoiceTask:
        d = dict(block)
        unknown = set(d) - {"name", "source", "template"}
        if unknown:
            raise JaxtransError(f"multiple_choice keys {sorted(unknown)} are unknown; use name, source, template")
        src = Source.from_config(d["source"])
        name = d.get("name") or src.path.rstrip("/").split("/")[-1].split(".")[0]
        template = d.get("template") or DEFAULT_TEMPLATE
        if "{question}" not in template:
            raise JaxtransError(f"multiple_choice template {template!r} has no {{question}} field")
        return cls(name.replace(".", "_"), src, template)


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def _answer_index(record: dict[str, Any], choices: Sequence[str], where: str) -> int:
    answer = record["answer"]
    if isinstance(answer, str) and not answer.strip().lstrip("-").isdigit():
        if answer not in choices:
            raise JaxtransError(f"{where}: answer {answer!r} is not one of the choices")
        return list(choices).index(answer)
    index = int(answer)
    if not 0 <= index < len(choices):
        raise JaxtransError(f"{where}: answer index {index} is outside the {len(choices)} choices")
    return index


def score(view: Any, records: Sequence[dict[str, Any]], template: str, where: str = "multiple_choice") -> dict:
    """Accuracy and length-normalised accuracy of ``view`` on ``records`` (and the choice it made on each)."""
    from jaxtrans.eval.loglik import loglikelihood

    requests, spans, golds, lengths = [], [], [], []
    for i, rec in enumerate(records):
        choices = rec["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise JaxtransError(f"{where}: record {i} needs a list of at least two choices")
        golds.append(_answer_index(rec, choices, f"{where}: record {i}"))
        context = template.format(question=rec["question"])
        start = len(requests)
        for choice in choices:
            requests.append(_encode_pair(view.tokenizer, context, " " + str(choice)))
            lengths.append(max(len(str(choice)), 1))
        spans.append((start, len(requests)))
    if not requests:
        raise JaxtransError(f"{where}: no records to score")
    scored = np.array([lp for lp, _ in loglikelihood(view, requests)])
    picks, picks_norm = [], []
    for a, b in spans:
        picks.append(int(np.argmax(scored[a:b])))
        picks_norm.append(int(np.argmax(scored[a:b] / np.array(lengths[a:b]))))
    n = len(golds)
    return {
        "acc": sum(p == g for p, g in zip(picks, golds, strict=True)) / n,
        "acc_norm": sum(p == g for p, g in zip(picks_norm, golds, strict=True)) / n,
        "n": n,
        "picks": picks,
    }
