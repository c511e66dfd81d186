"""Naturally occurring task demonstrations in a corpus (the paper's thesis, its Table 1).

`find_demonstrations` scans text files, JSON-lines shards (as `prepare` reads them) or a `webtext build` output,
streaming and in parallel, and counts per kind the documents that hold a demonstration and the demonstrations
themselves:
- translation: `source = target` phrase lines (two or more in a document; words on both sides, nothing that
  looks like code), and the paper's cues ("in French", "en français", "translates to", "means ... in");
- qa: `Q:`/`A:` pairs, `Question: ... Answer: ...`, and question lines of an FAQ;
- summarization: `TL;DR`, "In summary", "Summary:", "To sum up";
- cloze: fill-in-the-blank prompts and reading-comprehension instructions;
- arithmetic: correct sums, differences and products written `12 + 7 = 19`;
- any kind a pattern file adds (YAML: a list of {name, regexes, window}; regexes in Python's `re` syntax). They
  run on the `regex` package, whose matching takes a time limit, since one that backtracks without bound would
  otherwise hang the scan.
A text file is one document (read in blocks of whole lines); a JSON-lines record is one document, whose `domain`
(or `url`) field, when present, is counted. Translation demonstrations are tagged with the language that
py3langid (the WebText build's identifier) guesses for their target side.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import regex as user_regex

try:
    from re import _parser as re_parser  # the parser behind re.compile (sre_parse before Python 3.11)
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as re_parser

from gpt2kit.config import cpu_limit
from gpt2kit.data.corpus import TEXT_AND_JSONL, corpus_files, file_kind, largest_first, text_blocks
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import Utf8Policy, atomic_write_text, iter_jsonl
from gpt2kit.outputs import DEMONSTRATIONS, claim_directory
from gpt2kit.webtext.urls import url_domain

KINDS = ("translation", "qa", "summarization", "cloze", "arithmetic")
EXAMPLES_PER_KIND = 5

LANGUAGES = "French|German|Spanish|Italian|Portuguese|Dutch|Russian|Chinese|Japanese|Latin|Greek|Arabic|English"
_PHRASE_SIDE = r"[^\W\d_](?:[^\W_]|[' ,.!?-]){0,78}?"  # words: a letter first; no underscores or code punctuation
_LANGUAGE_NAMES = LANGUAGES.split("|")
# Each cue: (literal anchors, its regex, how far before an anchor a match may start). Python's `re` walks every
# position of a long text, while `str.find` skips to the few places worth a look: each regex runs only in a
# window around an anchor, which keeps the scan at tens of MB/s per core.
_TRANSLATION_CUES = [
    (_LANGUAGE_NAMES, re.compile(rf"\bin (?:{LANGUAGES})\b[,:]?\s*[\"“'‘]|\((?:{LANGUAGES}) for\b"), 4),
    (["en français", "auf Deutsch", "en español"], re.compile(r"\b(?:en français|auf Deutsch|en español)\b"), 0),
    # a quoted phrase and its translation: 'translates as "..."', '"..." is translated', not "translate into action"
    (
        ["ranslat"],
        re.compile(
            r"\b[Tt]ranslat(?:es?|ed|ing)(?: it| them)? (?:as|to|into|by)\s*[\"“‘]"
            r"|[\"”’],? (?:which |that )?(?:is |was |may be )?translated\b"
        ),
        24,
    ),
    (["means"], re.compile(rf"\bmeans\b[^.\n]{{1,80}}\bin (?:{LANGUAGES})\b"), 0),
    ([' is "', " is “", ' means "', " means “"], re.compile(r"[\"”] in [A-Z][a-z]+ (?:is|means)\s*[\"“]"), 30),
    (["o say "], re.compile(r"\b[Tt]o say [\"“][^\"”\n]{1,120}[\"”],? you say [\"“]"), 1),
]
_PHRASE_CUE = ([" = "], re.compile(rf"^[ \t]*({_PHRASE_SIDE})[ \t]+=[ \t]+({_PHRASE_SIDE})[ \t]*$", re.M), 90)
_QA_CUES = [
    (["Q:", "Q."], re.compile(r"^[ \t]*Q[:.][ \t]*\S[^\n]*\n(?:[ \t]*\n)?[ \t]*A[:.][ \t]*\S", re.M), 8),
    (["Answer:", "answer:", "ANSWER:"], re.compile(r"\bQuestion:[ \t]*\S[^\n]{0,300}?\s+Answer:[ \t]*\S", re.I), 330),
]
_FAQ_QUESTION = re.compile(r"^[ \t]*(?:\d+[.)][ \t]*)?[A-Z][^\n?]{8,200}\?[ \t]*\n[ \t]*[A-Z][^\n?]{8,}", re.M)
_SUMMARY_CUES = [
    (["TL", "tl;", "Tl;"], re.compile(r"(?<![\w;])(?:TL|tl|Tl);? ?(?:DR|dr|Dr)\b[:.]?"), 0),
    (["n summary"], re.compile(r"\b[Ii]n summary\b"), 1),
    (["Summary:", "SUMMARY:"], re.compile(r"^[ \t]*(?:Summary|SUMMARY):", re.M), 20),
    (["sum up"], re.compile(r"\b[Tt]o sum up(?:, then)?[,:]"), 3),  # "To sum up:", not "going to sum up a period"
]
_CLOZE_CUES = [
    (["blank"], re.compile(r"\b[Ff]ill in the blanks?\b"), 14),
    (["___"], re.compile(r"(?<!_)_{3,}(?!_)"), 0),
    (["and answer"], re.compile(r"\b[Rr]ead the (?:passage|text|story|following)[^.\n]{0,40}\band answer\b"), 80),
]
_SUM_CUE = (
    ["="],
    re.compile(r"(?<![\w.=+\-*/×])(\d{1,6})[ \t]*([+\-*×x])[ \t]*(\d{1,6})[ \t]*=[ \t]*(\d{1,12})(?![\w.])"),
    24,
)
_AHEAD = 400  # how far past an anchor a match may end


def _matches(text: str, cue: tuple) -> list[re.Match]:
    """The cue's matches that cover one of its anchors, each once, in order."""
    anchors, regex, back = cue
    found: dict[int, re.Match] = {}
    for anchor in anchors:
        hit = text.find(anchor)
        while hit >= 0:
            start, stop = max(0, hit - back), hit + len(anchor) + _AHEAD
            match = regex.search(text, start, stop)
            while match and match.end() <= hit:  # an earlier match in the window: look past it
                match = regex.search(text, max(match.end(), match.start() + 1), stop)
            if match and match.start() <= hit:
                found.setdefault(match.start(), match)
            hit = text.find(anchor, hit + 1)
    return [found[start] for start in sorted(found)]


