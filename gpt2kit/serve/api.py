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
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

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
from gpt2kit.serve.listen import bind, host_names
from gpt2kit.serve.observe import ACCESS_KEY, LOG_FORMATS, UNMATCHED, AccessLog, ServerMetrics
from gpt2kit.serve.protocol import (
    ERRORS,
    MAX_STOP_STRINGS,
    APIError,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    completion_responses,
    validation_error,
)
from gpt2kit.tokenizer import Tokenizer, token_to_str

logger = logging.getLogger(__name__)

# What api_key guards (every route that reaches the model); /health, /metrics and the playground page stay open.
PROTECTED_PATHS = ("/v1/", "/completions", "/models", "/tokenize", "/detokenize")


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
    max_queued_requests: int = 256  # requests waiting for a place in the batch; more get a 503
    log_format: str = "text"  # the access log: text, or json (one JSON object a line)
    share_prefixes: bool = True  # encode a prompt prefix that joining requests share once, and keep recent ones

    def __post_init__(self) -> None:
        self.check("server config")

    def problems(self) -> list[str]:
        bad = [
            f"{name} must be >= 1, got {getattr(self, name)}"
            for name in (
                "max_tokens_cap",
                "max_n",
                "max_choices",
                "max_body_bytes",
                "max_batch_size",
                "max_queued_requests",
            )
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
        try:
            host_names(self.host)
        except GPT2KitError as err:
            bad.append(str(err))
        if self.log_format not in LOG_FORMATS:
            bad.append(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        return bad


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
    continuous_usage: bool  # usage so far on every chunk (vLLM's continuous_usage_stats)


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
        named = {**tokenizer.added_tokens, **tokenizer.special_tokens}
        self._token_names = {token_id: text for text, token_id in named.items()}

    def token_str(self, token_id: int) -> str:
        """A token as transformers' convert_ids_to_tokens writes it: GPT-2's byte-to-unicode form (`Ġworld`), or
        a special or added token's text."""
        return self._token_names.get(token_id) or token_to_str(self.tokenizer.token_bytes(token_id))

    def warm_up(self) -> None:
        """One short greedy decode before the first request, so that it does not pay for first-call setup."""
        config = GenerationConfig(max_new_tokens=2, temperature=0.0, ignore_eos=True)
        generate(self.model, self.tokenizer, [[self.tokenizer.eot_token]], config)

    # -- validation ---------------------------------------------------------------------
    def prepare(self, request: CompletionRequest) -> _Prepared:
        limits = self.config
        if request.stream_options is not None and not request.stream:
            raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")
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
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options.continuous_usage_stats)
        return _Prepared(
            prompts,
            configs,
            n,
            best_of,
            bool(request.echo),
            request.logprobs,
            bool(request.stream),
            include_usage,
            continuous,
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
        texts = [token_text(self.tokenizer, t) for t in token_ids]
        return {
            "tokens": texts,
            "token_logprobs": token_logprobs,
            "top_logprobs": _with_chosen(texts, token_logprobs, top_logprobs),
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
                ids, token_lps, top = completion.token_ids, completion.token_logprobs, completion.top_logprobs
                if prepared.echo:
                    prompt_lp, prompt_top = job.prompt_scores[index // prepared.n]
                    ids, token_lps = prompt_ids + ids, prompt_lp + token_lps
                    top = None if prompt_top is None or top is None else prompt_top + top
                logprobs = self._logprobs(ids, token_lps, top, 0)
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
            done_bytes = offsets.get(update.index, b"")
            logprobs = self._logprobs(update.token_ids, update.token_logprobs, update.top_logprobs, 0, done_bytes)
            offsets[update.index] = done_bytes + b"".join(self.tokenizer.token_bytes(t) for t in update.token_ids)
        choice = {
            "text": update.text,
            "index": update.index,
            "logprobs": logprobs,
            "finish_reason": update.finish_reason,
        }
        return self._envelope(request_id, [choice])


def _with_chosen(texts: list[str], logprobs: list, tops: list | None) -> list[dict[str, float] | None]:
    """OpenAI's top_logprobs, up to logprobs + 1 entries a token: the top alternatives and the chosen token (so
    logprobs 0 gives the chosen token alone); None for a token without a logprob (an echoed prompt's first)."""
    entries: list[dict[str, float] | None] = []
    for i, (text, logprob) in enumerate(zip(texts, logprobs, strict=True)):
        if logprob is None:
            entries.append(None)
            continue
        entry = dict(tops[i]) if tops is not None and tops[i] is not None else {}
        entry.setdefault(text, logprob)
        entries.append(entry)
    return entries


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
                message = "missing or incorrect API key (send 'Authorization: Bearer KEY')"
                error = APIError(401, message, code="invalid_api_key", kind="authentication_error")
                await _send_error(error, scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _send_error(error: APIError, scope, receive, send) -> None:
    await _error_response(error)(scope, receive, send)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


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
    route = lambda scope: _route_template(app, scope)  # noqa: E731
    app.add_middleware(AccessLog, log_format=config.log_format, metrics=metrics, route=route)  # sees every answer

    _add_error_handlers(app)
    _add_info_routes(app, state, model_name)

    async def completions(body: CompletionRequest, request: Request):
        service = ready()
        if service.engine.queued_requests >= config.max_queued_requests:
            raise APIError(
                503,
                f"{service.engine.queued_requests} requests are waiting, this server's limit; retry shortly",
                code="server_overloaded",
                kind="server_error",
                headers={"Retry-After": "1"},
            )
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

    async def tokenize(body: TokenizeRequest):
        service = ready()
        tokens = await asyncio.to_thread(service.tokenizer.encode, body.prompt)
        names = [service.token_str(t) for t in tokens] if body.return_token_strs else None
        return {"count": len(tokens), "max_model_len": service.context, "tokens": tokens, "token_strs": names}

    async def detokenize(body: DetokenizeRequest):
        service = ready()
        problem = service.tokenizer.unknown_id(body.tokens)
        if problem:
            raise APIError(400, problem, "tokens")
        return {"prompt": service.tokenizer.decode(body.tokens)}

    _add_route(app, "POST", ("/v1/completions", "/completions"), completions, responses=completion_responses())
    _add_route(app, "POST", ("/tokenize",), tokenize, responses={200: {"model": TokenizeResponse}, **ERRORS})
    _add_route(app, "POST", ("/detokenize",), detokenize, responses={200: {"model": DetokenizeResponse}, **ERRORS})
    return app


def _add_route(app: FastAPI, method: str, paths: tuple[str, ...], handler: Callable, **options) -> None:
    """`handler` at each of `paths`: the first is the one the OpenAPI schema lists, the others its aliases
    (llama.cpp's clients call `/completions` and `/models` without the `/v1`)."""
    for i, path in enumerate(paths):
        app.add_api_route(path, handler, methods=[method], include_in_schema=i == 0, **options)


def _route_template(app: FastAPI, scope) -> str:
    """The route a request is for (`/v1/models/{name:path}`), whether or not it got that far; every path that
    is no route shares one label, so the metrics' series stay as few as the routes."""
    for route in app.routes:
        if route.matches(scope)[0] != Match.NONE:
            return route.path
    return UNMATCHED


def _count_done(service: CompletionsService, prepared: _Prepared, job: Job, done: Done, note: dict) -> None:
    generated = sum(len(c.token_ids) for c in done.completions)
    note["completion_tokens"] = generated
    service.metrics.finished(job, sum(map(len, prepared.prompts)), generated)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers in OpenAI's shape, an invalid request with a 400 naming the field; an unexpected
    error is logged and answered 500 without details."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        return _error_response(validation_error(list(error.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        # The headers carry what the status needs: a 405's Allow.
        return _error_response(APIError(error.status_code, str(error.detail), kind=kind, headers=error.headers))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.exception("unexpected error")
        return _error_response(APIError(500, "internal server error", kind="server_error"))


def _ready(state: dict) -> CompletionsService:
    """The service, or a 503 while the model loads."""
    service = state["service"]
    if service is None:
        raise APIError(503, "the model is still loading; retry shortly", code="model_loading", kind="server_error")
    return service


def _add_info_routes(app: FastAPI, state: dict, model_name: str) -> None:
    """/health, /metrics, /v1/models (and /models) and the playground page."""
    ready = functools.partial(_ready, state)

    @app.get("/health", responses={200: {"model": Health}, **ERRORS, 503: {"model": Health}})
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

    @app.get("/metrics", response_class=PlainTextResponse, responses=ERRORS)
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service = ready()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": ready().created, "owned_by": "gpt2kit"}

    async def list_models():
        return {"object": "list", "data": [model_card()]}

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

    _add_route(app, "GET", ("/v1/models", "/models"), list_models, responses={200: {"model": ModelList}, **ERRORS})
    models = ("/v1/models/{name:path}", "/models/{name:path}")
    _add_route(app, "GET", models, get_model, responses={200: {"model": ModelCard}, **ERRORS})

    @app.get("/", response_class=HTMLResponse, responses=ERRORS)
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
    """Server-sent events: one chunk per choice update, a usage chunk if asked, then [DONE].

    With continuous usage, every chunk also carries the usage so far.
    """
    offsets: dict[int, bytes] = {}
    generated = 0

    def event(body: dict) -> str:
        if prepared.continuous_usage:
            body["usage"] = service.usage(prepared, generated)
        return _sse(body)

    try:
        if prepared.echo:
            for index in range(len(job.rows)):
                prompt_text = service.tokenizer.decode(prepared.prompts[index // prepared.n])
                choice = {"text": prompt_text, "index": index, "logprobs": None, "finish_reason": None}
                yield event(service._envelope(request_id, [choice]))
        while True:
            try:
                update = await _next_event(job, request, deadline, service.config.request_timeout_s)
            except APIError as err:
                yield _sse(err.body())
                break
            if update is None:
                return  # the client left; `finally` cancels the work
            if isinstance(update, Update):
                generated += len(update.token_ids)
                yield event(service.chunk(request_id, prepared, update, offsets))
            elif isinstance(update, Failed):
                yield _sse(APIError(500, update.message, kind="server_error").body())
                break
            elif isinstance(update, Done):
                _count_done(service, prepared, job, update, request.scope.get(ACCESS_KEY, {}))
                if prepared.include_usage:
                    body = service._envelope(request_id, [])
                    body["usage"] = service.usage(prepared, sum(len(c.token_ids) for c in update.completions))
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
    """Serve until interrupted; the model loads in the background while /health answers 503.

    The host is bound first, so an unusable one stops `serve` in one line before anything loads.
    """
    import uvicorn

    from gpt2kit.checkpoint import load

    sockets = bind(config.host, config.port)
    for sock in sockets[1:]:  # uvicorn names the first
        logger.info("also listening on %s", sock.getsockname()[:2])
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
    first = host_names(config.host)[0]
    server = uvicorn.Server(uvicorn.Config(app, host=first, port=config.port, log_level="info", access_log=False))
    server.run(sockets=sockets)
    if failure:
        if isinstance(failure[0], GPT2KitError):
            raise failure[0]
        raise GPT2KitError(f"{config.model}: cannot load the model ({type(failure[0]).__name__}: {failure[0]})")
