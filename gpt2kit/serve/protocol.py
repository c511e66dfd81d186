"""The wire format: request bodies, the error shape, and the response shapes the OpenAPI schema documents.

Requests are strict: a field of the wrong JSON type, or a field this server does not implement, is refused
with a 400 naming it (OpenAI and vLLM answer so), rather than coerced or silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_LOGPROBS = 5
MAX_REPORTED_PROBLEMS = 3  # a malformed body can fail thousands of ways; the message names the first few


class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- requests -------------------------------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool | None = None  # a usage chunk before [DONE]
    continuous_usage_stats: bool | None = None  # vLLM's: with include_usage, usage so far on every chunk too


class CompletionRequest(_Request):
    """The /v1/completions body: OpenAI's Completions API and the vLLM extensions this server implements."""

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not in OpenAI's schema; vLLM and others accept it
    n: int | None = Field(1, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # what torch's generators take
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    presence_penalty: float | None = Field(0.0, ge=-2, le=2)
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2)
    best_of: int | None = Field(None, ge=1)
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    user: str | None = None
    # vLLM's extensions
    repetition_penalty: float | None = Field(1.0, gt=0, le=10)
    min_tokens: int | None = Field(0, ge=0)
    ignore_eos: bool | None = False


class TokenizeRequest(_Request):
    """vLLM's /tokenize body (the completions form: a prompt, not chat messages)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # GPT-2 adds none: accepted for vLLM's clients
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    """vLLM's /detokenize body."""

    model: str | None = None
    tokens: list[int]


# -- responses (what the OpenAPI schema promises) ---------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]  # the top `logprobs` alternatives and the chosen token
    text_offset: list[int]


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: str
    model: str | None = None
    active_sequences: int | None = None
    queued_requests: int | None = None
    message: str | None = None


ERRORS = {"4XX": {"model": ErrorResponse}, "5XX": {"model": ErrorResponse}}  # every route's error answers


def completion_responses() -> dict:
    """/v1/completions answers JSON, or server-sent events when streaming (the schema describes one event)."""
    data = {"type": "string", "description": "a chunk shaped as the JSON answer (usage only if asked), or [DONE]"}
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {200: {"model": CompletionResponse, "content": {"text/event-stream": {"schema": event}}}, **ERRORS}


# -- validation problems -> one 400 ---------------------------------------------------------


def _location(loc: tuple) -> list[str]:
    """A pydantic location as the client wrote it: without `body` and the union branches pydantic tried
    (`str`, `list[int]`, `function-after[...]`)."""
    parts = [str(part) for part in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return [p for p in parts if "[" not in p and "-" not in p and p not in ("str", "int", "float", "bool")]


def validation_error(problems: list) -> APIError:
    """One 400 for pydantic's list of problems: an unsupported field first, else the first few problems, with
    the first bad field as `param`."""
    problems = [p for p in problems if isinstance(p, dict)]
    if any(p.get("type") == "json_invalid" for p in problems):
        return APIError(400, "request body is not valid JSON", code="json_invalid")
    unsupported = [".".join(_location(p.get("loc", ()))) for p in problems if p.get("type") == "extra_forbidden"]
    if unsupported:
        names = ", ".join(dict.fromkeys(unsupported))
        verb = "is" if len(set(unsupported)) == 1 else "are"
        return APIError(400, f"{names} {verb} not supported by this server", unsupported[0], "unsupported_field")
    messages, params = [], []
    for problem in problems:
        where = _location(problem.get("loc", ()))
        params.append(where[0] if where else None)
        message = f"{'.'.join(where) or 'body'}: {problem.get('msg')}"
        if message not in messages:
            messages.append(message)
    shown = "; ".join(messages[:MAX_REPORTED_PROBLEMS])
    if len(messages) > MAX_REPORTED_PROBLEMS:
        shown += f" (and {len(messages) - MAX_REPORTED_PROBLEMS} more)"
    return APIError(400, shown or "invalid request", params[0] if params else None)
