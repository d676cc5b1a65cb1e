"""A training stage's data: mixture components of different kinds -> tokenised examples -> packed rows.

A component is one config block::

    kind:    pretrain | translate | tcot | recovery_kd | taco | sft
    source:  where the records come from (see ``jaxtrans.data.sources``)
    weight:  share of the stage's rows (mixtures; weights are normalised)
    options: directions (translate: both | forward), style (translate: chat | tagged; recovery_logits: chat,
             on the frozen model's answers | prompt, on the prompt text alone), system (a system prompt),
             language (target | en: whose script the text is checked against; en for English replay),
             answer_tokens (tcot, recovery_kd, recovery_logits, taco: the most tokens of the frozen model's
             generated English answers, trimmed to whole sentences; unset: ``generation.max_new_tokens``)

What each kind reads (roles; ``?`` = filled in by a model when the data lacks it):

===============  ===========================================  ==================================================
kind             roles                                        trained as (assistant turn)
===============  ===========================================  ==================================================
pretrain         text                                         plain text, every token
translate        src (English), tgt (target)                  user: "Translate ... into Thai.\\n{src}" -> {tgt};
                                                              and the reverse direction
tcot             en_query, query?, en_answer?, answer?        user: {query} -> ``<EN> en_query <RESPONSE>
                                                              en_answer <TH> answer``
recovery_kd      prompt (English), answer?                    user: {prompt} -> ``<RESPONSE> {answer}``
recovery_logits  prompt (English), answer?                    distilled from the frozen model (KL), not trained:
                                                              user: {prompt} -> {answer}; style prompt: the prompt
taco             instruction (English), input, response?,     user: {target_instruction} -> ``Instruction in
                 target_instruction?, target_response?        English: ... Response in English: ... Response in
                                                              {lang}: ...``
sft              conversations (ShareGPT) | messages |        the assistant turns
                 instruction + input + output (Alpaca)
===============  ===========================================  ==================================================

``?`` fields come from the :class:`Fillers`: English answers from the frozen
base chat model (TransLLM's recovery data: the same answers serve recovery-KD
and, translated, TCOT), target-language text from the configured translator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxtrans.data import formats
from jaxtrans.data.pack import PackStats, pack
from jaxtrans.data.sources import ReadStats, Source, read
from jaxtrans.errors import JaxtransError

KINDS = ("pretrain", "translate", "tcot", "recovery_kd", "recovery_logits", "taco", "sft")
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pretrain": (("text",), ()),
    "translate": (("src", "tgt"), ()),
    "tcot": (("en_query",), ("query", "en_answer", "answer")),
    "recovery_kd": (("prompt",), ("answer",)),
    "recovery_logits": (("prompt",), ("answer",)),
    "taco": (("instruction",), ("input", "response", "target_instruction", "target_response")),
    "sft": ((), ("conversations", "messages", "instruction", "input", "output", "system")),
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# The kinds whose missing English answers the frozen model generates
ANSWERED = ("tcot", "recovery_kd", "recovery_logits", "taco")


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    kind: str
    source: Source
    weight: float = 1.0
    directions: str = "both"
    style: str = "chat"
    system: str = ""
    language: str = "target"  # pretrain text in the target language, or "en" (English replay): see target_texts
    answer_tokens: int = 0  # the cap on generated English answers; 0: generation.max_new_tokens

    @classmethod
    def from_config(cls, name: str, block: Any) -> Component:
        d = dict(block)
        kind = d.pop("kind", None)
        if kind not in KINDS:
            raise JaxtransError(f"data component {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if "source" not in d:
            raise JaxtransError(f"data component {name!r} has no source; give source.path")
        source = Source.from_config(d.pop("source"))
        unknown = set(d) - {"weight", "directions", "style", "system", "language", "answer_tokens"}
        if unknown:
            raise JaxtransError(f"data component {name!r}: unknown keys {sorted(unknown)}")
        comp = cls(name=name, kind=kind, source=source, **d)
        if isinstance(comp.weight, bool) or not isinstance(comp.weight, (int, float)) or not comp.weight > 0 \
                or not math.isfinite(comp.weight):  # fmt: skip
            raise JaxtransError(f"data component {name!r}: weight must be a finite number > 0, got {comp.weight!r}")
        styles = ("chat", "prompt") if comp.kind == "recovery_logits" else ("chat", "tagged")
        if comp.directions not in ("both", "forward") or comp.style not in styles:
            raise JaxtransError(f"data component {name!r}: directions is both|forward, style is {'|'.join(styles)}")
        if comp.language not in ("target", "en"):
            raise JaxtransError(f"data component {name!r}: language is target (the run's language) or en")
        if comp.answer_tokens and (comp.kind not in ANSWERED or comp.answer_tokens < 0):
            raise JaxtransError(
                f"data component {name!r}: answer_tokens={comp.answer_tokens} must be a positive token count, on a "
                f"kind whose English answers are generated ({', '.join(ANSWERED)})"
            )
        return comp


# The roles of each kind that hold target-language text (checked for the language's script before a run)
TARGET_ROLES = {"pretrain": ("text",), "translate": ("tgt",), "tcot": ("query", "answer"),
                "taco": ("target_instruction", "target_response")}  # fmt: skip


def target_texts(comp: Component, record: dict) -> list[str]:
    """The target-language texts of one record (none for English components and kinds of any language)."""
    if comp.language == "en":
        return []
    return [record[r] for r in TARGET_ROLES.get(comp.kind, ()) if isinstance(record.get(r), str)]


@dataclasses.dataclass(frozen=True)
class Language:
    """The target language: its English name and TransLLM tags."""

    name: str = "Thai"
    tags: formats.Tags = formats.Tags()


@dataclasses.dataclass
class Fillers:
    """Where missing fields come from; each takes a batch of texts and returns one output per text.

    ``answer``: the frozen base chat model's answers to English prompts; it takes
    ``max_new_tokens=`` too, a component's ``answer_tokens``.
    ``to_target`` / ``to_english``: translation into / out of the target language.
    """

    answer: Callable[[list[str]], list[str]] | None = None
    to_target: Callable[[list[str]], list[str]] | None = None
    to_english: Callable[[list[str]], list[str]] | None = None

    def get(self, what: str, component: str) -> Callable[[list[str]], list[str]]:
        fn = getattr(self, what)
        if fn is None:
            need = "an answering model" if what == "answer" else "a translator (stage.translator)"
            raise JaxtransError(f"data component {component!r} lacks fields that need {need}, and none is configured")
        return fn


def _fill(records: list[dict], role: str, fn: Callable[[list[str]], list[str]], from_role: str) -> None:
    missing = [r for r in records if role not in r]
    if missing:
        outputs = fn([r[from_role] for r in missing])
        for r, out in zip(missing, outputs, strict=True):
            r[role] = out


def _getter(comp: Component, fillers: Fillers) -> Callable[[str], Callable[[list[str]], list[str]]]:
    """The filler named ``what``; English answers capped at the component's ``answer_tokens`` when it sets one."""

    def get(what: str) -> Callable[[list[str]], list[str]]:
        fn = fillers.get(what, comp.name)
        if what == "answer" and comp.answer_tokens:
            return lambda texts: fn(texts, max_new_tokens=comp.answer_tokens)
        return fn

    return get


