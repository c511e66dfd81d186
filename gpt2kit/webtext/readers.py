"""datatrove readers for the four inputs (Reddit dumps, URL lists, WARC files, saved HTML) and the work files.

Each reader takes its share of the input by rank: whole files when there are at least as many files as tasks,
else every world_size-th line of each file. Bad records are counted by cause and skipped, never fatal; the
pipeline checks up front that every input exists and parses, so a wrong file fails with one clear line.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from gpt2kit.io import open_binary
from gpt2kit.webtext.config import RedditConfig

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".html.gz", ".htm.gz")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([\w.:-]+)""", re.IGNORECASE)
_CANONICAL = re.compile(
    r"""<link[^>]+rel\s*=\s*["']canonical["'][^>]*href\s*=\s*["']([^"']+)["']"""
    r"""|<meta[^>]+property\s*=\s*["']og:url["'][^>]*content\s*=\s*["']([^"']+)["']""",
    re.IGNORECASE,
)


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def decode_html(body: bytes, declared: str | None = None) -> str | None:
    """Decode a page: the declared charset, a <meta charset>, UTF-8, then a detector. None if all fail."""
    candidates = [declared] if declared else []
    match = _META_CHARSET.search(body[:4096])
    if match:
        candidates.append(match.group(1).decode("ascii", "ignore"))
    candidates.append("utf-8")
    for charset in candidates:
        try:
            return body.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    from charset_normalizer import from_bytes

    best = from_bytes(body).best()
    return str(best) if best is not None else None


