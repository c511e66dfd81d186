"""The serving engine: one thread decodes every request's sequences as one batch.

Continuous batching: requests join between decoding steps and leave when done, so concurrent requests
share each forward pass and the event loop is never blocked by the model. Requests talk to the engine
through per-request asyncio queues (`Job.post`); a cancelled job's sequences are dropped at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpt2kit.generate import Decoder, prompt_logprobs
from gpt2kit.model import GPT
from gpt2kit.sequences import Completion, SequenceState
from gpt2kit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
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
    submitted_at: float = 0.0  # time.monotonic() of each, for the latency metrics
    first_token_at: float | None = None
    finished_at: float | None = None

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
class Update:
    """New output of one choice since its last update (streaming)."""

    index: int
    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    finish_reason: str | None


@dataclass
class Done:
    completions: list[Completion]


@dataclass
class Failed:
    message: str


class Engine:
    """Decodes every admitted request's sequences together on one thread."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_batch_size: int = 16,
        on_step: Callable[[int], None] | None = None,
        share_prefixes: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.on_step = on_step  # called with the batch size of every decoding step
        self._inbox: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self.share_prefixes = share_prefixes
        self._decoder = Decoder(model, tokenizer, share_prefixes)
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

    def submit(self, job: Job) -> None:
        job.submitted_at = time.monotonic()
        self._inbox.put(job)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._collect(block=not self._decoder.active and not self._waiting)
            try:
                self._admit()
                if self._decoder.active:
                    if self.on_step is not None:
                        self.on_step(self._decoder.active)
                    self._decoder.step()
            except Exception as err:  # a bug or out of memory: fail the batch, keep serving
                logger.exception("generation failed")
                for job in self._running + list(self._waiting):
                    job.cancel()
                    job.post(Failed(f"generation failed: {type(err).__name__}: {err}"))
                self._running, self._waiting = [], deque()
                self._decoder = Decoder(self.model, self.tokenizer, self.share_prefixes)
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
        now = time.monotonic()
        for job in self._running:
            if job.cancelled:
                continue
            if job.first_token_at is None and any(row.tokens or row.finished for row in job.rows):
                job.first_token_at = now
            if job.streaming:
                self._report_stream(job)
            if job.done:
                job.finished_at = now
                job.post(Done([row.completion() for row in job.rows]))
            else:
                still_running.append(job)
        self._running = still_running

    @staticmethod
    def _report_stream(job: Job) -> None:
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
            job.post(Update(index, text, new_tokens, row.token_logprobs[sent:], top, row.finish_reason))
            # -1 marks a choice whose final update went out.
            job.sent_tokens[index] = -1 if row.finished else len(row.tokens)
