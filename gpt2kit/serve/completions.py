"""The completions service: a validated request turned into engine jobs, and the engine's events turned into
OpenAI's responses, whole or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import generate
from gpt2kit.model import GPT
from gpt2kit.sequences import GenerationConfig, SequenceState, best_completions, encode_prompt, token_text
from gpt2kit.serve.config import ServerConfig
from gpt2kit.serve.engine import Done, Engine, Failed, Job, Update
from gpt2kit.serve.observe import ACCESS_KEY, ServerMetrics
from gpt2kit.serve.protocol import (
    MAX_STOP_STRINGS,
    APIError,
    CompletionRequest,
)
from gpt2kit.tokenizer import Tokenizer, token_to_str

logger = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
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
    def prepare(self, request: CompletionRequest) -> PreparedRequest:
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
        return PreparedRequest(
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

    def make_job(self, prepared: PreparedRequest, loop: asyncio.AbstractEventLoop) -> Job:
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

    def usage(self, prepared: PreparedRequest, completion_tokens: int) -> dict[str, int]:
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

    def response(self, request_id: str, prepared: PreparedRequest, job: Job, done: Done) -> dict[str, Any]:
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

    def chunk(self, request_id: str, prepared: PreparedRequest, update: Update, offsets: dict[int, bytes]) -> dict:
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


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def count_done(service: CompletionsService, prepared: PreparedRequest, job: Job, done: Done, note: dict) -> None:
    generated = sum(len(c.token_ids) for c in done.completions)
    note["completion_tokens"] = generated
    service.metrics.finished(job, sum(map(len, prepared.prompts)), generated)


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


async def wait_for_done(job: Job, request, deadline: float, timeout_s: float) -> Done | None:
    while True:
        event = await _next_event(job, request, deadline, timeout_s)
        if event is None or isinstance(event, Done):
            return event
        if isinstance(event, Failed):
            raise APIError(500, event.message, kind="server_error")


async def stream_events(
    service: CompletionsService, request_id: str, prepared: PreparedRequest, job: Job, request, deadline: float
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per choice update, a usage chunk if asked, then [DONE].

    With continuous usage, every chunk also carries the usage so far.
    """
    offsets: dict[int, bytes] = {}
    generated = 0

    def event(body: dict) -> str:
        if prepared.continuous_usage:
            body["usage"] = service.usage(prepared, generated)
        return sse(body)

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
                yield sse(err.body())
                break
            if update is None:
                return  # the client left; `finally` cancels the work
            if isinstance(update, Update):
                generated += len(update.token_ids)
                yield event(service.chunk(request_id, prepared, update, offsets))
            elif isinstance(update, Failed):
                yield sse(APIError(500, update.message, kind="server_error").body())
                break
            elif isinstance(update, Done):
                count_done(service, prepared, job, update, request.scope.get(ACCESS_KEY, {}))
                if prepared.include_usage:
                    body = service._envelope(request_id, [])
                    body["usage"] = service.usage(prepared, sum(len(c.token_ids) for c in update.completions))
                    yield sse(body)
                break
        yield sse("[DONE]")
    finally:
        job.cancel()


async def complete(service: CompletionsService, config: ServerConfig, body: CompletionRequest, request) -> Any:
    """POST /v1/completions: the request queued on the engine, answered whole or as a stream of events."""
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
            stream_events(service, request_id, prepared, job, request, deadline),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        done = await wait_for_done(job, request, deadline, config.request_timeout_s)
    finally:
        job.cancel()  # a no-op when done; stops the work when the client left or timed out
    if done is None:
        return JSONResponse(APIError(499, "client closed the request").body(), status_code=499)
    count_done(service, prepared, job, done, note)
    return service.response(request_id, prepared, job, done)
