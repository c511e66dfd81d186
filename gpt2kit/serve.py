"""An OpenAI-compatible completions server: FastAPI + uvicorn, with a playground page at `/`.

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
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from gpt2kit.config import Checked
from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import (
    Completion,
    Decoder,
    GenerationConfig,
    SequenceState,
    apply_decode_layout,
    encode_prompt,
    prompt_logprobs,
    token_text,
)
from gpt2kit.model import GPT
from gpt2kit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_LOGPROBS = 5


@dataclass
class ServerConfig(Checked):
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None  # the id clients see; default: the model directory's name
    api_key: str | None = None
    device: str = "cpu"
    max_prompt_tokens: int | None = None  # None: the model's context
    max_tokens_cap: int = 1024
    max_n: int = 8
    max_choices: int = 32  # prompts x n in one request
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 300.0
    max_batch_size: int = 16

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
        if self.api_key == "":
            bad.append("api_key must not be empty (leave it out to turn auth off)")
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


# -- the engine thread ----------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    """One request's sequences and the queue its handler reads events from."""

    rows: list[SequenceState]
    loop: asyncio.AbstractEventLoop
    streaming: bool
    score_prompts: list[list[int]] = field(default_factory=list)  # echo + logprobs: prompts to score
    top: int = 0
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    prompt_scores: list[tuple] = field(default_factory=list)
    sent_tokens: list[int] = field(default_factory=list)

    def post(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled = True
        for row in self.rows:
            row.cancelled = True

    @property
    def done(self) -> bool:
        return all(row.finished or row.cancelled for row in self.rows)


@dataclass
class _Update:
    """New output of one choice since its last update (streaming)."""

    index: int
    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    finish_reason: str | None


@dataclass
class _Done:
    completions: list[Completion]


@dataclass
class _Failed:
    message: str


class Engine:
    """Decodes every admitted request's sequences together on one thread."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._waiting: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._decoder = Decoder(model, tokenizer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpt2kit-engine", daemon=True)

    @property
    def active_sequences(self) -> int:
        return self._decoder.active

    @property
    def queued_requests(self) -> int:
        return self._inbox.qsize() + len(self._waiting)

    def start(self) -> None:
        self.model.eval()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def submit(self, job: _Job) -> None:
        self._inbox.put(job)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._collect(block=not self._decoder.active and not self._waiting)
            try:
                self._admit()
                if self._decoder.active:
                    self._decoder.step()
            except Exception as err:  # a bug or out of memory: fail the batch, keep serving
                logger.exception("generation failed")
                for job in self._running + list(self._waiting):
                    job.cancel()
                    job.post(_Failed(f"generation failed: {type(err).__name__}: {err}"))
                self._running, self._waiting = [], deque()
                self._decoder = Decoder(self.model, self.tokenizer)
                continue
            self._report()

    def _collect(self, block: bool) -> None:
        try:
            self._waiting.append(self._inbox.get(timeout=0.1) if block else self._inbox.get_nowait())
            while True:
                self._waiting.append(self._inbox.get_nowait())
        except queue.Empty:
            pass

    def _admit(self) -> None:
        """Move waiting jobs into the batch while they fit (a job too big for an empty batch runs alone)."""
        joining: list[SequenceState] = []
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            free = self.max_batch_size - self._decoder.active - len(joining)
            if len(job.rows) > free and (self._decoder.active or joining):
                break
            self._waiting.popleft()
            for ids in job.score_prompts:
                job.prompt_scores.append(prompt_logprobs(self.model, self.tokenizer, ids, job.top))
            joining += job.rows
            self._running.append(job)
        if joining:
            self._decoder.add(joining)

    def _report(self) -> None:
        """Tell each running job what is new; retire the jobs that are done."""
        still_running = []
        for job in self._running:
            if job.cancelled:
                continue
            if job.streaming:
                self._report_stream(job)
            if job.done:
                job.post(_Done([row.completion() for row in job.rows]))
            else:
                still_running.append(job)
        self._running = still_running

    @staticmethod
    def _report_stream(job: _Job) -> None:
        if not job.sent_tokens:
            job.sent_tokens = [0] * len(job.rows)
        for index, row in enumerate(job.rows):
            if row.cancelled or (job.sent_tokens[index] < 0):
                continue
            sent = job.sent_tokens[index]
            text = row.take_delta()
            new_tokens = row.tokens[sent:]
            if not text and not new_tokens and not row.finished:
                continue
            top = row.top_logprobs[sent:] if row.top_logprobs is not None else None
            job.post(_Update(index, text, new_tokens, row.token_logprobs[sent:], top, row.finish_reason))
            # -1 marks a choice whose final update went out.
            job.sent_tokens[index] = -1 if row.finished else len(row.tokens)


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
    seed: int | None = None
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    user: str | None = None


# -- the app --------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A validated request: its prompts as token ids and one GenerationConfig per choice."""

    prompts: list[list[int]]
    configs: list[GenerationConfig]
    n: int
    echo: bool
    logprobs: int | None
    stream: bool
    include_usage: bool


class CompletionsService:
    """Validation, limits and response shaping around an Engine."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, config: ServerConfig, model_name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_name = model_name
        self.context = model.config.n_positions
        self.max_prompt_tokens = config.max_prompt_tokens or self.context
        self.engine = Engine(model, tokenizer, config.max_batch_size)
        self.created = int(time.time())

    # -- validation ---------------------------------------------------------------------
    def prepare(self, request: CompletionRequest) -> _Prepared:
        limits = self.config
        for name, default in (("presence_penalty", 0), ("frequency_penalty", 0), ("suffix", None)):
            if getattr(request, name) not in (None, default):
                raise APIError(400, f"{name} is not supported by this server", param=name, code="unsupported")
        if request.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias", code="unsupported")
        n = request.n or 1
        if request.best_of not in (None, n):
            raise APIError(400, "best_of other than n is not supported", param="best_of", code="unsupported")
        max_tokens = 16 if request.max_tokens is None else request.max_tokens
        if max_tokens > limits.max_tokens_cap:
            raise APIError(
                400, f"max_tokens is {max_tokens}, above this server's cap of {limits.max_tokens_cap}", "max_tokens"
            )
        if n > limits.max_n:
            raise APIError(400, f"n is {n}, above this server's cap of {limits.max_n}", "n")
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
            raise APIError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", "stop")
        prompts = self._prompts(request.prompt)
        if len(prompts) * n > limits.max_choices:
            raise APIError(
                400, f"{len(prompts)} prompts x n={n} is above this server's cap of {limits.max_choices} choices", "n"
            )
        if request.echo and request.stream and request.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported when streaming", "echo", "unsupported")
        temperature = 1.0 if request.temperature is None else request.temperature
        configs = []
        for choice in range(len(prompts) * n):
            try:
                configs.append(
                    GenerationConfig(
                        max_new_tokens=max_tokens,
                        temperature=temperature,
                        top_k=request.top_k or 0,
                        top_p=1.0 if request.top_p is None else request.top_p,
                        stop=tuple(stop),
                        seed=None if request.seed is None else request.seed + choice,
                        logprobs=request.logprobs or 0,
                    )
                )
            except GPT2KitError as err:
                raise APIError(400, str(err)) from None
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return _Prepared(prompts, configs, n, bool(request.echo), request.logprobs, bool(request.stream), include_usage)

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

    def make_job(self, prepared: _Prepared, loop: asyncio.AbstractEventLoop) -> _Job:
        rows = []
        for p, ids in enumerate(prepared.prompts):
            for j in range(prepared.n):
                config = prepared.configs[p * prepared.n + j]
                rows.append(SequenceState(list(ids), config, self.tokenizer, seed=config.seed))
        score = prepared.prompts if prepared.echo and prepared.logprobs is not None else []
        return _Job(rows, loop, prepared.stream, score_prompts=score, top=prepared.logprobs or 0)

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

    def response(self, request_id: str, prepared: _Prepared, job: _Job, done: _Done) -> dict[str, Any]:
        choices = []
        for index, completion in enumerate(done.completions):
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
        body["usage"] = self.usage(prepared, sum(len(c.token_ids) for c in done.completions))
        return body

    def chunk(self, request_id: str, prepared: _Prepared, update: _Update, offsets: dict[int, bytes]) -> dict:
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


def create_app(model: GPT, tokenizer: Tokenizer, config: ServerConfig | None = None, model_name: str = "gpt2kit"):
    """The FastAPI app: /v1/completions, /v1/models, /health and the playground at /."""
    config = config or ServerConfig()
    service = CompletionsService(model, tokenizer, config, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.engine.start()
        yield
        service.engine.stop()

    app = FastAPI(title="gpt2kit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)

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

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
            raise APIError(
                401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"
            )

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": model_name,
            "active_sequences": service.engine.active_sequences,
            "queued_requests": service.engine.queued_requests,
        }

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": service.created, "owned_by": "gpt2kit"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
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

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        prepared = await asyncio.to_thread(service.prepare, body)  # tokenizing a long prompt takes a while
        loop = asyncio.get_running_loop()
        job = service.make_job(prepared, loop)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        deadline = loop.time() + config.request_timeout_s
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
        return service.response(request_id, prepared, job, done)

    return app


def _timeout_error(seconds: float) -> APIError:
    return APIError(400, f"request took longer than this server's limit of {seconds:g} s", code="timeout")


async def _next_event(job: _Job, request, deadline: float, timeout_s: float) -> Any | None:
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


async def _wait_for_done(job: _Job, request, deadline: float, timeout_s: float) -> _Done | None:
    while True:
        event = await _next_event(job, request, deadline, timeout_s)
        if event is None or isinstance(event, _Done):
            return event
        if isinstance(event, _Failed):
            raise APIError(500, event.message, kind="server_error")


async def _stream_events(
    service: CompletionsService, request_id: str, prepared: _Prepared, job: _Job, request, deadline: float
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
            if isinstance(event, _Update):
                yield _sse(service.chunk(request_id, prepared, event, offsets))
            elif isinstance(event, _Failed):
                yield _sse(APIError(500, event.message, kind="server_error").body())
                break
            elif isinstance(event, _Done):
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
    """Load the model and serve until interrupted."""
    import uvicorn

    from gpt2kit.checkpoint import load

    if config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the server is reachable from other machines", config.host)
    loaded = load(config.model, device=config.device)
    apply_decode_layout(loaded.model)
    name = config.model_name or _default_model_name(config.model)
    app = create_app(loaded.model, loaded.tokenizer, config, model_name=name)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")


class BackgroundServer:
    """Serve an app on 127.0.0.1 from a thread (tests, benchmarks): `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app, port: int = 0):
        self.app = app
        self.port = port
        self._server = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> str:
        import socket

        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