def fill(comp: Component, records: list[dict], fillers: Fillers) -> list[dict]:
    """Complete the ``?`` roles of every record (generation is cached by the fillers)."""
    get = _getter(comp, fillers)
    if comp.kind == "recovery_kd" or (comp.kind == "recovery_logits" and comp.style == "chat"):
        if any("answer" not in r for r in records):
            _fill(records, "answer", get("answer"), "prompt")
    elif comp.kind == "tcot":
        for role, fn, frm in (("en_answer", "answer", "en_query"), ("query", "to_target", "en_query"),
                              ("answer", "to_target", "en_answer")):  # fmt: skip
            if any(role not in r for r in records):
                _fill(records, role, get(fn), frm)
    elif comp.kind == "taco":
        for r in records:
            r["_full"] = r["instruction"] + (f"\n{r['input']}" if r.get("input") else "")
        for role, fn, frm in (("response", "answer", "_full"), ("target_instruction", "to_target", "_full"),
                              ("target_response", "to_target", "response")):  # fmt: skip
            if any(role not in r for r in records):
                _fill(records, role, get(fn), frm)
    return records


def _messages(comp: Component, r: dict) -> list[dict[str, str]]:
    """The conversation for one sft record (ShareGPT, OpenAI messages, or Alpaca)."""
    if "conversations" in r or "messages" in r:
        turns = r.get("conversations") or r.get("messages")
        out = []
        for t in turns:
            if not isinstance(t, dict):
                raise JaxtransError(f"{r['_where']}: a conversation turn must be an object, found {t!r}")
            role = _SHAREGPT_ROLES.get(t.get("from") or t.get("role"))
            text = t.get("value", t.get("content"))
            if role is None or not isinstance(text, str):
                raise JaxtransError(f"{r['_where']}: turn {t!r} needs from/role in {list(_SHAREGPT_ROLES)} and text")
            out.append({"role": role, "content": text})
        while out and out[-1]["role"] != "assistant":
            out.pop()  # a trailing user turn has no answer to train on
        return out
    if "instruction" in r and "output" in r:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
    raise JaxtransError(f"{r['_where']}: an sft record needs conversations, messages, or instruction + output")


