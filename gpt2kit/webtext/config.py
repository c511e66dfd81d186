"""Typed configuration of `gpt2kit webtext build`, read through the config engine (`gpt2kit.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gpt2kit.config import Checked

INPUT_KINDS = ("reddit", "urls", "warc", "html")


@dataclass
class RedditConfig:
    """Which Reddit submissions count: WebText took outbound links with at least 3 karma."""

    min_karma: int = 3  # the lowest score a submission needs
    # Submissions created on or after this UTC date are dropped (WebText's links end in December 2017).
    cutoff: str | None = "2018-01-01"
    subreddit_blocklist: list[str] = field(default_factory=list)  # subreddits to skip (comma-separated)

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

    min_words: int = 64  # the fewest words a document may have
    english_threshold: float = 0.5  # minimum probability of English from the offline identifier
    drop_wikipedia: bool = True
    domain_blocklist: list[str] = field(default_factory=list)  # domains to drop, with their subdomains
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
class WebTextConfig(Checked):
    input_kind: str = "urls"
    inputs: list[str] = field(default_factory=list)
    out: str = "webtext"
    work_dir: str | None = None  # work files and the fetch cache; default: OUT.work beside OUT
    workers: int = 1  # tasks run at once (local processes; on Ray or Slurm, the cap on concurrent tasks)
    tasks: int | None = None  # tasks per stage, each a slice of the URLs by domain hash; default: workers
    shard_bytes: int = 256_000_000  # output shards are cut at about this many compressed bytes
    reddit: RedditConfig = field(default_factory=RedditConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def problems(self) -> list[str]:
        bad = []
        if self.input_kind not in INPUT_KINDS:
            bad.append(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {self.input_kind!r}")
        if not self.inputs:
            bad.append("inputs: none given")
        positive = {
            "workers": self.workers,
            "tasks": self.task_count,
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
        bad += [f"{name} must be > 0, got {value}" for name, value in positive.items() if value <= 0]
        bad += [f"{name} must be >= 0, got {value}" for name, value in non_negative.items() if value < 0]
        if not 0.0 <= self.filters.english_threshold <= 1.0:
            bad.append(f"filters.english_threshold must be in [0, 1], got {self.filters.english_threshold}")
        if self.reddit.cutoff is not None:
            try:
                self.reddit.cutoff_timestamp()
            except ValueError:
                bad.append(f"reddit.cutoff must be a date like 2018-01-01, got {self.reddit.cutoff!r}")
        if not self.fetch.user_agent.strip():
            bad.append("fetch.user_agent must not be empty")
        blocklist = self.filters.domain_blocklist_file
        if blocklist is not None and not Path(blocklist).is_file():
            bad.append(f"filters.domain_blocklist_file: {blocklist}: no such file")
        return bad

    @property
    def task_count(self) -> int:
        return self.tasks if self.tasks is not None else self.workers

    def blocked_domains(self) -> list[str]:
        """The configured blocklist plus the blocklist file's domains, lower-cased."""
        domains = [d.strip().lower() for d in self.filters.domain_blocklist if d.strip()]
        if self.filters.domain_blocklist_file:
            for line in Path(self.filters.domain_blocklist_file).read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip().lower()
                if line:
                    domains.append(line)
        return domains
