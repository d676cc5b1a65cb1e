"""Talk to a TCOT-trained model: the user sees the target-language answer; the English pivot on request.

A TransLLM model answers a target-language query with
``<EN> English query <RESPONSE> English answer <TH> target answer``. This
module drives that:

* **History rule** (TransLLM): earlier turns are given to the model in
  English, the form it answers English in: the user's turn as its English
  query, the assistant's as ``<RESPONSE> English answer``. Only the new query
  is in the target language. This keeps the context short and in the language
  the model reasons in.
* **Missing tags**: when a generation stops before a tag it needs (no
  ``<RESPONSE>`` after the English query, or no target tag after the English
  answer), the tag is inserted and generation continues from there, at most
  ``max_retries`` times. A reply that still lacks its target part falls back
  to the English answer and is marked incomplete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxtrans.data.formats import Tags, recovery_answer
from jaxtrans.data.template import decode_answer, render
from jaxtrans.infer.tcot import parse


@dataclasses.dataclass(frozen=True)
class Reply:
    answer: str  # what the user sees: the target-language answer
    en_query: str | None
    en_answer: str | None
    raw: str  # the whole generation, tags included
    complete: bool
    retries: int


class TcotChat:
    """Multi-turn TCOT chat over any ``complete(prompt_ids) -> new ids`` function (see :meth:`from_view`).

    The server (``jaxtrans.serve``) builds one per request, its history taken from the request's messages.
    """

    def __init__(
        self,
        tokenizer: Any,
        complete: Callable[[list[int]], list[int]],
        tags: Tags = Tags(),
        max_retries: int = 2,
        system: str = "",
        stop_ids: tuple[int, ...] = (),
    ):
        self.tokenizer, self.complete, self.tags, self.max_retries = tokenizer, complete, tags, max_retries
        self.history: list[tuple[str, str]] = []  # (English query, English answer) of earlier turns
        self.system = system
        self.stops = set(stop_ids)
        self._on_text: Callable[[str], None] | None = None

    @classmethod
    def from_view(cls, view: Any, max_new_tokens: int = 256, **kw: Any) -> TcotChat:
        from jaxtrans.data.template import stop_token_ids
        from jaxtrans.infer.generate import SamplingConfig, generate

        stops = stop_token_ids(view.tokenizer)
        pad = view.tokenizer.pad_token_id or 0

        def complete(ids: list[int]) -> list[int]:
            sampling = SamplingConfig(max_new_tokens=max_new_tokens)
            return generate(view.cfg, view.variables, [ids], sampling, stops, pad, adapters=view.adapters)[0]

        return cls(view.tokenizer, complete, stop_ids=tuple(stops), **kw)

    def messages(self, query: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for en_q, en_a in self.history:
            msgs += [{"role": "user", "content": en_q},
                     {"role": "assistant", "content": recovery_answer(en_a, self.tags)}]  # fmt: skip
        return msgs + [{"role": "user", "content": query}]

    def _text(self, prefix: str, new_ids: list[int]) -> str:
        text = decode_answer(self.tokenizer, new_ids, self.stops)
        return f"{prefix} {text}" if prefix else text

    def _generate(self, prompt: list[int], prefix: str) -> str:
        ids = prompt + (self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
        if self._on_text is None:
            return self._text(prefix, self.complete(ids))
        on_text = self._on_text
        return self._text(prefix, self.complete(ids, on_ids=lambda new: on_text(self._text(prefix, new))))

    def send(self, query: str, on_text: Callable[[str], None] | None = None) -> Reply:
        """Answer ``query``; ``on_text`` (streaming) gets the whole raw text so far as it grows.

        With ``on_text``, ``complete`` must take ``on_ids``: a callback for the new ids so far.
        """
        self._on_text = on_text
        prompt = render(self.tokenizer, self.messages(query), add_generation_prompt=True)
        text = self._generate(prompt, "")
        retries = 0
        while retries < self.max_retries:
            parts = parse(text, self.tags)
            if parts.complete:
                break
            t = self.tags
            if t.english in text and t.response not in text:
                text = self._generate(prompt, text.rstrip() + f" {t.response}")
            elif t.response in text and t.target not in text:
                text = self._generate(prompt, text.rstrip() + f" {t.target}")
            elif t.english not in text and t.response not in text:
                text = self._generate(prompt, f"{t.english}")  # the model skipped the pivot: start it
            else:
                break
            retries += 1
        parts = parse(text, self.tags)
        answer = parts.answer if parts.complete and parts.answer else (parts.en_answer or text.strip())
        if parts.en_query is not None and parts.en_answer is not None:
            self.history.append((parts.en_query, parts.en_answer))
        return Reply(answer, parts.en_query, parts.en_answer, text, parts.complete, retries)
