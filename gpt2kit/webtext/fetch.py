"""The fetch stage: a polite asynchronous fetcher (aiohttp) as a datatrove step, resumable through a page cache.

Politeness: one request at a time per host with at least `per_domain_delay` seconds between them, robots.txt
honoured (RFC 9309: a 4xx robots.txt allows everything, an unreachable one disallows everything), an
identifying user agent, timeouts, retries with exponential backoff on timeouts, connection errors, 429 and 5xx,
a size cap, and HTML content types only. Redirects are followed by hand so each hop gets the same checks.

Every outcome is appended to this rank's cache (an index file of outcomes and a pages file of HTML). A re-run
replays settled outcomes (pages and permanent failures such as 404 or a robots.txt disallow) and fetches only
what is new or failed transiently. Failures are counted by cause and never stop the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from gpt2kit.webtext.config import FetchConfig
from gpt2kit.webtext.readers import decode_html, is_html_type, iso_now
from gpt2kit.webtext.urls import normalise_url, url_domain

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Outcomes worth another try on a later run; everything else is settled and replayed from the cache.
TRANSIENT_CAUSES = frozenset(
    {"timeout", "connection_error", "client_error", "robots_unreachable", "bad_payload"}
    | {f"http_{status}" for status in RETRY_STATUSES}
)


@dataclass
class Outcome:
    cause: str | None  # None: fetched
    html: str | None = None
    final_url: str | None = None
    fetched_at: str | None = None


@dataclass
class _Response:
    status: int | None
    cause: str | None = None
    location: str | None = None
    body: bytes | None = None
    charset: str | None = None


class FetchCache:
    """Append-only record of fetch outcomes: `<tag>.index.jsonl` (one outcome per URL) and `<tag>.pages.jsonl`.

    The index line is written after its page, so an index entry never points at a partial page; a torn last
    line (from a crash) is ignored on load. Loading reads every index in the folder and keeps the URLs `owns`
    accepts, so the cache survives a change in the number of workers.
    """

    def __init__(self, folder: str | os.PathLike, tag: str, owns: Callable[[str], bool]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict] = {}
        for index in sorted(self.folder.glob("*.index.jsonl")):
            with open(index, "rb") as handle:
                for raw in handle:
                    try:
                        entry = json.loads(raw)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(entry, dict) and owns(entry.get("domain", "")):
                        self.entries[entry["key"]] = entry
        self.pages_path = self.folder / f"{tag}.pages.jsonl"
        self._pages = open(self.pages_path, "ab")
        self._index = open(self.folder / f"{tag}.index.jsonl", "ab")

    def settled(self, key: str) -> Outcome | None:
        """The recorded outcome of a URL, unless there is none or it was transient."""
        entry = self.entries.get(key)
        if entry is None or entry["cause"] in TRANSIENT_CAUSES:
            return None
        html = None
        if entry["cause"] is None:
            with open(self.folder / entry["pages"], "rb") as handle:
                handle.seek(entry["offset"])
                html = json.loads(handle.read(entry["length"]))["html"]
        return Outcome(entry["cause"], html, entry.get("final_url"), entry.get("fetched_at"))

    def record(self, key: str, domain: str, outcome: Outcome) -> None:
        entry = {"key": key, "domain": domain, "cause": outcome.cause, "fetched_at": outcome.fetched_at}
        if outcome.cause is None:
            line = json.dumps({"key": key, "html": outcome.html}).encode() + b"\n"
            entry |= {"pages": self.pages_path.name, "offset": self._pages.tell(), "length": len(line)}
            entry["final_url"] = outcome.final_url
            self._pages.write(line)
            self._pages.flush()
        self._index.write(json.dumps(entry).encode() + b"\n")
        self._index.flush()
        self.entries[key] = entry

    def close(self) -> None:
        self._pages.close()
        self._index.close()


class Fetcher(PipelineStep):
    """Fetch each URL document's page; documents that fail are dropped and counted by cause."""

    type = "🌐 - FETCH"
    name = "async fetch"

    def __init__(self, config: FetchConfig, cache_folder: str, blocked_domain: Callable[[str], str | None]):
        super().__init__()
        self.config = config
        self.cache_folder = str(cache_folder)
        self.blocked_domain = blocked_domain
        self._robots: dict[str, RobotFileParser | bool | str] = {}
        self._last_request: dict[str, float] = {}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from gpt2kit.webtext.steps import partition_of

        cache = FetchCache(
            self.cache_folder, f"{world_size:04d}-{rank:05d}", lambda d: partition_of(d, world_size) == rank
        )
        try:
            for batch in batched(data, self.config.batch_size):
                outcomes = {doc.metadata["url_key"]: cache.settled(doc.metadata["url_key"]) for doc in batch}
                todo = [doc for doc in batch if outcomes[doc.metadata["url_key"]] is None]
                self.stat_update("from_cache", value=len(batch) - len(todo))
                if todo:
                    with self.track_time(unit="batch"):
                        fresh = asyncio.run(self._fetch_all([doc.metadata["url"] for doc in todo]))
                    for doc, outcome in zip(todo, fresh, strict=True):
                        cache.record(doc.metadata["url_key"], doc.metadata["domain"], outcome)
                        outcomes[doc.metadata["url_key"]] = outcome
                for doc in batch:
                    outcome = outcomes[doc.metadata["url_key"]]
                    self.stat_update("total")
                    if outcome.cause is not None:
                        self.stat_update("dropped", f"dropped_{outcome.cause}")
                        continue
                    doc.text = outcome.html
                    doc.metadata["fetched_at"] = outcome.fetched_at
                    doc.metadata["final_url"] = outcome.final_url
                    self.stat_update("forwarded")
                    yield doc
        finally:
            cache.close()

    # -- async machinery -----------------------------------------------------------------------------------------

    async def _fetch_all(self, urls: list[str]) -> list[Outcome]:
        import aiohttp

        config = self.config
        by_host: dict[str, list[int]] = {}
        for i, url in enumerate(urls):
            by_host.setdefault(urlsplit(url).netloc, []).append(i)
        results: list[Outcome | None] = [None] * len(urls)
        gates = {host: asyncio.Lock() for host in by_host}
        limit = asyncio.Semaphore(config.concurrency)
        timeout = aiohttp.ClientTimeout(total=config.timeout)
        connector = aiohttp.TCPConnector(limit=config.concurrency, limit_per_host=1)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers={"User-Agent": config.user_agent}
        ) as session:
            fetcher = _Session(self, session, gates)

            async def fetch_host(indices: list[int]) -> None:
                async with limit:
                    for i in indices:
                        results[i] = await fetcher.fetch(urls[i])

            await asyncio.gather(*(fetch_host(indices) for indices in by_host.values()))
        return results  # type: ignore[return-value]


