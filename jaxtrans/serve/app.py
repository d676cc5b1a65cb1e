"""The HTTP side: OpenAI's chat-completions and completions routes, models, health and the chat page.

Built on FastAPI/Starlette (served by uvicorn in ``jaxtrans.serve``). Each
request is admitted only while fewer than ``max_queue`` are held (running or
waiting); beyond that it gets 503 with ``Retry-After``. Generation runs in
worker threads that block on the :class:`~jaxtrans.serve.engine.Engine`;
streamed answers are server-sent events fed from the engine between chunks,
and a client that goes away mid-stream stops its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from jaxtrans.serve.answer import Answerer, Choice, Params
from jaxtrans.serve.engine import Cancelled, Settings
from jaxtrans.serve.protocol import ApiError, ChatRequest, CompletionRequest, Sampling

log = logging.getLogger("jaxtrans.serve")
PAGE = os.path.join(os.path.dirname(__file__), "page.html")


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``python -m jaxtrans.serve`` was started with, beyond the model."""

    name: str  # the model id clients name
    adapter: str | None = None
    api_key: str | None = None
    max_queue: int = 32
    max_n: int = 8
    max_tokens: int = 512  # when a request gives none (less where the context is shorter)
    temperature: float = 0.0  # when a request gives none: greedy, the setting jaxtrans' evaluation measures