def _cue_spans(text: str, cues: list) -> list[tuple[int, int]]:
    return [m.span() for cue in cues for m in _matches(text, cue)]


# A user regex may take this long on a document, and as long again per million characters of it.
PATTERN_SECONDS = 1.0
# `regex` unrolls a counted repeat when it compiles (`(?:a{1000}){1000}` is a million positions: seconds and
# gigabytes, where `re` takes microseconds), so a pattern may unroll to at most this many positions; that many
# compile in about 0.1 s, and a demonstration's regex needs a few hundred.
MAX_UNROLLED = 100_000
_COUNTED = {
    getattr(re_parser, op) for op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(re_parser, op)
}


def _unrolled(items) -> int:
    """How many positions a parsed pattern unrolls to: a counted repeat copies its body that many times (an
    unbounded one, its lower bound)."""
    total = 0
    for op, value in items:
        if op in _COUNTED:
            low, high, body = value
            total += max(1, low if high == re_parser.MAXREPEAT else high) * _unrolled(body)
        else:
            total += max(1, sum(_unrolled(part) for part in _subpatterns(value)))
    return total


def _subpatterns(value) -> Iterator:
    """The parsed subpatterns inside an item's value (a group's body, an alternation's branches...)."""
    if isinstance(value, re_parser.SubPattern):
        yield value
    elif isinstance(value, (tuple, list)):
        for part in value:
            yield from _subpatterns(part)


