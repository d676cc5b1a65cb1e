"""The OpenAI request bodies the server takes, and its error object.

Fields the OpenAI API defines and jaxtrans cannot honour (log-probabilities,
penalties, tools) are refused with a 400 naming them rather than ignored:
an ignored setting is a silently different answer. Unknown fields are
allowed (clients send vendor extensions) and unused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error the client caused (4xx) or a full server (503), in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None  # an earlier TCOT reply's English pivot, as this server returned it

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class Sampling(BaseModel):
    """What both endpoints take."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # an extension (vLLM has it too); 0 = off
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**32)
    stream: bool = False
    logprobs: Any = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, f"stop has {len(stops)} strings; at most 4 are allowed", "stop")
        return tuple(s for s in stops if s)

    def refuse_unsupported(self) -> None:
        """The settings this server would otherwise ignore."""
        if self.logprobs not in (None, False, 0):
            raise ApiError(400, "logprobs is not supported by this server; leave it out", "logprobs")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server; leave it out or set 0", name)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, gt=0)
    tools: Any = None

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.tools:
            raise ApiError(400, "tools are not supported by this server; leave them out", "tools")


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None

    def budget(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            p = [p]  # type: ignore[list-item]
        if not p or any(len(x) == 0 for x in p):  # type: ignore[arg-type]
            raise ApiError(400, "prompt is empty; give a non-empty string or token list", "prompt")
        return list(p)  # type: ignore[arg-type]

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo or self.suffix:
            raise ApiError(400, "echo and suffix are not supported by this server; leave them out", "echo")