class _Session:
    """One batch's HTTP session: per-host gates, robots.txt, retries, redirects."""

    def __init__(self, owner: Fetcher, session, gates: dict[str, asyncio.Lock]):
        self.owner = owner
        self.config = owner.config
        self.session = session
        self.gates = gates

    @contextlib.asynccontextmanager
    async def gate(self, host: str):
        """One request at a time per host, `per_domain_delay` seconds apart (measured end to start)."""
        lock = self.gates.setdefault(host, asyncio.Lock())
        async with lock:
            last = self.owner._last_request.get(host)
            if last is not None:
                wait = last + self.config.per_domain_delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                yield
            finally:
                self.owner._last_request[host] = time.monotonic()

    async def fetch(self, url: str) -> Outcome:
        current = url
        for hop in range(self.config.max_redirects + 1):
            if hop and self.owner.blocked_domain(url_domain(current)):
                return Outcome("redirect_to_blocked_domain")
            if self.config.respect_robots:
                verdict = await self.robots_allows(current)
                if verdict is None:
                    return Outcome("robots_unreachable")
                if not verdict:
                    return Outcome("robots_disallowed")
            response = await self.request(current, html_only=True)
            if response.cause:
                return Outcome(response.cause)
            if response.status in REDIRECTS:
                target = normalise_url(urljoin(current, response.location or ""))
                if not response.location or target is None:
                    return Outcome("bad_redirect")
                current = target
                continue
            if response.status != 200:
                return Outcome(f"http_{response.status}")
            html = decode_html(response.body or b"", response.charset)
            if html is None:
                return Outcome("undecodable")
            return Outcome(None, html, current, iso_now())
        return Outcome("too_many_redirects")

    async def request(self, url: str, html_only: bool) -> _Response:
        """GET without following redirects, retrying transient failures with exponential backoff."""
        import aiohttp

        host = urlsplit(url).netloc
        response = _Response(None, cause="client_error")
        for attempt in range(self.config.retries + 1):
            if attempt:
                await asyncio.sleep(self.config.backoff * 2 ** (attempt - 1))
            async with self.gate(host):
                try:
                    response = await self._get(url, html_only)
                except TimeoutError:
                    response = _Response(None, cause="timeout")
                except aiohttp.ClientPayloadError:
                    response = _Response(None, cause="bad_payload")
                except aiohttp.InvalidURL:
                    return _Response(None, cause="bad_url")
                except aiohttp.ClientConnectionError:
                    response = _Response(None, cause="connection_error")
                except aiohttp.ClientError:
                    response = _Response(None, cause="client_error")
            if response.cause is None and response.status in RETRY_STATUSES:
                response.cause = f"http_{response.status}"
            if response.cause not in TRANSIENT_CAUSES:
                return response
        return response

    async def _get(self, url: str, html_only: bool) -> _Response:
        max_bytes = self.config.max_bytes
        async with self.session.get(url, allow_redirects=False) as resp:
            if resp.status in REDIRECTS:
                return _Response(resp.status, location=resp.headers.get("Location"))
            if resp.status != 200:
                return _Response(resp.status)
            if html_only and not is_html_type(resp.headers.get("Content-Type")):
                return _Response(resp.status, cause="not_html")
            if resp.content_length is not None and resp.content_length > max_bytes:
                return _Response(resp.status, cause="too_large")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > max_bytes:
                    return _Response(resp.status, cause="too_large")
            return _Response(resp.status, body=bytes(body), charset=resp.charset)

    async def robots_allows(self, url: str) -> bool | None:
        """True or False from the host's robots.txt; None when it cannot be fetched (treated as a disallow)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        rules = self.owner._robots.get(origin)
        if rules is None:
            # An unreachable robots.txt is remembered for this run too; its URLs are retried on the next run.
            rules = await self._load_robots(origin) or "unreachable"
            self.owner._robots[origin] = rules
        if rules == "unreachable":
            return None
        if isinstance(rules, bool):
            return rules
        return rules.can_fetch(self.config.user_agent, url)

    async def _load_robots(self, origin: str) -> RobotFileParser | bool | None:
        location = origin + "/robots.txt"
        for _ in range(5):  # RFC 9309: follow at least five redirects
            response = await self.request(location, html_only=False)
            if response.status in REDIRECTS and response.location:
                location = urljoin(location, response.location)
                continue
            break
        if response.status == 200 and response.cause is None:
            parser = RobotFileParser()
            parser.parse((decode_html(response.body or b"") or "").splitlines())
            return parser
        if response.status is not None and 400 <= response.status < 500 and response.status != 429:
            return True  # no robots.txt: everything is allowed
        return None