@dataclass
class Pattern:
    """A user-supplied kind: any of its regexes marks a demonstration; `window` characters around it are shown."""

    name: str
    regexes: list[user_regex.Pattern]
    window: int = 200

    def spans(self, text: str, where: str) -> list[tuple[int, int]]:
        """Every match of every regex in `text`; a regex that runs out of time is an error naming it."""
        # A scan in linear time is far faster, so only a regex that backtracks without bound runs out.
        timeout = PATTERN_SECONDS * (1 + len(text) / 1e6)
        spans = []
        for regex in self.regexes:
            try:
                spans += [m.span() for m in regex.finditer(text, timeout=timeout)]
            except TimeoutError:
                raise GPT2KitError(
                    f"pattern {self.name!r}: regex {regex.pattern!r} ran out of time ({timeout:.1f} s) on {where}; "
                    "it backtracks too much (nested repeats such as `(a|aa)+`)"
                ) from None
        return spans


def compile_pattern(text: str) -> user_regex.Pattern:
    """A user's regex (`re` syntax, multiline) compiled by `regex`; ValueError says why it is refused."""
    try:
        re.compile(text, re.M)  # the syntax stays Python's `re`
        size = _unrolled(re_parser.parse(text, re.M))
    except re.error as err:
        raise ValueError(f"bad regex {text!r} ({err})") from None
    except RecursionError:
        raise ValueError(f"regex {text!r} nests too deeply") from None
    if size > MAX_UNROLLED:
        raise ValueError(f"regex {text!r} unrolls to {size:,} positions (at most {MAX_UNROLLED:,}): lower its counts")
    try:
        return user_regex.compile(text, user_regex.M)
    except user_regex.error as err:
        raise ValueError(f"bad regex {text!r} ({err})") from None