def conversations(comp: Component, r: dict, lang: Language) -> list[list[dict[str, str]]] | list[str]:
    """What one record trains on: conversations (chat kinds) or plain texts (pretrain, tagged translate)."""
    tags = lang.tags
    if comp.kind == "pretrain":
        return [r["text"]]
    if comp.kind == "recovery_logits":  # distilled, not trained on: the answer after the prompt, or the prompt
        if comp.style == "prompt" or "answer" not in r:
            return [r["prompt"]]
        return [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["answer"]}]]
    if comp.kind == "translate":
        pairs = [(r["src"], r["tgt"], "English", lang.name, tags.english, tags.target)]
        if comp.directions == "both":
            pairs.append((r["tgt"], r["src"], lang.name, "English", tags.target, tags.english))
        if comp.style == "tagged":
            return [f"{st} {s.strip()} {tt} {t.strip()}" for s, t, _, _, st, tt in pairs]
        return [
            [{"role": "user", "content": formats.translate_prompt(s, sl, tl)}, {"role": "assistant", "content": t}]
            for s, t, sl, tl, _, _ in pairs
        ]
    if comp.kind == "tcot":
        answer = formats.tcot_answer(r["en_query"], r["en_answer"], r["answer"], tags)
        msgs = [{"role": "user", "content": r["query"]}, {"role": "assistant", "content": answer}]
    elif comp.kind == "recovery_kd":
        msgs = [{"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": formats.recovery_answer(r["answer"], tags)}]  # fmt: skip
    elif comp.kind == "taco":
        answer = formats.taco_answer(r["_full"], r["response"], r["target_response"], lang.name)
        msgs = [{"role": "user", "content": r["target_instruction"]}, {"role": "assistant", "content": answer}]
    else:
        msgs = _messages(comp, r)
        if not msgs:
            return []
    if comp.system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": comp.system}, *msgs]
    return [msgs]


