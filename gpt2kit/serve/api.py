"""The HTTP side of the server: request schema, OpenAI-compatible routes, streaming (SSE) and `serve()`.

The model runs on one engine thread that decodes all requests as one batch
(continuous batching: requests join between decoding steps and leave when
done), so the event loop is never blocked by the model and concurrent
requests share each forward pass. Requests talk to the engine through
per-request asyncio queues; a request that disconnects, or runs past its
timeout, cancels its sequences, and the engine drops them at the next step.
"""

import asyncio
import codecs
import contextlib
import functools
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from gpt2kit.config import Checked
from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import (
    GenerationConfig,
    SequenceState,
    best_completions,
    encode_prompt,
    generate,
    token_text,
)
from gpt2kit.inference import QUANTIZATIONS, prepare_for_decoding
from gpt2kit.model import GPT
from gpt2kit.serve.engine import Done, Engine, Failed, Job, Update
from gpt2kit.serve.observe import ACCESS_KEY, LOG_FORMATS, AccessLog, ServerMetrics
from gpt2kit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_LOGPROBS = 5
PROTECTED_PATHS = ("/v1/", "/tokenize", "/detokenize")  # what --api-key guards; /health and /metrics stay open


@dataclass
class ServerConfig(Checked):
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None  # the id clients see; default: the model directory's name
    api_key: str | None = None
    device: str = "cpu"
    quantize: str | None = None  # int8: fbgemm int8 weights (CPU)
    max_prompt_tokens: int | None = None  # None: the model's context
    max_tokens_cap: int = 1024
    max_n: int = 8
    max_choices: int = 32  # prompts x n in one request
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 300.0
    max_batch_size: int = 16
    log_format: str = "text"  # the access log: text, or json (one JSON object a line)
    share_prefixes: bool = True  # encode a prompt prefix that joining requests share once, and keep recent ones

    def __post_init__(self) -> None:
        self.check("server config")

    def problems(self) -> list[str]:
        bad = [
            f"{name} must be >= 1, got {getattr(self, name)}"
            for name in ("max_tokens_cap", "max_n", "max_choices", "max_body_bytes", "max_batch_size")
            if getattr(self, name) < 1
        ]
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            bad.append(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if not self.request_timeout_s > 0:
            bad.append(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if not 0 <= self.port < 65536:
            bad.append(f"port must be in 0..65535, got {self.port}")
        if self.quantize not in (None, *QUANTIZATIONS):
            bad.append(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {self.quantize!r}")
        if self.api_key == "":
            bad.append("api_key must not be empty (leave it out to turn auth off)")
        if self.log_format not in LOG_FORMATS:
            bad.append(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        return bad


# -- errors ---------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# -- request schema -------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The /v1/completions body, as OpenAI's Completions API defines it (unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

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
    suffix: str | None = None
    user: str | None = None
    # vLLM's extensions
    repetition_penalty: float | None = Field(1.0, gt=0, le=10)
    min_tokens: int | None = Field(0, ge=0)
    ignore_eos: bool | None = False


# -- the app --------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A validated request: its prompts as token ids and one GenerationConfig per choice."""

    prompts: list[list[int]]
    configs: list[GenerationConfig]  # one per candidate: best_of for each prompt
    n: int
    best_of: int
    echo: bool
    logprobs: int | None
    stream: bool
    include_usage: bool


def _wrap_int64(value: int) -> int:
    """Choice k of a request seeded s is seeded s + k, wrapped into the signed 64-bit range."""
    return (value + 2**63) % 2**64 - 2**63


class CompletionsService:
    """Validation, limits and response shaping around an Engine."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, config: ServerConfig, model_name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.context = model.config.n_positions
        self.max_prompt_tokens = config.max_prompt_tokens or self.context
        self.metrics = ServerMetrics(lambda: self.engine.queued_requests, lambda: self.engine.active_sequences)
        self.engine = Engine(
            model,
            tokenizer,
            config.max_batch_size,
            on_step=self.metrics.batch_size.observe,
            share_prefixes=config.share_prefixes,
        )
        self.created = int(time.time())

    def warm_up(self) -> None:
        """One short greedy decode before the first request, so that it does not pay for first-call setup."""
        config = GenerationConfig(max_new_tokens=2, temperature=0.0, ignore_eos=True)
        generate(self.model, self.tokenizer, [[self.tokenizer.eot_token]], config)

    # -- validation ---------------------------------------------------------------------
    def prepare(self, request: CompletionRequest) -> _Prepared:
        limits = self.config
        if request.suffix is not None:
            raise APIError(400, "suffix is not supported by this server", param="suffix", code="unsupported")
        n = request.n or 1
        if n > limits.max_n:
            raise APIError(400, f"n is {n}, above this server's cap of {limits.max_n}", "n")
        best_of = request.best_of or n
        if best_of < n:
            raise APIError(400, f"best_of ({best_of}) must be at least n ({n})", "best_of")
        if best_of > limits.max_n:
            raise APIError(400, f"best_of is {best_of}, above this server's cap of {limits.max_n}", "best_of")
        if request.stream and best_of != n:
            raise APIError(400, "best_of cannot be used with stream (the best are known only at the end)", "best_of")
        logit_bias = self._logit_bias(request.logit_bias or {})
        max_tokens = 16 if request.max_tokens is None else request.max_tokens
        if max_tokens > limits.max_tokens_cap:
            raise APIError(
                400, f"max_tokens is {max_tokens}, above this server's cap of {limits.max_tokens_cap}", "max_tokens"
            )
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            raise APIError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", "stop")
        prompts = self._prompts(request.prompt)
        if len(prompts) * best_of > limits.max_choices:
            raise APIError(
                400,
                f"{len(prompts)} prompts x {'best_of' if best_of > n else 'n'}={best_of} is above this server's cap "
                f"of {limits.max_choices} sequences",
                "best_of" if best_of > n else "n",
            )
        if request.echo and request.stream and request.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported when streaming", "echo", "unsupported")
        temperature = 1.0 if request.temperature is None else request.temperature
        configs = []
        for candidate in range(len(prompts) * best_of):
            try:
                configs.append(
                    GenerationConfig(
                        max_new_tokens=max_tokens,
                        temperature=temperature,
                        top_k=request.top_k or 0,
                        top_p=1.0 if request.top_p is None else request.top_p,
                        stop=tuple(stop),
                        seed=None if request.seed is None else _wrap_int64(request.seed + candidate),
                        logprobs=request.logprobs or 0,
                        presence_penalty=request.presence_penalty or 0.0,
                        frequency_penalty=request.frequency_penalty or 0.0,
                        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
                        logit_bias=logit_bias,
                        min_tokens=request.min_tokens or 0,
                        ignore_eos=bool(request.ignore_eos),
                    )
                )
            except GPT2KitError as err:
                raise APIError(400, str(err)) from None
        if request.min_tokens and request.min_tokens > max_tokens:
            raise APIError(400, f"min_tokens ({request.min_tokens}) is above max_tokens ({max_tokens})", "min_tokens")
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return _Prepared(
            prompts, configs, n, best_of, bool(request.echo), request.logprobs, bool(request.stream), include_usage
        )

    def _logit_bias(self, given: dict[str, float]) -> dict[int, float]:
        """OpenAI's logit_bias: token ids as strings, biases in [-100, 100]."""
        bias = {}
        for key, value in given.items():
            try:
                token = int(key)
            except ValueError:
                raise APIError(400, f"logit_bias: {key!r} is not a token id", "logit_bias") from None
            problem = self.tokenizer.unknown_id([token])
            if problem:
                raise APIError(400, f"logit_bias: {problem}", "logit_bias")
            if not -100 <= value <= 100:
                raise APIError(
                    400, f"logit_bias: the bias of token {token} is {value}, outside [-100, 100]", "logit_bias"
                )
            bias[token] = value
        return bias

    def _prompts(self, prompt: str | list) -> list[list[int]]:
        """Token ids of each prompt, with the prompt-length limit applied."""
        if isinstance(prompt, str):
            items: list = [prompt]
        elif prompt and all(isinstance(t, int) for t in prompt):
            items = [prompt]  # one prompt given as token ids
        else:
            items = list(prompt)
        if not items:
            raise APIError(400, "prompt must not be an empty list", "prompt")
        prompts = []
        for i, item in enumerate(items):
            try:
                ids = encode_prompt(self.tokenizer, item, context=1 << 62, where=f"prompt {i}")
            except GPT2KitError as err:
                raise APIError(400, str(err), "prompt") from None
            if len(ids) > self.max_prompt_tokens:
                raise APIError(
                    400,
                    f"prompt {i} has {len(ids)} tokens, above this server's limit of {self.max_prompt_tokens}",
                    "prompt",
                    "context_length_exceeded",
                )
            prompts.append(ids)
        return prompts

    def make_job(self, prepared: _Prepared, loop: asyncio.AbstractEventLoop) -> Job:
        rows = []
        for p, ids in enumerate(prepared.prompts):
            for j in range(prepared.best_of):
                config = prepared.configs[p * prepared.best_of + j]
                rows.append(SequenceState(list(ids), config, self.tokenizer, seed=config.seed))
        score = prepared.prompts if prepared.echo and prepared.logprobs is not None else []
        return Job(rows, loop, prepared.stream, score_prompts=score, top=prepared.logprobs or 0)

    # -- responses ----------------------------------------------------------------------
    def _envelope(self, request_id: str, choices: list[dict]) -> dict[str, Any]:
        return {
            "id": request_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
        }

    def usage(self, prepared: _Prepared, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = sum(map(len, prepared.prompts))
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _logprobs(
        self,
        token_ids: list[int],
        token_logprobs: list,
        top_logprobs: list | None,
        start_offset: int,
        prefix: bytes = b"",
    ) -> dict[str, Any]:
        return {
            "tokens": [token_text(self.tokenizer, t) for t in token_ids],
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": _text_offsets(self.tokenizer, token_ids, start_offset, prefix),
        }

    def response(self, request_id: str, prepared: _Prepared, job: Job, done: Done) -> dict[str, Any]:
        chosen = done.completions
        if prepared.best_of > prepared.n:  # each prompt's n best candidates by mean logprob
            b = prepared.best_of
            chosen = [c for p in range(0, len(chosen), b) for c in best_completions(chosen[p : p + b], prepared.n)]
        choices = []
        for index, completion in enumerate(chosen):
            prompt_ids = prepared.prompts[index // prepared.n]
            prompt_text = self.tokenizer.decode(prompt_ids) if prepared.echo else ""
            logprobs = None
            if prepared.logprobs is not None:
                top = completion.top_logprobs if prepared.logprobs > 0 else None
                if prepared.echo:
                    prompt_lp, prompt_top = job.prompt_scores[index // prepared.n]
                    ids = prompt_ids + completion.token_ids
                    token_lps = prompt_lp + completion.token_logprobs
                    top = (prompt_top or []) + (completion.top_logprobs or []) if prepared.logprobs > 0 else None
                    logprobs = self._logprobs(ids, token_lps, top, 0)
                else:
                    logprobs = self._logprobs(completion.token_ids, completion.token_logprobs, top, 0)
            choices.append(
                {
                    "text": prompt_text + completion.text,
                    "index": index,
                    "logprobs": logprobs,
                    "finish_reason": completion.finish_reason,
                }
            )
        body = self._envelope(request_id, choices)
        body["usage"] = self.usage(prepared, sum(len(c.token_ids) for c in done.completions))  # every candidate
        return body

    def chunk(self, request_id: str, prepared: _Prepared, update: Update, offsets: dict[int, bytes]) -> dict:
        logprobs = None
        if prepared.logprobs is not None:
            top = update.top_logprobs if prepared.logprobs > 0 else None
            done_bytes = offsets.get(update.index, b"")
            logprobs = self._logprobs(update.token_ids, update.token_logprobs, top, 0, done_bytes)
            offsets[update.index] = done_bytes + b"".join(self.tokenizer.token_bytes(t) for t in update.token_ids)
        choice = {
            "text": update.text,
            "index": update.index,
            "logprobs": logprobs,
            "finish_reason": update.finish_reason,
        }
        return self._envelope(request_id, [choice])


def _text_offsets(tokenizer: Tokenizer, token_ids: list[int], start: int, prefix: bytes = b"") -> list[int]:
    """Where each token's text starts (characters), counting from `start` after the text of `prefix`."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    position = start + len(decoder.decode(prefix))
    offsets = []
    for token in token_ids:
        offsets.append(position)
        position += len(decoder.decode(tokenizer.token_bytes(token)))
    return offsets


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


class _BodyLimit:
    """ASGI middleware: a request body over the limit gets a 400 before any handler parses it."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            400, f"request body is larger than this server's limit of {self.limit} bytes", code="request_too_large"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(too_large, scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _send_error(too_large, scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _ApiKey:
    """ASGI middleware: a request to the model without 'Authorization: Bearer KEY' gets a 401, its body unread."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PATHS):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = APIError(
                    401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"
                )
                await _send_error(error, scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _send_error(error: APIError, scope, receive, send) -> None:
    await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)


def _validation_error(problems: list[dict]) -> APIError:
    """One readable message for pydantic's list of problems, naming the first bad field as `param`."""
    if any(p.get("type") == "json_invalid" for p in problems):
        return APIError(422, "request body is not valid JSON", code="json_invalid")
    messages, params = [], []
    for problem in problems:
        where = [str(part) for part in problem.get("loc", ()) if part != "body"]
        params.append(where[0] if where else None)
        messages.append(f"{'.'.join(where) or 'body'}: {problem.get('msg')}")
    return APIError(422, "; ".join(messages) or "invalid request", params[0] if params else None)


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize body."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # GPT-2 adds none: accepted for vLLM's clients


class DetokenizeRequest(BaseModel):
    """vLLM's /detokenize body."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


def create_app(model: GPT, tokenizer: Tokenizer, config: ServerConfig | None = None, model_name: str = "gpt2kit"):
    """The FastAPI app over a loaded model: it is warmed up before the app starts answering."""
    return build_app(lambda: (model, tokenizer), config, model_name, load_in_background=False)


def build_app(
    load: Callable[[], tuple[GPT, Tokenizer]],
    config: ServerConfig | None = None,
    model_name: str = "gpt2kit",
    *,
    load_in_background: bool = True,
    on_load_error: Callable[[BaseException], None] | None = None,
):
    """The FastAPI app: /v1/completions, /v1/models, /tokenize, /detokenize, /health, /metrics and the playground.

    `load` returns the model and tokenizer. In the background (as `serve` runs it) the app answers at once:
    /health and the model routes say 503 until the model is loaded and warmed up.
    """
    config = config or ServerConfig()
    state: dict[str, Any] = {"service": None, "error": None}

    def load_and_warm() -> None:
        try:
            model, tokenizer = load()
            service = CompletionsService(model, tokenizer, config, model_name)
            service.warm_up()
            service.engine.start()
            state["service"] = service
            logger.info("model %s loaded and warmed up: ready", model_name)
        except BaseException as err:  # reported through /health and on_load_error
            state["error"] = err
            if on_load_error is None:
                raise
            on_load_error(err)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if load_in_background:
            loader = threading.Thread(target=load_and_warm, name="gpt2kit-load", daemon=True)
            loader.start()
        else:
            await asyncio.to_thread(load_and_warm)
        yield
        if state["service"] is not None:
            state["service"].engine.stop()

    ready = functools.partial(_ready, state)

    app = FastAPI(title="gpt2kit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(_ApiKey, key=config.api_key)  # added after the body limit, so it runs first
    metrics = lambda: state["service"].metrics if state["service"] is not None else None  # noqa: E731
    app.add_middleware(AccessLog, log_format=config.log_format, metrics=metrics)  # outermost: sees every answer

    _add_error_handlers(app)
    _add_info_routes(app, state, model_name)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        service = ready()
        prepared = await asyncio.to_thread(service.prepare, body)  # tokenizing a long prompt takes a while
        loop = asyncio.get_running_loop()
        job = service.make_job(prepared, loop)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        deadline = loop.time() + config.request_timeout_s
        note = request.scope.get(ACCESS_KEY, {})
        note["prompt_tokens"] = sum(map(len, prepared.prompts))
        service.engine.submit(job)
        if prepared.stream:
            return StreamingResponse(
                _stream_events(service, request_id, prepared, job, request, deadline),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            done = await _wait_for_done(job, request, deadline, config.request_timeout_s)
        finally:
            job.cancel()  # a no-op when done; stops the work when the client left or timed out
        if done is None:
            return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
        _count_done(service, prepared, job, done, note)
        return service.response(request_id, prepared, job, done)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        service = ready()
        tokens = await asyncio.to_thread(service.tokenizer.encode, body.prompt)
        return {"count": len(tokens), "max_model_len": service.context, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        service = ready()
        problem = service.tokenizer.unknown_id(body.tokens)
        if problem:
            raise APIError(400, problem, "tokens")
        return {"prompt": service.tokenizer.decode(body.tokens)}

    return app


def _count_done(service: CompletionsService, prepared: _Prepared, job: Job, done: Done, note: dict) -> None:
    generated = sum(len(c.token_ids) for c in done.completions)
    note["completion_tokens"] = generated
    service.metrics.finished(job, sum(map(len, prepared.prompts)), generated)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers in OpenAI's shape; an unexpected one is logged and answered 500 without details."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return JSONResponse(_validation_error(error.errors()).body(), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            APIError(error.status_code, str(error.detail), kind=kind).body(), status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.exception("unexpected error")
        return JSONResponse(APIError(500, "internal server error", kind="server_error").body(), status_code=500)


def _ready(state: dict) -> CompletionsService:
    """The service, or a 503 while the model loads."""
    service = state["service"]
    if service is None:
        raise APIError(503, "the model is still loading; retry shortly", code="model_loading", kind="server_error")
    return service


def _add_info_routes(app: FastAPI, state: dict, model_name: str) -> None:
    """/health, /metrics, /v1/models and the playground page."""
    ready = functools.partial(_ready, state)

    @app.get("/health")
    async def health():
        service = state["service"]
        if service is None:
            failed = state["error"]
            message = f"the model failed to load: {failed}" if failed else "loading the model"
            return JSONResponse({"status": "failed" if failed else "loading", "message": message}, status_code=503)
        return {
            "status": "ok",
            "model": model_name,
            "active_sequences": service.engine.active_sequences,
            "queued_requests": service.engine.queued_requests,
        }

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service = ready()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": ready().created, "owned_by": "gpt2kit"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        if name != model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has {model_name!r}",
                "model",
                "model_not_found",
                "not_found_error",
            )
        return model_card()

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(resources.files("gpt2kit").joinpath("static", "index.html").read_text(encoding="utf-8"))


def _timeout_error(seconds: float) -> APIError:
    return APIError(400, f"request took longer than this server's limit of {seconds:g} s", code="timeout")


async def _next_event(job: Job, request, deadline: float, timeout_s: float) -> Any | None:
    """The job's next event; None if the client disconnected. Raises the timeout APIError past the deadline."""
    loop = asyncio.get_running_loop()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _timeout_error(timeout_s)
        try:
            return await asyncio.wait_for(job.events.get(), timeout=min(0.5, remaining))
        except TimeoutError:
            if await request.is_disconnected():
                return None


async def _wait_for_done(job: Job, request, deadline: float, timeout_s: float) -> Done | None:
    while True:
        event = await _next_event(job, request, deadline, timeout_s)
        if event is None or isinstance(event, Done):
            return event
        if isinstance(event, Failed):
            raise APIError(500, event.message, kind="server_error")


async def _stream_events(
    service: CompletionsService, request_id: str, prepared: _Prepared, job: Job, request, deadline: float
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per choice update, a usage chunk if asked, then [DONE]."""
    offsets: dict[int, bytes] = {}
    try:
        if prepared.echo:
            for index in range(len(job.rows)):
                prompt_text = service.tokenizer.decode(prepared.prompts[index // prepared.n])
                choice = {"text": prompt_text, "index": index, "logprobs": None, "finish_reason": None}
                yield _sse(service._envelope(request_id, [choice]))
        while True:
            try:
                event = await _next_event(job, request, deadline, service.config.request_timeout_s)
            except APIError as err:
                yield _sse(err.body())
                break
            if event is None:
                return  # the client left; `finally` cancels the work
            if isinstance(event, Update):
                yield _sse(service.chunk(request_id, prepared, event, offsets))
            elif isinstance(event, Failed):
                yield _sse(APIError(500, event.message, kind="server_error").body())
                break
            elif isinstance(event, Done):
                _count_done(service, prepared, job, event, request.scope.get(ACCESS_KEY, {}))
                if prepared.include_usage:
                    body = service._envelope(request_id, [])
                    body["usage"] = service.usage(prepared, sum(len(c.token_ids) for c in event.completions))
                    yield _sse(body)
                break
        yield _sse("[DONE]")
    finally:
        job.cancel()


# -- running it -----------------------------------------------------------------------------


def _default_model_name(spec: str) -> str:
    path = Path(spec)
    return path.resolve().name if path.is_dir() else spec


def serve(config: ServerConfig) -> None:
    """Serve until interrupted; the model loads in the background while /health answers 503."""
    import uvicorn

    from gpt2kit.checkpoint import load

    if config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the server is reachable from other machines", config.host)
    failure: list[BaseException] = []

    def load_model() -> tuple[GPT, Tokenizer]:
        loaded = load(config.model, device=config.device, quantize=config.quantize)
        prepare_for_decoding(loaded.model, config.max_batch_size)
        return loaded.model, loaded.tokenizer

    def give_up(err: BaseException) -> None:
        failure.append(err)
        server.should_exit = True

    name = config.model_name or _default_model_name(config.model)
    app = build_app(load_model, config, name, on_load_error=give_up)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info", access_log=False))
    server.run()
    if failure:
        if isinstance(failure[0], GPT2KitError):
            raise failure[0]
        raise GPT2KitError(f"{config.model}: cannot load the model ({type(failure[0]).__name__}: {failure[0]})")