class Admission:
    """How many requests are held; refuses beyond ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.held, self.served, self._lock = limit, 0, 0, threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.held >= self.limit:
                raise ApiError(503, f"the server holds {self.held} requests, its limit (--max_queue); retry shortly")
            self.held += 1

    def leave(self) -> None:
        with self._lock:
            self.held -= 1
            self.served += 1


class Service:
    """What the routes do, for one served model version."""

    def __init__(self, answerer: Answerer, options: Options):
        self.answerer, self.options, self.admission = answerer, options, Admission(options.max_queue)

    def health(self) -> dict[str, Any]:
        engine, o = self.answerer.engine, self.options
        return {"status": "ok", "model": o.name, "adapter": o.adapter, "tcot": not self.answerer.plain,
                "held": self.admission.held, "waiting": engine.waiting, "max_queue": self.admission.limit,
                "served": self.admission.served, **engine.stats}  # fmt: skip

    def models(self) -> dict[str, Any]:
        card = {"id": self.options.name, "object": "model", "created": 0, "owned_by": "jaxtrans",
                "root": self.options.name, "max_model_len": self.answerer.context}  # fmt: skip
        return {"object": "list", "data": [card]}

    async def chat(self, body: ChatRequest) -> Any:
        self._check(body)
        prompt, turn = self.answerer.chat_prompt(body.messages)
        p = self._params(body, len(prompt))
        work = [(j, _seeded(p, j), partial(self.answerer.chat, prompt, turn)) for j in range(body.n)]
        return await self._respond(body, work, "chat.completion", len(prompt))

    async def completions(self, body: CompletionRequest) -> Any:
        self._check(body)
        tok = self.answerer.tokenizer
        prompts = [p if isinstance(p, list) else tok(p)["input_ids"] for p in body.prompts()]
        for ids in prompts:
            if any(not 0 <= t < len(tok) for t in ids):
                raise ApiError(400, f"prompt holds token ids outside the vocabulary [0, {len(tok)})", "prompt")
        plans = [(ids, self._params(body, len(ids))) for ids in prompts]
        work = [(i * body.n + j, _seeded(p, j), partial(self.answerer.text, ids))
                for i, (ids, p) in enumerate(plans) for j in range(body.n)]  # fmt: skip
        return await self._respond(body, work, "text_completion", sum(len(ids) for ids in prompts))

    def _check(self, body: Sampling) -> None:
        body.refuse_unsupported()
        o = self.options
        if body.model != o.name:
            raise ApiError(404, f"model {body.model!r} is not served here; this server serves {o.name!r}", "model",
                           "model_not_found")  # fmt: skip
        if body.n > o.max_n:
            raise ApiError(400, f"n={body.n} is more than this server allows (--max_n {o.max_n})", "n")

    def _params(self, body: Sampling, prompt_len: int) -> Params:
        context, o = self.answerer.context, self.options
        room, want = context - prompt_len, body.budget()  # type: ignore[attr-defined]
        if room <= 0 or (want is not None and want > room):
            raise ApiError(400, f"this model's context is {context} tokens; the prompt has {prompt_len} and "
                           f"max_tokens asks for {want}: shorten the messages or lower max_tokens", "messages",
                           "context_length_exceeded")  # fmt: skip
        temperature = o.temperature if body.temperature is None else body.temperature
        seed = body.seed if body.seed is not None else (0 if temperature == 0 else secrets.randbits(31))
        settings = Settings(temperature, body.top_p if temperature else 1.0, body.top_k if temperature else 0)
        return Params(min(want or o.max_tokens, room), settings, seed, body.stops())

    async def _respond(self, body: Sampling, work: list, kind: str, prompt_tokens: int) -> Any:
        """The choices in one response, or streamed; the request is held (or refused) from here on."""
        self.admission.enter()
        header = {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
                  "created": int(time.time()), "model": self.options.name}  # fmt: skip
        if body.stream:
            usage = bool((getattr(body, "stream_options", None) or {}).get("include_usage"))
            events = self._stream(work, {**header, "object": f"{kind}.chunk"}, kind, prompt_tokens, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            choices = await asyncio.gather(*(_in_thread(f, p, None, threading.Event()) for _, p, f in work))
        finally:
            self.admission.leave()
        return _whole(header, kind, [(k, c) for (k, _, _), c in zip(work, choices, strict=True)], prompt_tokens)

    def _stream(self, work: list, chunk: dict, kind: str, prompt_tokens: int, usage: bool) -> AsyncIterator[str]:
        """Start the choices now; server-sent events of each choice's text as it grows, its finish, then [DONE].

        The request stays held until its choices have ended, whether or not the client reads the stream.
        """
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        cancels = [threading.Event() for _ in work]

        def on_delta(i: int) -> Callable[[str, str], None]:
            return lambda r, c: loop.call_soon_threadsafe(events.put_nowait, (i, r, c, None))

        async def one(i: int, run: Any, p: Params) -> None:
            try:
                choice = await _in_thread(run, p, on_delta(i), cancels[i])
                events.put_nowait((i, choice.reasoning or "", choice.content, choice))
            except Cancelled:
                pass
            except Exception as e:  # reported in the stream: the status line has gone already
                log.exception("a streamed request failed")
                events.put_nowait((i, "", "", e))

        tasks = [asyncio.create_task(one(i, f, p)) for i, (_, p, f) in enumerate(work)]
        asyncio.gather(*tasks).add_done_callback(lambda _: self.admission.leave())
        return _events(events, cancels, work, chunk, kind, prompt_tokens, usage)


def create_app(answerer: Answerer, options: Options) -> FastAPI:
    """The ASGI app serving ``answerer``'s model under ``options``."""
    service = Service(answerer, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = options.max_queue * options.max_n + 8
        yield
        answerer.engine.close()

    app = FastAPI(title="jaxtrans", lifespan=lifespan, docs_url=None, redoc_url=None)
    _errors(app)
    _auth(app, options.api_key)
    app.get("/health")(service.health)
    app.get("/v1/models")(service.models)
    app.post("/v1/chat/completions")(service.chat)
    app.post("/v1/completions")(service.completions)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        with open(PAGE, encoding="utf-8") as f:
            return f.read()

    return app


def _errors(app: FastAPI) -> None:
    """Every error in OpenAI's shape: 400 for a body that does not parse or validate, 500 for a failure."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception) -> JSONResponse:
        log.exception("a request failed")
        return JSONResponse(ApiError(500, f"the server failed on this request: {e}").body(), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})"
        elif err.get("type") == "missing" and not where:
            msg = "the request has no JSON body"
        else:
            msg = f"{where or 'body'}: {err['msg']}"
        return JSONResponse(ApiError(400, msg, where or None).body(), status_code=400)


def _auth(app: FastAPI, api_key: str | None) -> None:
    """With a key, the /v1 routes need ``Authorization: Bearer KEY`` (the page and /health hold nothing)."""
    if not api_key:
        return
    want = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def auth(request: Request, call_next: Callable[..., Any]) -> Any:
        given = request.headers.get("authorization", "").encode()
        if request.url.path.startswith("/v1/") and not secrets.compare_digest(given, want):
            err = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
            return JSONResponse(err.body(), status_code=401)
        return await call_next(request)


async def _in_thread(run: Any, p: Params, on_delta: Any, cancel: threading.Event) -> Choice:
    return await anyio.to_thread.run_sync(run, p, cancel, on_delta)


async def _events(events: asyncio.Queue, cancels: list, work: list, chunk: dict, kind: str,
                  prompt_tokens: int, usage: bool) -> AsyncIterator[str]:  # fmt: skip
    sent = [{"reasoning_content": "", "content": ""} for _ in work]
    try:
        if kind == "chat.completion":
            for k, _, _ in work:
                yield _sse({**chunk, "choices": [{"index": k, "delta": {"role": "assistant"}, "finish_reason": None}]})
        left, tokens = len(work), 0
        while left:
            i, reasoning, content, final = await events.get()
            if isinstance(final, Exception):
                yield _sse({"error": ApiError(500, f"generation failed: {final}").body()["error"]})
                left -= 1
                continue
            delta = _delta(sent[i], reasoning, content)
            if delta:
                yield _sse({**chunk, "choices": [_piece(kind, work[i][0], delta, None)]})
            if final is not None:
                left, tokens = left - 1, tokens + final.tokens
                yield _sse({**chunk, "choices": [_piece(kind, work[i][0], {}, final.finish)]})
        if usage:
            yield _sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, tokens)})
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or the stream ended): stop whatever still runs
        for c in cancels:
            c.set()


def _seeded(p: Params, j: int) -> Params:
    """Choice ``j``'s settings: its own seed, so ``n`` sampled choices differ."""
    return dataclasses.replace(p, seed=(p.seed + j) % 2**32)


def _delta(sent: dict[str, str], reasoning: str, content: str) -> dict[str, str]:
    """What the client has not seen of each field (only a field that grew from what was sent)."""
    out = {}
    for name, now in (("reasoning_content", reasoning), ("content", content)):
        if len(now) > len(sent[name]) and now.startswith(sent[name]):
            out[name], sent[name] = now[len(sent[name]) :], now
    return out


def _piece(kind: str, index: int, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    if kind == "chat.completion":
        return {"index": index, "delta": delta, "finish_reason": finish}
    return {"index": index, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _whole(header: dict, kind: str, choices: list[tuple[int, Choice]], prompt_tokens: int) -> dict[str, Any]:
    out = []
    for k, c in choices:
        if kind == "chat.completion":
            message = {"role": "assistant", "content": c.content, "reasoning_content": c.reasoning}
            out.append({"index": k, "message": message, "finish_reason": c.finish, "tcot": c.tcot})
        else:
            out.append({"index": k, "text": c.content, "finish_reason": c.finish, "logprobs": None})
    usage = _usage(prompt_tokens, sum(c.tokens for _, c in choices))
    return {**header, "object": kind, "choices": out, "usage": usage}


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
