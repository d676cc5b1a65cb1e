"""One choice of one request, answered through the engine: TCOT chat, plain chat, or a raw completion.

Runs in a worker thread (it blocks on the engine). For TCOT models the
content is the target-language answer and ``reasoning_content`` the English
pivot, written as the model writes it (``<EN> query <RESPONSE> answer``), so a
client that sends it back with the assistant turn gives the server the
English history TransLLM prescribes. A client that sends back only the
content still gets an English history when this server gave that answer (it
keeps the pivots of its recent answers); otherwise that turn goes back as it
was written.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from jaxtrans.data.formats import Tags
from jaxtrans.data.template import REPLACEMENT, render
from jaxtrans.infer.tcot import parse
from jaxtrans.infer.tcot_chat import TcotChat
from jaxtrans.serve.engine import Engine, Job, Settings
from jaxtrans.serve.protocol import ApiError, Message

OnDelta = Callable[[str, str], None]  # (reasoning so far, content so far)


@dataclasses.dataclass(frozen=True)
class Params:
    """One choice's generation settings, checked."""

    max_new: int
    settings: Settings
    seed: int
    stop: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Turn:
    """A TCOT request: the system prompt, earlier turns in English, the new target-language query."""

    system: str
    history: tuple[tuple[str, str], ...]
    query: str


@dataclasses.dataclass
class Choice:
    content: str
    reasoning: str | None
    finish: str
    tokens: int  # new tokens generated, retries included
    tcot: dict[str, Any] | None = None


def cut(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to its first stop string."""
    at = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:at]


def pivot(en_query: str | None, en_answer: str | None, tags: Tags) -> str | None:
    """The English part of a TCOT answer, as ``reasoning_content``."""
    if en_query is None:
        return None
    return f"{tags.english} {en_query}" + (f" {tags.response} {en_answer}" if en_answer is not None else "")


def visible(raw: str, tags: Tags, stops: tuple[str, ...]) -> tuple[str, str]:
    """(reasoning, content) of a TCOT generation so far; both only grow as ``raw`` does."""
    parts = parse(raw, tags)
    content = parts.answer if (tags.target in raw or parts.en_query is None) and parts.answer else ""
    return pivot(parts.en_query, parts.en_answer, tags) or "", cut(content, stops)


class Pivots:
    """The English pivots of this server's recent answers, by their content (bounded)."""

    def __init__(self, size: int = 4096):
        self._items: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self._size, self._lock = size, threading.Lock()

    def put(self, content: str, en_query: str, en_answer: str) -> None:
        with self._lock:
            self._items[content] = (en_query, en_answer)
            self._items.move_to_end(content)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, content: str) -> tuple[str, str] | None:
        with self._lock:
            return self._items.get(content)


