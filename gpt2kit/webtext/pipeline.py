"""`gpt2kit webtext build`: WebText's recipe as a sequence of datatrove pipelines.

Stages (each a datatrove pipeline run as `tasks` tasks on local processes, a Ray cluster or Slurm, through
`gpt2kit.executors`, one stage after the other):

1. collect: read the input (Reddit dumps, URL lists, WARC files or saved HTML), normalise URLs, drop
   Wikipedia/mirrors, Reddit-internal links and blocked domains, and write records partitioned by domain hash.
2. pages: per partition, drop duplicate URLs, fetch (URL inputs), extract the main text with trafilatura, clean
   boilerplate (C4 line rules, Gopher document rules), keep pages of a minimum length in English; write them
   and their exact-dedup signatures (hash of the normalised text).
3. exact-find, minhash-signatures, minhash-buckets, minhash-cluster: datatrove's exact and MinHash LSH dedup.
4. output: drop the duplicates, count domains, write zstd JSON-lines shards of text, url, domain, karma and
   fetched_at, then `stats.json` (what each stage removed, by cause, and the top domains) and `domains.tsv`.

Work files live in `OUT.work` beside the output (so nothing but the shards is under `OUT`). Completed tasks are skipped on a re-run with the same settings and inputs;
fetched pages are kept in a cache that survives any change of settings, so a re-run never fetches a page twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gpt2kit import executors
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_write_text, reading
from gpt2kit.outputs import WEBTEXT_BUILD, claim_directory
from gpt2kit.webtext.config import WebTextConfig

log = logging.getLogger(__name__)

OUTPUT_PATTERN = "webtext-*.jsonl.zst"
TOP_DOMAINS = 100


@dataclass
class StageCount:
    """What one step saw and removed."""

    stage: str
    total: int
    kept: int
    removed: dict[str, int]
    lines_removed: dict[str, dict[str, int]] = field(default_factory=dict)  # line rules: {rule: {lines, words}}

    def to_dict(self) -> dict:
        row = {"stage": self.stage, "in": self.total, "out": self.kept, "removed": self.removed}
        if self.lines_removed:
            row["lines_removed"] = self.lines_removed
        return row


@dataclass
class Stage(executors.Stage):
    labels: dict[int, str] = field(default_factory=dict)  # step index -> name in stats.json


@dataclass
class BuildReport:
    out: Path
    shards: list[Path]
    documents: int
    stages: list[StageCount]
    top_domains: list[tuple[str, int]]


# -- input checks ------------------------------------------------------------------------------------------------


def check_inputs(config: WebTextConfig) -> None:
    """Fail early with one clear line if an input is missing or is not what its flag says."""
    kind = config.input_kind
    if kind == "html":
        if len(config.inputs) != 1 or not Path(config.inputs[0]).is_dir():
            raise GPT2KitError(f"html input needs one directory, got {', '.join(config.inputs)}")
        from gpt2kit.webtext.readers import HTML_SUFFIXES

        if not any(p.name.lower().endswith(HTML_SUFFIXES) for p in Path(config.inputs[0]).rglob("*")):
            raise GPT2KitError(f"{config.inputs[0]}: no .html files in it")
        return
    empty = 0
    for name in config.inputs:
        path = Path(name)
        if not path.is_file():
            raise GPT2KitError(f"{path}: no such file")
        if path.stat().st_size == 0:
            empty += 1
            continue
        if kind == "warc":
            import gzip

            with open(path, "rb") as handle:
                compressed = handle.read(2) == b"\x1f\x8b"
            try:
                with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
                    head = handle.read(5)
            except (OSError, EOFError) as err:
                raise GPT2KitError(f"{path}: cannot read ({err})") from None
            if head != b"WARC/":
                raise GPT2KitError(f"{path}: not a WARC file (it does not start with a WARC/1.x record)")
            continue
        first = _first_line(path)
        if first is None:
            empty += 1
            continue
        number, raw = first
        if kind == "reddit":
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict) or "url" not in record or "score" not in record:
                raise GPT2KitError(
                    f"{path}:{number}: not a Reddit submission dump (JSON lines with url, score, created_utc)"
                )
        else:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise GPT2KitError(f"{path}:{number}: not UTF-8 (byte {err.start})") from None
    if empty == len(config.inputs):
        raise GPT2KitError(f"{', '.join(config.inputs)}: empty input, nothing to build")


def _first_line(path: Path) -> tuple[int, bytes] | None:
    """(line number, bytes) of the first non-blank line, or None for an empty file."""
    with reading(path) as handle:
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                return number, raw
    return None


# -- the pipelines -------------------------------------------------------------------------------------------------


class _Stages:
    """Builds each stage's steps; keeps the labels that stats.json uses for them."""

    def __init__(self, config: WebTextConfig, work: Path):
        self.config = config
        self.work = work
        self.labels: dict[str, dict[int, str]] = {}

    def folder(self, name: str) -> str:
        return str(self.work / name)

    def minhash_config(self):
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.utils.hashing import HashConfig

        dedup = self.config.dedup
        # datatrove hashes shingles as str, which the xxhash package no longer accepts; its sha1 hash does.
        return MinhashConfig(
            n_grams=dedup.ngram_size,
            num_buckets=dedup.num_buckets,
            hashes_per_bucket=dedup.hashes_per_bucket,
            hash_config=HashConfig(precision=64, hash_fc="sha1"),
        )

    def exact_config(self):
        from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig

        from gpt2kit.webtext.steps import dedup_content

        return ExactDedupConfig(content_getter=dedup_content, document_priority=_karma_priority)

    def plan(self) -> list[tuple[str, int, list]]:
        """(stage name, tasks, steps) in order."""
        from gpt2kit.webtext import steps

        config = self.config
        self.stages: list[tuple[str, int, list]] = []
        domain_rules = steps.DomainFilter(config.blocked_domains(), config.filters.drop_wikipedia)
        self._collect(domain_rules)
        self._pages(domain_rules)
        if config.dedup.exact:
            self._exact_find()
        final = self._read_pages("exact dedup")
        if config.dedup.near:
            self._near_dedup()
            final.append(("near dedup (MinHash)", self._minhash_filter()))
        self._output(final)
        return self.stages

    def _add(self, name: str, tasks: int, labelled: list[tuple[str | None, object]]) -> None:
        """A stage of (stats label or None, step) pairs; labelled steps get a row in stats.json."""
        self.labels[name] = {i: label for i, (label, _) in enumerate(labelled) if label}
        self.stages.append((name, tasks, [step for _, step in labelled]))

    def _collect(self, domain_rules) -> None:
        from datatrove.pipeline.writers import JsonlWriter

        from gpt2kit.webtext import readers, steps

        config = self.config
        inputs = [str(Path(name).resolve()) for name in config.inputs]  # tasks may run elsewhere, in another folder
        reader = {
            "reddit": lambda: readers.RedditReader(inputs, config.reddit),
            "urls": lambda: readers.UrlListReader(inputs),
            "warc": lambda: readers.WarcPagesReader(inputs),
            "html": lambda: readers.HtmlDirReader(inputs[0]),
        }[config.input_kind]()
        partitions = JsonlWriter(
            self.folder("partitions"),
            output_filename="${partition}/${rank}.jsonl.zst",
            compression="zstd",
            adapter=steps.work_record,
        )
        self._add(
            "collect",
            config.task_count,
            [
                ("read", reader),
                ("url normalisation", steps.UrlCanonicaliser(allow_file_urls=config.input_kind == "html")),
                ("domain rules", domain_rules),
                (None, partitions),
            ],
        )

    def _pages(self, domain_rules) -> None:
        from datatrove.pipeline.dedup.exact_dedup import ExactDedupSignature
        from datatrove.pipeline.extractors import Trafilatura
        from datatrove.pipeline.filters import GopherQualityFilter
        from datatrove.pipeline.writers import JsonlWriter

        from gpt2kit.webtext import readers, steps
        from gpt2kit.webtext.fetch import Fetcher

        config, filters, n = self.config, self.config.filters, self.config.task_count
        tokenizer = steps.RegexWordTokenizer()
        pages: list[tuple[str | None, object]] = [
            (None, readers.WorkShardReader(self.folder("partitions"), "{rank:05d}/*.jsonl.zst")),
            ("url dedup", steps.UrlDeduplicator()),
        ]
        if config.input_kind in ("reddit", "urls"):
            pages.append(("fetch", Fetcher(config.fetch, self.folder("fetch"), domain_rules.reason)))
        pages.append(("extract (trafilatura)", Trafilatura(timeout=filters.extract_timeout, deduplicate=False)))
        # Language first: the boilerplate rules count English stop words and would hide non-English pages.
        pages.append(("English (py3langid)", steps.EnglishFilter(filters.english_threshold)))
        if filters.boilerplate:
            pages.append(("boilerplate lines (C4 rules)", steps.C4LineRules(min_num_sentences=3, language=tokenizer)))
            pages.append(("quality (Gopher rules)", GopherQualityFilter(min_doc_words=None, language=tokenizer)))
        pages.append(("minimum length", steps.MinWordsFilter(filters.min_words)))
        writer = JsonlWriter(self.folder("pages"), "${rank}.jsonl.zst", compression="zstd", adapter=steps.work_record)
        pages.append((None, writer))
        if config.dedup.exact:
            signature = ExactDedupSignature(self.folder("exact-sigs"), config=self.exact_config(), finder_workers=n)
            pages.append((None, signature))
        self._add("pages", n, pages)

    def _read_pages(self, label: str | None) -> list[tuple[str | None, object]]:
        from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter

        from gpt2kit.webtext import readers

        chain: list[tuple[str | None, object]] = [
            (None, readers.WorkShardReader(self.folder("pages"), "{rank:05d}.jsonl.zst"))
        ]
        if self.config.dedup.exact:
            chain.append((label, ExactDedupFilter(self.folder("exact-dups"), config=self.exact_config())))
        return chain

    def _exact_find(self) -> None:
        from datatrove.pipeline.dedup.exact_dedup import ExactFindDedups

        find = ExactFindDedups(self.folder("exact-sigs"), self.folder("exact-dups"), config=self.exact_config())
        self._add("exact-find", self.config.task_count, [(None, find)])

    def _near_dedup(self) -> None:
        from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature

        from gpt2kit.webtext import steps

        minhash = self.minhash_config()
        signature = MinhashDedupSignature(
            self.folder("minhash-sigs"), config=minhash, language=steps.RegexWordTokenizer()
        )
        self._add("minhash-signatures", self.config.task_count, self._read_pages(None) + [(None, signature)])
        buckets = MinhashDedupBuckets(self.folder("minhash-sigs"), self.folder("minhash-buckets"), config=minhash)
        self._add("minhash-buckets", minhash.num_buckets, [(None, buckets)])
        cluster = MinhashDedupCluster(self.folder("minhash-buckets"), self.folder("minhash-remove"), config=minhash)
        self._add("minhash-cluster", 1, [(None, cluster)])

    def _minhash_filter(self):
        from datatrove.pipeline.dedup.minhash import MinhashDedupFilter

        return MinhashDedupFilter(self.folder("minhash-remove"))

    def _output(self, final: list[tuple[str | None, object]]) -> None:
        from datatrove.pipeline.writers import JsonlWriter

        from gpt2kit.webtext import steps

        final.append((None, steps.DomainCounter(self.folder("domains"))))
        writer = JsonlWriter(
            self.folder("final"),
            output_filename="webtext-${rank}.jsonl.zst",
            compression="zstd",
            adapter=steps.output_record,
            max_file_size=self.config.shard_bytes,
        )
        final.append(("written", writer))
        self._add("output", self.config.task_count, final)