def encode(
    comp: Component, records: Sequence[dict], tokenizer: Any, lang: Language, seq_len: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """(ids, trained) examples and the file:line each came from.

    With ``seq_len`` (the ``split`` policy), a ``pretrain`` document longer than a
    row is split into row-sized pieces (each token still predicted once) instead
    of losing its tail.
    """
    examples, names = [], []
    for r in records:
        for item in conversations(comp, r, lang):
            ex = formats.encode_text(tokenizer, item) if isinstance(item, str) else formats.encode_chat(tokenizer, item)
            if comp.kind == "recovery_logits":  # loss-mask 2: distil these positions (jaxtrans.train.distill)
                ex = (ex[0], ex[1] * formats.DISTILLED)
            pieces = split_document(ex, seq_len) if comp.kind == "pretrain" and seq_len else [ex]
            examples += pieces
            names += [r["_where"]] * len(pieces)
    return examples, names


def split_document(example: tuple[np.ndarray, np.ndarray], seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pieces of at most ``seq_len + 1`` tokens overlapping by one, so every target of the document stays."""
    ids, trained = example
    if len(ids) <= seq_len + 1:
        return [example]
    return [(ids[i : i + seq_len + 1], trained[i : i + seq_len + 1]) for i in range(0, len(ids) - 1, seq_len)]


@dataclasses.dataclass
class ComponentReport:
    name: str
    kind: str
    source: str
    read: ReadStats
    examples: int = 0
    pack: PackStats | None = None
    rows_used: int = 0
    epochs: float = 0.0


def read_component(comp: Component, process: tuple[int, int] | None = None) -> tuple[list[dict], ReadStats]:
    required, optional = ROLES[comp.kind]
    stats = ReadStats()
    records = list(read(comp.source, required, optional, stats, process))
    if not records:
        why = f" ({stats.skipped} bad records skipped, e.g. {stats.first_problems[0]})" if stats.skipped else ""
        raise JaxtransError(
            f"data component {comp.name!r}: source {comp.source.path} yielded no records{why}; "
            "give it data or remove it from the mixture"
        )
    return records, stats


def build_rows(
    components: Sequence[Component],
    tokenizer: Any,
    lang: Language,
    fillers: Fillers,
    seq_len: int,
    rows_needed: int,
    too_long: str = "truncate",
    seed: int = 0,
    process: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], list[ComponentReport]]:
    """Packed rows for an in-memory mixture: component i gets ``weight_i / sum(weights)`` of ``rows_needed``.

    Each component is packed on its own (rows never mix kinds) and its rows are
    drawn in a seeded order, cycling through repeated epochs when it is small;
    how many epochs each component used is reported.
    """
    if not components:
        raise JaxtransError("a train stage needs at least one data component")
    total_w = sum(c.weight for c in components)
    counts = _shares([c.weight / total_w for c in components], rows_needed)
    parts, reports = [], []
    pad_id = _pad_id(tokenizer)
    for i, (comp, n) in enumerate(zip(components, counts, strict=True)):
        records, rstats = read_component(comp, process)
        records = fill(comp, records, fillers)
        examples, names = encode(comp, records, tokenizer, lang, seq_len if too_long == "split" else 0)
        rows, pstats = pack(examples, seq_len, pad_id, too_long, names)
        if pstats.rows == 0:
            raise JaxtransError(f"data component {comp.name!r}: no example had two or more tokens to train on")
        order = np.concatenate(
            [np.random.default_rng([seed, i, e]).permutation(pstats.rows) for e in range(-(-n // pstats.rows))]
        )[:n]
        parts.append({k: v[order] for k, v in rows.items()})
        reports.append(
            ComponentReport(comp.name, comp.kind, comp.source.path, rstats, len(examples), pstats, n, n / pstats.rows)
        )
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return merged, reports


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _shares(fractions: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total`` (largest remainder), each at least 1."""
    raw = [f * total for f in fractions]
    counts = [max(1, int(x)) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True):
        if sum(counts) >= total:
            break
        counts[i] += 1
    return counts


def stream_rows(
    components: Sequence[Component],
    tokenizer: Any,
    lang: Language,
    fillers: Fillers,
    seq_len: int,
    too_long: str = "truncate",
    seed: int = 0,
    process: tuple[int, int] | None = None,
    chunk: int = 512,
) -> Iterator[dict[str, np.ndarray]]:
    """Rows one at a time for corpora larger than memory: components interleaved by weight, restarting
    a component's stream when it ends, packed ``chunk`` examples at a time. Deterministic for a seed."""
    weights = np.asarray([c.weight for c in components], np.float64)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    pad_id = _pad_id(tokenizer)
    required = {c.name: ROLES[c.kind] for c in components}
    split = seq_len if too_long == "split" else 0

    def examples_of(comp: Component) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], str]]:
        while True:
            n = 0
            for r in read(comp.source, *required[comp.name], ReadStats(), process):
                n += 1
                yield from zip(*encode(comp, fill(comp, [r], fillers), tokenizer, lang, split), strict=True)
            if n == 0:
                raise JaxtransError(f"data component {comp.name!r}: source {comp.source.path} yielded no records")

    streams = [examples_of(c) for c in components]
    while True:
        picks = rng.choice(len(components), size=chunk, p=weights)
        batch = [next(streams[i]) for i in picks]
        rows, _ = pack([ex for ex, _ in batch], seq_len, pad_id, too_long, [n for _, n in batch])
        for r in range(len(rows["tokens"])):
            yield {k: v[r] for k, v in rows.items()}
