"""Typed configuration of `gpt2kit webtext build`, loadable from TOML or YAML and overridable per key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_type_hints

from gpt2kit.errors import GPT2KitError

INPUT_KINDS = ("reddit", "urls", "warc", "html")


@dataclass
class RedditConfig:
    """Which Reddit submissions count: WebText took outbound links with at least 3 karma."""

    min_karma: int = 3
    # Submissions created on or after this UTC date are dropped (WebText's links end in December 2017).
    cutoff: str | None = "2018-01-01"
    subreddit_blocklist: list[str] = field(default_factory=list)

    def cutoff_timestamp(self) -> float | None:
        if self.cutoff is None:
            return None
        return datetime.fromisoformat(self.cutoff).replace(tzinfo=timezone.utc).timestamp()


@dataclass
class FetchConfig:
    """The polite asynchronous fetcher."""

    concurrency: int = 64  # hosts fetched at once per process
    per_domain_delay: float = 1.0  # seconds between two requests to one host
    timeout: float = 20.0  # seconds for a whole request
    retries: int = 2  # extra tries after a timeout, a connection error, 429 or 5xx
    backoff: float = 1.0  # first retry waits this long, then doubles
    max_bytes: int = 4_000_000  # larger pages are dropped
    max_redirects: int = 5
    user_agent: str = "gpt2kit-webtext/0.1 (research corpus builder; +https://github.com/gpt2kit/gpt2kit)"
    respect_robots: bool = True
    batch_size: int = 512  # URLs in flight per process before results are written


@dataclass
class FilterConfig:
    """Document filters after extraction."""

    min_words: int = 64
    english_threshold: float = 0.5  # minimum probability of English from the offline identifier
    drop_wikipedia: bool = True
    domain_blocklist: list[str] = field(default_factory=list)
    domain_blocklist_file: str | None = None  # one domain per line, '#' comments
    boilerplate: bool = True  # C4 line rules and Gopher document rules (datatrove)
    extract_timeout: float = 5.0  # seconds per page for trafilatura


@dataclass
class DedupConfig:
    """Exact duplicates (hash of normalised text) and near duplicates (MinHash LSH, datatrove)."""

    exact: bool = True
    near: bool = True
    ngram_size: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8

    @property
    def threshold(self) -> float:
        """The Jaccard similarity at which a pair is caught with probability about one half."""
        return (1.0 / self.num_buckets) ** (1.0 / self.hashes_per_bucket)


@dataclass
class WebTextConfig:
    input_kind: str = "urls"
    inputs: list[str] = field(default_factory=list)
    out: str = "webtext"
    work_dir: str | None = None  # work files and the fetch cache; default: OUT.work beside OUT
    workers: int = 1
    shard_bytes: int = 256_000_000  # output shards are cut at about this many compressed bytes
    reddit: RedditConfig = field(default_factory=RedditConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def validate(self) -> WebTextConfig:
        """Check every value; raise GPT2KitError naming the first bad one."""
        if self.input_kind not in INPUT_KINDS:
            raise GPT2KitError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {self.input_kind!r}")
        if not self.inputs:
            raise GPT2KitError("no inputs given")
        positive = {
            "workers": self.workers,
            "shard_bytes": self.shard_bytes,
            "fetch.concurrency": self.fetch.concurrency,
            "fetch.timeout": self.fetch.timeout,
            "fetch.max_bytes": self.fetch.max_bytes,
            "fetch.batch_size": self.fetch.batch_size,
            "filters.extract_timeout": self.filters.extract_timeout,
            "dedup.ngram_size": self.dedup.ngram_size,
            "dedup.num_buckets": self.dedup.num_buckets,
            "dedup.hashes_per_bucket": self.dedup.hashes_per_bucket,
        }
        non_negative = {
            "fetch.per_domain_delay": self.fetch.per_domain_delay,
            "fetch.retries": self.fetch.retries,
            "fetch.backoff": self.fetch.backoff,
            "fetch.max_redirects": self.fetch.max_redirects,
            "filters.min_words": self.filters.min_words,
        }
        for name, value in positive.items():
            if value <= 0:
                raise GPT2KitError(f"{name} must be > 0, got {value}")
        for name, value in non_negative.items():
            if value < 0:
                raise GPT2KitError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= self.filters.english_threshold <= 1.0:
            raise GPT2KitError(f"filters.english_threshold must be in [0, 1], got {self.filters.english_threshold}")
        if self.reddit.cutoff is not None:
            try:
                self.reddit.cutoff_timestamp()
            except ValueError:
                raise GPT2KitError(
                    f"reddit.cutoff must be a date like 2018-01-01, got {self.reddit.cutoff!r}"
                ) from None
        if not self.fetch.user_agent.strip():
            raise GPT2KitError("fetch.user_agent must not be empty")
        blocklist = self.filters.domain_blocklist_file
        if blocklist is not None and not Path(blocklist).is_file():
            raise GPT2KitError(f"filters.domain_blocklist_file: {blocklist}: no such file")
        return self

    def blocked_domains(self) -> list[str]:
        """The configured blocklist plus the blocklist file's domains, lower-cased."""
        domains = [d.strip().lower() for d in self.filters.domain_blocklist if d.strip()]
        if self.filters.domain_blocklist_file:
            for line in Path(self.filters.domain_blocklist_file).read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip().lower()
                if line:
                    domains.append(line)
        return domains


def apply_settings(config: Any, settings: dict, where: str = "") -> None:
    """Set dataclass fields from a (nested) dict, checking names and types."""
    hints = get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in settings.items():
        name = key.replace("-", "_")
        label = f"{where}{name}"
        if name not in names:
            raise GPT2KitError(f"unknown setting {label!r}")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise GPT2KitError(f"setting {label!r} must be a table")
            apply_settings(current, value, f"{label}.")
            continue
        setattr(config, name, _coerce(value, hints[name], label))


def _coerce(value: Any, hint: Any, label: str) -> Any:
    text = str(hint)
    if "None" in text and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    if isinstance(value, str) and hint is not str and "str" not in text.split("|")[0]:
        value = _parse_scalar(value, label)
    if value is None and "None" in text:
        return None
    if "list" in text:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise GPT2KitError(f"setting {label!r} must be a list of strings")
        return value
    if hint is bool or text == "bool":
        if not isinstance(value, bool):
            raise GPT2KitError(f"setting {label!r} must be true or false, got {value!r}")
        return value
    if hint is int or text == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise GPT2KitError(f"setting {label!r} must be an integer, got {value!r}")
        return value
    if hint is float or text == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GPT2KitError(f"setting {label!r} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise GPT2KitError(f"setting {label!r} must be a string, got {value!r}")
    return value


def _parse_scalar(text: str, label: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(pairs: list[str]) -> dict:
    """`section.key=value` strings as a nested dict."""
    settings: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise GPT2KitError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        node = settings
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return settings