class Answerer:
    """Answers for one served model version (TCOT unless ``plain``)."""

    def __init__(self, engine: Engine, tags: Tags, plain: bool):
        self.engine, self.tags, self.plain = engine, tags, plain
        self.tokenizer = engine.view.tokenizer
        self.context = engine.view.cfg.max_position_embeddings
        self.pivots = Pivots()

    # ------------------------------------------------------------------ prompts, checked before any generation
    def chat_prompt(self, messages: list[Message]) -> tuple[list[int], Turn | None]:
        """The first generation's prompt ids, and the TCOT turn to answer (None: plain chat)."""
        if self.plain:
            msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
            return self._render(msgs), None
        turn = self._turn(messages)
        return self._render(self._tcot(turn, _never).messages(turn.query)), turn

    def _render(self, msgs: list[dict[str, str]]) -> list[int]:
        try:
            return render(self.tokenizer, msgs, add_generation_prompt=True)
        except Exception as e:  # the chat template refused the conversation (e.g. roles it does not know)
            raise ApiError(400, f"the model's chat template refused these messages: {e}", "messages") from None

    def _turn(self, messages: list[Message]) -> Turn:
        system = "\n".join(m.text() for m in messages if m.role in ("system", "developer"))
        turns = [m for m in messages if m.role not in ("system", "developer")]
        roles = [m.role for m in turns]
        if not turns or roles != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
            raise ApiError(400, "messages must alternate user and assistant turns and end with a user turn", "messages")
        history = tuple(self._english(u, a) for u, a in zip(turns[0:-1:2], turns[1::2], strict=True))
        return Turn(system, history, turns[-1].text())

    def _english(self, user: Message, assistant: Message) -> tuple[str, str]:
        """An earlier turn in English: from its reasoning_content, from this server's memory, or as written."""
        if assistant.reasoning_content:
            parts = parse(assistant.reasoning_content, self.tags)
            if parts.en_query and parts.en_answer:
                return parts.en_query, parts.en_answer
        known = self.pivots.get(assistant.text())
        return known if known else (user.text(), assistant.text())

    def _tcot(self, turn: Turn, complete: Callable[..., list[int]]) -> TcotChat:
        chat = TcotChat(self.tokenizer, complete, self.tags, system=turn.system, stop_ids=tuple(self.engine.stop_ids))
        chat.history = list(turn.history)
        return chat

    # ------------------------------------------------------------------ answers
    def _complete(self, p: Params, cancel: threading.Event, jobs: list[Job], early_stop: bool) -> Callable[..., Any]:
        """The ``complete(ids, on_ids=None)`` a TCOT chat calls: one engine job each, recorded in ``jobs``."""

        def complete(ids: list[int], on_ids: Callable[[list[int]], None] | None = None) -> list[int]:
            room = min(p.max_new, self.context - len(ids))
            if room <= 0:  # a TCOT retry's prompt has filled the context: no more text
                return []
            job = Job(list(ids), room, p.settings, p.seed, p.stop if early_stop else (), on_ids, cancel)
            jobs.append(job)
            return self.engine.complete(job)

        return complete

    def chat(self, prompt: list[int], turn: Turn | None, p: Params, cancel: threading.Event,
             on_delta: OnDelta | None) -> Choice:  # fmt: skip
        """One chat choice: TCOT when ``turn`` is given, else the plain answer to ``prompt``."""
        if turn is None:
            return self.text(prompt, p, cancel, on_delta)
        jobs: list[Job] = []
        chat = self._tcot(turn, self._complete(p, cancel, jobs, early_stop=False))
        on_text = (lambda raw: on_delta(*visible(raw, self.tags, p.stop))) if on_delta else None
        reply = chat.send(turn.query, on_text=on_text)
        content = cut(reply.answer, p.stop)
        if reply.en_query and reply.en_answer:
            self.pivots.put(content, reply.en_query, reply.en_answer)
        finish = "stop" if reply.complete or not jobs or jobs[-1].finish == "stop" else "length"
        info = {"complete": reply.complete, "retries": reply.retries}
        return Choice(content, pivot(reply.en_query, reply.en_answer, self.tags), finish, _count(jobs), info)

    def text(self, prompt: list[int], p: Params, cancel: threading.Event, on_delta: OnDelta | None) -> Choice:
        """The plain continuation of ``prompt``, cut at the first stop string.

        Decoded as transformers and vLLM decode (special tokens skipped); while
        streaming, a trailing U+FFFD (a character whose bytes have not all come)
        is held back."""
        jobs: list[Job] = []
        complete = self._complete(p, cancel, jobs, early_stop=True)

        def shown(ids: list[int], final: bool = False) -> str:
            text = cut(self.tokenizer.decode(ids, skip_special_tokens=True), p.stop)
            return text if final else text.rstrip(REPLACEMENT)

        ids = complete(prompt, (lambda ids: on_delta("", shown(ids))) if on_delta else None)
        return Choice(shown(ids, final=True), None, jobs[-1].finish if jobs else "length", _count(jobs))


def _never(ids: list[int], on_ids: Any = None) -> list[int]:
    raise AssertionError("only the prompt is rendered with this chat")


def _count(jobs: list[Job]) -> int:
    return sum(len(j.result.result()) for j in jobs if j.result.done() and not j.result.exception())