def load_patterns(path: str | os.PathLike) -> list[Pattern]:
    """A YAML (or JSON) list of {name, regexes, window} (`window` optional)."""
    import yaml

    path = Path(path)
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise GPT2KitError(f"{path}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        raise GPT2KitError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(items, list) or not items:
        raise GPT2KitError(f"{path}: expected a list of patterns, each with a name and regexes")
    patterns = []
    for index, item in enumerate(items):
        where = f"{path}: pattern {index + 1}"
        if not isinstance(item, dict) or set(item) - {"name", "regexes", "window"}:
            raise GPT2KitError(f"{where}: expected the keys name, regexes and (optionally) window")
        name, regexes, window = item.get("name"), item.get("regexes"), item.get("window", 200)
        if not isinstance(name, str) or not re.fullmatch(r"[\w-]+", name) or name in KINDS:
            raise GPT2KitError(f"{where}: name must be a new word-like name (not one of {', '.join(KINDS)})")
        if isinstance(regexes, str):
            regexes = [regexes]
        if not isinstance(regexes, list) or not regexes or not all(isinstance(r, str) for r in regexes):
            raise GPT2KitError(f"{where} ({name}): regexes must be a list of strings")
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise GPT2KitError(f"{where} ({name}): window must be a non-negative integer")
        try:
            compiled = [compile_pattern(r) for r in regexes]
        except ValueError as err:
            raise GPT2KitError(f"{where} ({name}): {err}") from None
        patterns.append(Pattern(name, compiled, window))
    return patterns


def _excerpt(text: str, start: int, end: int, window: int = 120) -> str:
    begin, stop = max(0, start - window), min(len(text), end + window)
    return ("…" if begin else "") + text[begin:stop].strip() + ("…" if stop < len(text) else "")


def _translation(text: str) -> tuple[list[tuple[int, int]], str | None]:
    lines = [m for m in _matches(text, _PHRASE_CUE) if _is_phrase(m.group(1)) and _is_phrase(m.group(2))]
    spans = [m.span() for m in lines] if len(lines) >= 2 else []  # one `x = y` line is not a phrasebook
    language = None
    if spans:
        from gpt2kit.data.language import identify

        language = identify(" ".join(m.group(2) for m in lines))[0]
    return spans + _cue_spans(text, _TRANSLATION_CUES), language


def _is_phrase(side: str) -> bool:
    words = side.split()
    return 1 <= len(words) <= 12 and not any(w.lower() in ("if", "let", "var", "const", "return") for w in words[:1])


def _arithmetic(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in _matches(text, _SUM_CUE):
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        if value == c:  # a wrong sum teaches nothing (and catches dates, scores and versions)
            spans.append(match.span())
    return spans


def _faq(text: str) -> list[tuple[int, int]]:
    if "FAQ" in text or "requently Asked Questions" in text or "requently asked questions" in text:
        return [m.span() for m in _FAQ_QUESTION.finditer(text)]
    return []


def find_in_text(
    text: str, patterns: Sequence[Pattern] = (), where: str = "text"
) -> dict[str, tuple[list[tuple[int, int]], str | None]]:
    """Per kind found in `text` (`where`: the document, for errors): the spans of its demonstrations, and the
    translation target's language (or None)."""
    spans, language = _translation(text)
    found = {"translation": (spans, language)}
    found["qa"] = (_cue_spans(text, _QA_CUES) + _faq(text), None)
    found["summarization"] = (_cue_spans(text, _SUMMARY_CUES), None)
    found["cloze"] = (_cue_spans(text, _CLOZE_CUES), None)
    found["arithmetic"] = (_arithmetic(text), None)
    for pattern in patterns:
        found[pattern.name] = (pattern.spans(text, where), None)
    return {kind: value for kind, value in found.items() if value[0]}


# -- scanning ------------------------------------------------------------------------------------------------------


@dataclass
class KindCount:
    documents: int = 0
    occurrences: int = 0
    domains: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)

    def merge(self, other: KindCount) -> None:
        self.documents += other.documents
        self.occurrences += other.occurrences
        self.domains.update(other.domains)
        self.languages.update(other.languages)
        room = EXAMPLES_PER_KIND - len(self.examples)
        self.examples += other.examples[: max(room, 0)]


@dataclass
class ScanResult:
    documents: int = 0
    bytes: int = 0
    kinds: dict[str, KindCount] = field(default_factory=dict)
    seconds: float = 0.0

    def merge(self, other: ScanResult) -> None:
        self.documents += other.documents
        self.bytes += other.bytes
        for kind, count in other.kinds.items():
            self.kinds.setdefault(kind, KindCount()).merge(count)

    def summary(self, kinds: Sequence[str]) -> dict:
        per_million = lambda n: n / self.documents * 1e6 if self.documents else 0.0  # noqa: E731
        per_gb = lambda n: n / self.bytes * 1e9 if self.bytes else 0.0  # noqa: E731
        table = {}
        for kind in kinds:
            count = self.kinds.get(kind, KindCount())
            table[kind] = {
                "documents": count.documents,
                "occurrences": count.occurrences,
                "documents_per_million_documents": per_million(count.documents),
                "occurrences_per_gb": per_gb(count.occurrences),
                "top_domains": [{"domain": d, "documents": n} for d, n in count.domains.most_common(10)],
            }
            if count.languages:
                table[kind]["target_languages"] = dict(count.languages.most_common(10))
        return {"documents": self.documents, "bytes": self.bytes, "seconds": round(self.seconds, 2), "kinds": table}


def _documents(path: Path, text_field: str, utf8: Utf8Policy) -> Iterator[tuple[str, str, str | None]]:
    """(where, text, domain) per document: a JSON-lines record, or a whole text file (joined from its blocks)."""
    if file_kind(path) == "jsonl":
        for number, record in iter_jsonl(path, utf8=utf8):
            text = record.get(text_field)
            if not isinstance(text, str):
                raise GPT2KitError(f"{path}:{number}: no string field {text_field!r}")
            domain = record.get("domain") or (url_domain(record["url"]) if isinstance(record.get("url"), str) else None)
            yield f"{path.name}:{number}", text, domain
    else:
        yield path.name, "".join(text_blocks(path, utf8)), None


def scan_file(path: Path, text_field: str, patterns: Sequence[Pattern]) -> ScanResult:
    """Every document of one file."""
    result = ScanResult()
    utf8 = Utf8Policy("replace")  # a scan reports what it can read, as prepare does
    for where, text, domain in _documents(path, text_field, utf8):
        result.documents += 1
        result.bytes += len(text.encode("utf-8"))
        for kind, (spans, language) in find_in_text(text, patterns, where).items():
            count = result.kinds.setdefault(kind, KindCount())
            count.documents += 1
            count.occurrences += len(spans)
            if domain:
                count.domains[domain] += 1
            if language:
                count.languages[language] += 1
            if len(count.examples) < EXAMPLES_PER_KIND:
                start, end = spans[0]
                window = next((p.window for p in patterns if p.name == kind), 120)
                count.examples.append({"source": where, "domain": domain, "text": _excerpt(text, start, end, window)})
    return result


def find_demonstrations(
    corpus: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    workers: int = 1,
    text_field: str = "text",
    patterns: str | os.PathLike | None = None,
) -> tuple[ScanResult, list[str]]:
    """Scan the corpus (files and directories); write demonstrations.json and examples.md to `out` if given.

    Returns the result and the kinds in report order (the built-in ones, then the pattern file's).
    """
    import time

    if not 1 <= workers <= cpu_limit():
        raise GPT2KitError(f"workers must be in 1..{cpu_limit()} (a few per CPU of this machine), got {workers}")
    extra = load_patterns(patterns) if patterns else []
    kinds = list(KINDS) + [p.name for p in extra]
    files = largest_first(corpus_files(corpus, TEXT_AND_JSONL))
    start = time.perf_counter()
    result = ScanResult()
    if workers == 1 or len(files) == 1:
        for path in files:
            result.merge(scan_file(path, text_field, extra))
    else:
        with ProcessPoolExecutor(min(workers, len(files))) as pool:
            for part in pool.map(scan_file, files, [text_field] * len(files), [extra] * len(files)):
                result.merge(part)  # in file order: the examples do not depend on the number of workers
    result.seconds = time.perf_counter() - start
    if out is not None:
        with claim_directory(out, DEMONSTRATIONS) as claim:
            atomic_write_text(
                claim.directory / "demonstrations.json", json.dumps(result.summary(kinds), indent=2) + "\n"
            )
            atomic_write_text(claim.directory / "examples.md", examples_markdown(result, kinds))
    return result, kinds


def examples_markdown(result: ScanResult, kinds: Sequence[str]) -> str:
    """A Table-1-style sample of each kind, with its source."""
    parts = ["# Task demonstrations found in the corpus", ""]
    parts.append(f"{result.documents:,} documents, {result.bytes / 1e6:,.1f} MB.")
    for kind in kinds:
        count = result.kinds.get(kind, KindCount())
        parts += ["", f"## {kind}: {count.documents:,} documents, {count.occurrences:,} demonstrations", ""]
        if not count.examples:
            parts.append("None found.")
        for example in count.examples:
            source = example["source"] + (f" ({example['domain']})" if example["domain"] else "")
            parts += [f"- {source}:", "", "  ```text", *("  " + line for line in example["text"].splitlines()), "  ```"]
    return "\n".join(parts) + "\n"


def format_table(result: ScanResult, kinds: Sequence[str]) -> str:
    summary = result.summary(kinds)["kinds"]
    width = max(len("kind"), *(len(k) for k in kinds))
    lines = [f"{'kind':<{width}}  {'documents':>10}  {'demos':>10}  {'docs/M docs':>12}  {'demos/GB':>12}"]
    for kind in kinds:
        row = summary[kind]
        lines.append(
            f"{kind:<{width}}  {row['documents']:>10,}  {row['occurrences']:>10,}  "
            f"{row['documents_per_million_documents']:>12,.0f}  {row['occurrences_per_gb']:>12,.0f}"
        )
    rate = result.bytes / 1e6 / result.seconds if result.seconds else 0.0
    lines.append(
        f"{result.documents:,} documents, {result.bytes / 1e6:,.1f} MB in {result.seconds:.1f} s ({rate:.1f} MB/s)"
    )
    return "\n".join(lines)
