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
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, POLICY_SUBSTRINGS, C4QualityFilter
from datatrove.utils.text import split_into_sentences
from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

from gpt2kit.data.bloom import normalise
from gpt2kit.data.language import identify, probability_of
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


# Closing quotes and brackets that may follow a sentence's last punctuation mark (fiction's dialogue: `... man.”`).
CLOSERS = "\"'”’»)]"


def ends_sentence(line: str) -> bool:
    """C4's terminal-punctuation rule, reading through closing quotes and brackets: `.`, `?` or `!` ends the
    line once they are stripped (and not an ellipsis); C4's own `"` and `'` endings count as before."""
    if line.endswith(('"', "'")):
        return True
    core = line.rstrip(CLOSERS)
    return core.endswith((".", "?", "!")) and not core.endswith("...")


class C4LineRules(C4QualityFilter):
    """datatrove's C4 rules with two changes: typographic closing quotes and brackets after terminal
    punctuation end a sentence (C4's rule drops every line of dialogue that ends in `”`), and the lines and
    words each rule removes are counted (`line-filter-RULE`, `words-filter-RULE`), so stats.json shows a rule
    that eats half a page."""

    def _drop_line(self, rule: str, words: list[str]) -> None:
        self.stat_update(f"line-filter-{rule}")
        self.stat_update(f"words-filter-{rule}", value=len(words))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lines = doc.text.splitlines() if self.split_paragraph else split_into_sentences(doc.text, self.language)
        num_sentences = 0
        kept_lines = []
        for line in lines:
            line = line.strip()
            words = line.split()
            self.stat_update("line-total")
            if self.max_word_length != -1 and any(len(word) > self.max_word_length for word in words):
                self._drop_line("too_long_word", words)
                continue
            if self.remove_citations:
                line = CITATION_REGEX.sub("", line)
            if self.filter_no_terminal_punct and not ends_sentence(line):
                self._drop_line("no_terminal_punc", words)
                continue
            if len(words) < self.min_words_per_line:
                self._drop_line("too_few_words", words)
                continue
            lowered = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lowered:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in lowered:
                self._drop_line("javascript", words)
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(phrase in lowered for phrase in POLICY_SUBSTRINGS):
                self._drop_line("policy", words)
                continue
            if self.min_num_sentences != -1:
                num_sentences += len(split_into_sentences(line, self.language)) if self.split_paragraph else 1
            kept_lines.append(line)
            self.stat_update("line-kept")
        if num_sentences < self.min_num_sentences:
            return False, "too_few_sentences"
        doc.text = ("\n" if self.split_paragraph else " ").join(kept_lines).strip()
        return True


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

    def english_probability(self, text: str) -> tuple[str, float]:
        language, probability = identify(text)
        return language, probability if language == "en" else probability_of(text, "en")

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
            counts[doc.metadata.get("domain") or "(local files)"] += 1
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
