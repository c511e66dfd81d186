"""What operators watch: Prometheus metrics (`/metrics`) and one access-log line per request.

The metrics live in a registry of their own per app, so two servers in one process (tests, benchmarks) do
not share counters. The access log is the `gpt2kit.access` logger: `text` lines, or `json` lines that log
shippers read as they are.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gpt2kit.serve.engine import Job

LOG_FORMATS = ("text", "json")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """The server's Prometheus metrics, named as vLLM's and TGI's dashboards expect them (gpt2kit_ prefix)."""

    def __init__(self, queue_length: Callable[[], int], active_sequences: Callable[[], int]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gpt2kit_requests", "HTTP requests answered, by route (`unmatched`: no route) and status", ["path", "status"],
            registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("gpt2kit_prompt_tokens", "prompt tokens of completed requests", registry=r)
        self.generated_tokens = Counter("gpt2kit_generation_tokens", "tokens generated", registry=r)
        self.first_token = Histogram(
            "gpt2kit_time_to_first_token_seconds", "from admission to the first generated token", buckets=LATENCY_BUCKETS, registry=r
        )  # fmt: skip
        self.per_token = Histogram(
            "gpt2kit_time_per_output_token_seconds", "after the first token, seconds per generated token",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "gpt2kit_request_duration_seconds", "completion requests, end to end", buckets=LATENCY_BUCKETS, registry=r
        )  # fmt: skip
        self.batch_size = Histogram("gpt2kit_batch_size", "sequences in each decoding step", buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        Gauge("gpt2kit_queue_length", "requests waiting to join the batch", registry=r).set_function(queue_length)
        Gauge("gpt2kit_active_sequences", "sequences being decoded", registry=r).set_function(active_sequences)

    def finished(self, job: Job, prompt_tokens: int, generated: int) -> None:
        """A completion request's tokens and latencies, once it is done."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(generated)
        if job.first_token_at is not None:
            self.first_token.observe(job.first_token_at - job.submitted_at)
            longest = max((len(row.tokens) for row in job.rows), default=0)
            if job.finished_at is not None and longest > 1:
                self.per_token.observe((job.finished_at - job.first_token_at) / (longest - 1))
        if job.finished_at is not None:
            self.request_seconds.observe(job.finished_at - job.submitted_at)


ACCESS_KEY = "gpt2kit.access"  # the scope entry where a handler notes a request's token counts
UNMATCHED = "unmatched"  # the metrics' route label of every path that is no route


class AccessLog:
    """ASGI middleware: one line per HTTP request (method, path, status, tokens, milliseconds), and the
    request counter of the metrics, labelled by `route(scope)`: a route template, never the raw path."""

    def __init__(
        self,
        app,
        log_format: str = "text",
        metrics: Callable[[], ServerMetrics | None] = lambda: None,
        route: Callable[[dict], str] = lambda scope: UNMATCHED,
    ):
        self.app = app
        self.log_format = log_format
        self.metrics = metrics
        self.route = route
        self.logger = access_logger(log_format)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        note = scope[ACCESS_KEY] = {"prompt_tokens": 0, "completion_tokens": 0}
        status = 500

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._write(scope, status, note, (time.perf_counter() - start) * 1000)

    def _write(self, scope, status: int, note: dict, ms: float) -> None:
        metrics = self.metrics()
        if metrics is not None:
            metrics.requests.labels(self.route(scope), str(status)).inc()
        fields = {"method": scope["method"], "path": scope["path"], "status": status, **note, "ms": round(ms, 1)}
        if self.log_format == "json":
            self.logger.info(json.dumps(fields))
        else:
            # A path is percent-decoded: escaped, a %0A in it cannot start a forged log line.
            path = scope["path"].encode("unicode_escape").decode("ascii")
            self.logger.info(
                "%s %s %d prompt_tokens=%d completion_tokens=%d %.1f ms",
                fields["method"], path, status, note["prompt_tokens"], note["completion_tokens"], ms,
            )  # fmt: skip


def access_logger(log_format: str) -> logging.Logger:
    """`gpt2kit.access`: JSON lines go out bare (no level or logger prefix), so each line parses as JSON."""
    logger = logging.getLogger("gpt2kit.access")
    logger.setLevel(logging.INFO)
    bare = [h for h in logger.handlers if getattr(h, "gpt2kit_json", False)]
    if log_format == "json" and not bare:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.gpt2kit_json = True
        logger.addHandler(handler)
    if log_format != "json":
        for handler in bare:
            logger.removeHandler(handler)
    logger.propagate = log_format != "json"
    return logger