def _karma_priority(doc) -> int:
    """Among exact duplicates keep the copy with the most karma (datatrove wants 1..65535)."""
    karma = doc.metadata.get("karma")
    return max(1, min(65535, int(karma) + 1)) if isinstance(karma, (int, float)) and karma >= 0 else 1


def _fingerprint(config: WebTextConfig) -> str:
    """Settings and inputs that decide the work files; the fetch cache is independent of them."""
    settings = dataclasses.asdict(config)
    settings.pop("out")
    settings.pop("workers")  # how many run at once does not change the work; how many tasks share it does
    settings["tasks"] = config.task_count
    return executors.work_fingerprint(settings, config.inputs)


def _stage_counts(work: Path, name: str, labels: dict[int, str]) -> list[StageCount]:
    """Per labelled step, the totals summed over every task's stats file (including tasks of earlier runs)."""
    merged: dict[int, Counter[str]] = {}
    for path in sorted((work / "logs" / name / "stats").glob("*.json")):
        for index, step in enumerate(json.loads(path.read_text())):
            for key, metric in step.get("stats", {}).items():
                merged.setdefault(index, Counter())[key] += int(metric["total"] if isinstance(metric, dict) else metric)
    counts = []
    for index, label in labels.items():
        values = merged.get(index, Counter())
        removed = {
            key.removeprefix("dropped_"): value
            for key, value in sorted(values.items())
            if key.startswith("dropped_") and value
        }
        for key in ("timeout", "clean_error", "broken_process"):  # extractor failures
            if values.get(key):
                removed[f"extract_{key}"] = values[key]
        total = values.get("total", 0)
        kept = values.get("forwarded", total - values.get("dropped", 0))
        dropped = total - kept
        if dropped > sum(removed.values()):
            causes = {"extract": "no_text", "exact": "duplicate", "near": "near_duplicate"}
            cause = next((c for prefix, c in causes.items() if label.startswith(prefix)), "other")
            removed[cause] = dropped - sum(removed.values())
        lines_removed = {
            key.removeprefix("line-filter-"): {
                "lines": value,
                "words": values.get("words-filter-" + key.removeprefix("line-filter-"), 0),
            }
            for key, value in sorted(values.items())
            if key.startswith("line-filter-") and value
        }
        counts.append(StageCount(label, total, kept, removed, lines_removed))
    return counts