def is_html_type(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() in HTML_TYPES


def _shares(paths: list[str], rank: int, world_size: int) -> Iterator[tuple[Path, bool]]:
    """(file, whether to stride its lines) for this rank."""
    if len(paths) >= world_size:
        for path in paths[rank::world_size]:
            yield Path(path), False
    else:
        for path in paths:
            yield Path(path), True


def _lines(path: Path, rank: int, world_size: int, stride: bool) -> Iterator[bytes]:
    with open_binary(path) as handle:
        for number, raw in enumerate(handle):
            if not stride or number % world_size == rank:
                yield raw


class _FilesReader(PipelineStep):
    """A reader of a list of input files."""

    type = "📖 - READER"

    def __init__(self, paths: list[str]):
        super().__init__()
        self.paths = [str(p) for p in paths]

    def _judged(self, reason: str | None, document: Document | None) -> Document | None:
        """Count a judged record: dropped for its reason, or forwarded."""
        if reason:
            self.stat_update("dropped", f"dropped_{reason}")
            return None
        self.stat_update("forwarded")
        return document


class RedditReader(_FilesReader):
    """Submissions from Reddit dumps (JSON lines: url, score, created_utc, subreddit), filtered as WebText was."""

    name = "reddit submissions"

    def __init__(self, paths: list[str], reddit: RedditConfig):
        super().__init__(paths)
        self.min_karma = reddit.min_karma
        self.cutoff = reddit.cutoff_timestamp()
        self.blocked = {name.lower().removeprefix("r/") for name in reddit.subreddit_blocklist}

    def judge(self, record: object) -> tuple[str | None, Document | None]:
        """(reason to drop, or None with the document)."""
        if not isinstance(record, dict):
            return "bad_record", None
        if record.get("is_self"):
            return "self_post", None
        url = record.get("url")
        if not isinstance(url, str) or not url.strip():
            return "no_url", None
        try:
            karma = int(record.get("score"))
            created = float(record.get("created_utc"))
        except (TypeError, ValueError):
            return "bad_record", None
        if karma < self.min_karma:
            return "low_karma", None
        if self.cutoff is not None and created >= self.cutoff:
            return "after_cutoff", None
        subreddit = str(record.get("subreddit") or "")
        if subreddit.lower() in self.blocked:
            return "blocked_subreddit", None
        metadata = {"url": url.strip(), "karma": karma, "created_utc": created, "subreddit": subreddit}
        return None, Document(text="", id=url.strip(), metadata=metadata)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for path, stride in _shares(self.paths, rank, world_size):
            for raw in _lines(path, rank, world_size, stride):
                if not raw.strip():
                    continue
                self.stat_update("total")
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self.stat_update("dropped", "dropped_bad_json")
                    continue
                if (document := self._judged(*self.judge(record))) is not None:
                    yield document


class UrlListReader(_FilesReader):
    """One URL per line; blank lines and '#' comments are skipped."""

    name = "URL list"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for path, stride in _shares(self.paths, rank, world_size):
            for raw in _lines(path, rank, world_size, stride):
                line = raw.decode("utf-8", "replace").strip()
                if not line or line.startswith("#"):
                    continue
                self.stat_update("total", "forwarded")
                yield Document(text="", id=line, metadata={"url": line, "karma": None})


class WarcPagesReader(_FilesReader):
    """HTML responses from WARC files (warcio): status 200, an HTML content type, decodable."""

    name = "WARC pages"

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        for path in self.paths[rank::world_size]:
            with open(path, "rb") as handle:
                records = iter(ArchiveIterator(handle))
                while True:
                    try:
                        record = next(records)
                    except StopIteration:
                        break
                    except (ArchiveLoadFailed, zlib.error, EOFError, ValueError) as err:
                        # A cut or corrupt file: what came before is kept, the rest of the file cannot be read.
                        log.warning("%s: stopped reading a damaged WARC file (%s)", path, err)
                        self.stat_update("total")
                        self.stat_update("dropped", "dropped_truncated")
                        break
                    if record.rec_type != "response":
                        continue
                    self.stat_update("total")
                    if (document := self._judged(*self._page(record))) is not None:
                        yield document

    @staticmethod
    def _page(record) -> tuple[str | None, Document | None]:
        url = record.rec_headers.get_header("WARC-Target-URI") or ""
        http = record.http_headers
        if http is None:
            return "not_http", None
        status = http.get_statuscode()
        if status != "200":
            return f"http_{status}", None
        content_type = http.get_header("Content-Type")
        if not is_html_type(content_type):
            return "not_html", None
        declared = None
        if content_type and "charset=" in content_type.lower():
            declared = content_type.lower().split("charset=", 1)[1].split(";")[0].strip(" \"'")
        try:
            body = record.content_stream().read()
        except (zlib.error, EOFError, ValueError):
            return "truncated", None
        if record.raw_stream.limit:  # fewer bytes than the record's Content-Length: its gzip stream was cut
            return "truncated", None
        html = decode_html(body, declared)
        if html is None:
            return "undecodable", None
        fetched_at = record.rec_headers.get_header("WARC-Date") or iso_now()
        return None, Document(text=html, id=url, metadata={"url": url, "karma": None, "fetched_at": fetched_at})


class HtmlDirReader(PipelineStep):
    """Saved pages under a directory; the URL is the page's canonical link or og:url, else its file URI."""

    type = "📖 - READER"
    name = "saved HTML pages"

    def __init__(self, root: str):
        super().__init__()
        self.root = str(root)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = sorted(p for p in Path(self.root).rglob("*") if p.is_file() and p.name.lower().endswith(HTML_SUFFIXES))
        for path in files[rank::world_size]:
            self.stat_update("total")
            with open_binary(path) as handle:
                html = decode_html(handle.read())
            if html is None:
                self.stat_update("dropped", "dropped_undecodable")
                continue
            match = _CANONICAL.search(html[:20000])
            url = (match.group(1) or match.group(2)).strip() if match else path.resolve().as_uri()
            fetched_at = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
            self.stat_update("forwarded")
            yield Document(
                text=html,
                id=str(path),
                metadata={"url": url, "karma": None, "fetched_at": fetched_at, "file": str(path)},
            )


class WorkShardReader(PipelineStep):
    """Documents this rank wrote earlier as JSON lines (zstd), in the same order every time.

    `pattern` is formatted with the rank; a missing file is an empty share.
    """

    type = "📖 - READER"
    name = "work shard"

    def __init__(self, folder: str, pattern: str):
        super().__init__()
        self.folder = str(folder)
        self.pattern = pattern

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        root = Path(self.folder)
        for path in sorted(root.glob(self.pattern.format(rank=rank))):
            with open_binary(path) as handle:
                for raw in handle:
                    record = json.loads(raw)
                    self.stat_update("total")
                    yield Document(text=record.pop("text", ""), id=record.pop("id"), metadata=record)
