"""The WebText pipeline's own datatrove steps: URL canonicalisation, URL dedup, domain rules, filters, counters."""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

from gpt2kit.data.bloom import normalise
from gpt2kit.webtext.urls import REDDIT_DOMAINS, WIKIPEDIA_DOMAINS, domain_matches, normalise_url, url_domain, url_key

_WORD_TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


class RegexWordTokenizer(WordTokenizer):
    """A dependency-free word and sentence splitter for datatrove's English heuristics and MinHash.

    datatrove's default English tokenizer needs spaCy; these rules only count words and sentences.
    """

    def __init__(self):
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD_TOKEN.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))


def partition_of(domain: str, partitions: int) -> int:
    """Every URL of a domain goes to one partition, so its rate limit and robots.txt live in one process."""
    return zlib.crc32(domain.encode()) % partitions


class UrlCanonicaliser(PipelineStep):
    """Normalise each document's URL and tag it with its domain, dedup key and partition."""

    type = "🔗 - URLS"
    name = "URL normalisation"

    def __init__(self, allow_file_urls: bool = False):
        super().__init__()
        self.allow_file_urls = allow_file_urls

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("total")
            raw = doc.metadata.get("url") or ""
            if self.allow_file_urls and raw.startswith("file:"):
                url, domain, key = raw, "", raw
            else:
                url = normalise_url(raw)
                if url is None:
                    self.stat_update("dropped", "dropped_bad_url")
                    continue
                domain, key = url_domain(url), url_key(url)
            doc.metadata.update(
                url=url, domain=domain, url_key=key, partition=f"{partition_of(domain, world_size):05d}"
            )
            self.stat_update("forwarded")
            yield doc


class DomainFilter(BaseFilter):
    """Drop Wikipedia and its mirrors, links back into Reddit, and a configurable domain blocklist."""

    name = "domain rules"

    def __init__(self, blocklist: list[str], drop_wikipedia: bool = True):
        super().__init__()
        self.blocklist = tuple(blocklist)
        self.drop_wikipedia = drop_wikipedia

    def reason(self, domain: str) -> str | None:
        if self.drop_wikipedia and domain_matches(domain, WIKIPEDIA_DOMAINS):
            return "wikipedia"
        if domain_matches(domain, REDDIT_DOMAINS):
            return "reddit_internal"
        if domain_matches(domain, self.blocklist):
            return "blocklist"
        return None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = self.reason(doc.metadata.get("domain", ""))
        return (False, reason) if reason else True


class UrlDeduplicator(PipelineStep):
    """Keep one document per URL key in this partition.

    Bare URL records (before fetching) are gathered first so a link posted several times keeps its highest
    karma; pages that already carry HTML keep their first copy and stream through.
    """

    type = "🔗 - URLS"
    name = "URL dedup"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        seen: dict[str, Document] = {}
        gathered: list[Document] = []
        for doc in data:
            self.stat_update("total")
            key = doc.metadata["url_key"]
            first = seen.get(key)
            if first is not None:
                self.stat_update("dropped", "dropped_duplicate_url")
                karma = doc.metadata.get("karma")
                if karma is not None and (first.metadata.get("karma") or -(10**9)) < karma:
                    first.metadata["karma"] = karma
                continue
            if doc.text:
                # a page: its HTML is not kept in memory, only the key
                seen[key] = Document(text="", id=doc.id, metadata={})
                self.stat_update("forwarded")
                yield doc
            else:
                seen[key] = doc
                gathered.append(doc)
        for doc in gathered:
            self.stat_update("forwarded")
            yield doc


class MinWordsFilter(BaseFilter):
    name = "minimum length"

    def __init__(self, min_words: int):
        super().__init__()
        self.min_words = min_words

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return True if len(doc.text.split()) >= self.min_words else (False, "too_short")


class EnglishFilter(BaseFilter):
    """Keep English pages, by py3langid (langid.py's model, bundled with the package: works offline)."""

    name = "English (py3langid)"

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold
        self._identifier = None

    @property
    def identifier(self):
        if self._identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return self._identifier

    def english_probability(self, text: str) -> tuple[str, float]:
        language, probability = self.identifier.classify(text[:20000])
        if language == "en":
            return language, float(probability)
        ranked = dict(self.identifier.rank(text[:20000]))
        return language, float(ranked.get("en", 0.0))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        language, english = self.english_probability(doc.text)
        doc.metadata["language"] = language
        doc.metadata["english_score"] = round(english, 4)
        return True if english >= self.threshold else (False, "not_english")


def dedup_content(doc: Document) -> bytes:
    """What exact dedup hashes: the text lower-cased, alphanumeric words joined by single spaces."""
    return normalise(doc.text).encode()


class DomainCounter(PipelineStep):
    """Count the domains of the documents that reach the output (the paper's released domains list)."""

    type = "📊 - STATS"
    name = "domain counts"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = str(folder)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter[str] = Counter()
        for doc in data:
            counts[doc.metadata.get("domain") or "(none)"] += 1
            self.stat_update("total")
            yield doc
        path = Path(self.folder) / f"{rank:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(counts))


def output_record(_writer: object, doc: Document) -> dict:
    """The fields of an output line (`text` and `url` are what `gpt2kit prepare` needs); a JsonlWriter adapter."""
    metadata = doc.metadata
    return {
        "text": doc.text,
        "url": metadata.get("url"),
        "domain": metadata.get("domain"),
        "karma": metadata.get("karma"),
        "fetched_at": metadata.get("fetched_at"),
    }


def work_record(_writer: object, doc: Document) -> dict:
    """Everything, for the work files between stages; a JsonlWriter adapter."""
    return {"text": doc.text, "id": doc.id, **doc.metadata}