def work_folder(config: WebTextConfig) -> Path:
    """An absolute path: tasks on Ray or Slurm may start in another folder."""
    out = Path(config.out)
    return (Path(config.work_dir) if config.work_dir else out.with_name(out.name + ".work")).resolve()


def plan_stages(config: WebTextConfig) -> list[Stage]:
    """Check the settings and inputs, prepare the work folder, and return the stages to run in order.

    Run them with `gpt2kit.executors.run_stages` (or any datatrove executor, `tasks=stage.tasks`,
    `logging_dir=stage.logging_dir`, one stage after the other), then call `finish_build`.
    """
    config.check("webtext config")
    check_inputs(config)
    work = work_folder(config)
    executors.reset_work_folder(work, _fingerprint(config), keep=("fetch",))
    # The output stage is rewritten whole every time: it is cheap, and its shards are moved out afterwards.
    for name in ("logs/output", "final", "domains"):
        shutil.rmtree(work / name, ignore_errors=True)
    planner = _Stages(config, work)
    return [
        Stage(name, tasks, steps, work / "logs" / name, planner.labels[name]) for name, tasks, steps in planner.plan()
    ]


def finish_build(config: WebTextConfig) -> BuildReport:
    """After every stage ran: move the shards into `config.out`, write `stats.json` and `domains.tsv`."""
    out = Path(config.out)
    work = work_folder(config)
    planner = _Stages(config, work)
    counts: list[StageCount] = []
    for name, _, _ in planner.plan():
        counts.extend(_stage_counts(work, name, planner.labels[name]))

    domains: Counter[str] = Counter()
    for path in (work / "domains").glob("*.json"):
        domains.update(json.loads(path.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(OUTPUT_PATTERN):
        old.unlink()
    shards = []
    for produced in sorted((work / "final").glob("*.jsonl.zst")):
        # datatrove names size-capped files 000_webtext-00003.jsonl.zst: (part, rank) -> webtext-00003-000
        part, _, rest = produced.name.partition("_webtext-")
        target = out / f"webtext-{rest.removesuffix('.jsonl.zst')}-{part}.jsonl.zst"
        os.replace(produced, target)
        shards.append(target)
    documents = sum(domains.values())
    top = domains.most_common(TOP_DOMAINS)
    stats = {
        "input_kind": config.input_kind,
        "inputs": config.inputs,
        "documents": documents,
        "shards": [p.name for p in shards],
        "stages": [count.to_dict() for count in counts],
        "top_domains": [{"domain": d, "documents": c} for d, c in top],
        "settings": dataclasses.asdict(config) | {"near_dedup_threshold": round(config.dedup.threshold, 3)},
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    atomic_write_text(out / "domains.tsv", "".join(f"{d}\t{c}\n" for d, c in domains.most_common()))
    return BuildReport(out, shards, documents, counts, top)


def build_webtext(config: WebTextConfig, executor: executors.ExecutorConfig | None = None) -> BuildReport:
    """Run every stage on `executor` (default: `config.workers` local processes); write the shards,
    `stats.json` and `domains.tsv`."""
    executor = (executor or executors.ExecutorConfig()).with_local_workers(config.workers)
    with claim_directory(config.out, WEBTEXT_BUILD):
        executors.run_stages(plan_stages(config), executor)
        return finish_build(config)


def format_stage_table(report: BuildReport) -> str:
    width = max(len(count.stage) for count in report.stages)
    lines = [f"{'stage':<{width}}  {'in':>8}  {'out':>8}  removed"]
    for count in report.stages:
        removed = ", ".join(f"{cause} {n}" for cause, n in count.removed.items()) or "-"
        lines.append(f"{count.stage:<{width}}  {count.total:>8}  {count.kept:>8}  {removed}")
    return "\n".join(lines)
