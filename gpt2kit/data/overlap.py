"""The paper's overlap analysis (GPT-2, section 4, Table 6): how many of a test set's 8-grams the training
corpus's Bloom filter (`gpt2kit.data.bloom`) holds, per test file and per example."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpt2kit.data.bloom import NGRAM, BloomFilter
from gpt2kit.data.corpus import file_kind, text_blocks
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import Utf8Policy, atomic_write_jsonl, iter_jsonl, jsonl_texts
from gpt2kit.outputs import OVERLAP_FLAGS, check_file_output

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")
TEST_FIELDS = ("text", "article", "question", "passage", "context", "sentence", "query")


def load_examples(
    path: str | os.PathLike, unit: str = "auto", field: str | None = None, utf8: Utf8Policy | None = None
) -> list[str]:
    """The examples of a test file, in order; bad UTF-8 as `utf8` says (default: an error naming the line).

    JSON lines: one example per line, from `field` (default: the first of text, article, question, passage,
    context, sentence, query that the first record has). Text: `line` (one per non-empty line), `wikitext`
    (one per article, split at ` = Title = ` lines), `file` (the whole file); `auto` picks wikitext for
    WikiText files and lines otherwise.
    """
    path = Path(path)
    if unit not in ("auto", "line", "wikitext", "file"):
        raise GPT2KitError(f"unit must be auto, line, wikitext or file, got {unit!r}")
    if not path.is_file():
        raise GPT2KitError(f"{path}: no such test file")
    if file_kind(path) == "jsonl" or path.suffix == ".json":
        if field is None:
            first = next((record for _, record in iter_jsonl(path, utf8=Utf8Policy("skip"))), None)
            if first is None:
                raise GPT2KitError(f"{path}: no examples")
            field = next((name for name in TEST_FIELDS if isinstance(first.get(name), str)), None)
            if field is None:
                raise GPT2KitError(f"{path}: none of the fields {', '.join(TEST_FIELDS)}; name the field to read")
        return list(jsonl_texts(path, field, utf8))
    text = "".join(text_blocks(path, utf8))
    lines = text.splitlines()
    if unit == "auto":
        unit = "wikitext" if any(_WIKITEXT_TITLE.match(line) for line in lines[:20]) else "line"
    if unit == "file":
        return [text]
    if unit == "line":
        return [line for line in lines if line.strip()]
    articles: list[list[str]] = []
    for line in lines:
        if _WIKITEXT_TITLE.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["\n".join(article) for article in articles if any(line.strip() for line in article)]


@dataclass
class OverlapRow:
    """One test file's overlap with the filter (a row of the paper's Table 6)."""

    name: str
    examples: int
    examples_with_ngrams: int
    ngrams: int
    ngrams_found: int
    examples_with_overlap: int
    flags: list[dict] = field(default_factory=list, repr=False)
    bad_utf8: str = ""  # what reading it repaired or skipped, if anything
    longest_verbatim_words: int = 0  # the longest run of words found verbatim in the filter, over all examples
    examples_with_verbatim: int = 0  # examples with a run of at least `verbatim_words`
    verbatim_words: int = 0  # the threshold those were counted at (0: not counted)

    @property
    def percent_ngrams(self) -> float:
        return 100.0 * self.ngrams_found / self.ngrams if self.ngrams else 0.0

    @property
    def percent_examples(self) -> float:
        return 100.0 * self.examples_with_overlap / self.examples_with_ngrams if self.examples_with_ngrams else 0.0

    def summary(self) -> dict:
        return {
            "name": self.name,
            "examples": self.examples,
            "examples_with_8grams": self.examples_with_ngrams,
            "ngrams": self.ngrams,
            "ngrams_found": self.ngrams_found,
            "percent_ngrams_found": self.percent_ngrams,
            "examples_with_overlap": self.examples_with_overlap,
            "percent_examples_with_overlap": self.percent_examples,
            "longest_verbatim_words": self.longest_verbatim_words,
            "verbatim_words": self.verbatim_words,
            "examples_with_verbatim": self.examples_with_verbatim,
            "percent_examples_with_verbatim": self.percent_verbatim,
            "bad_utf8": self.bad_utf8 or None,
        }

    @property
    def percent_verbatim(self) -> float:
        return 100.0 * self.examples_with_verbatim / self.examples if self.examples else 0.0


def verbatim_words(found: np.ndarray) -> int:
    """The longest run of words held verbatim: k consecutive 8-grams found cover k + 7 words."""
    if not found.any():
        return 0
    padded = np.concatenate(([0], found.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max()) + NGRAM - 1


def check_examples(bloom: BloomFilter, name: str, examples: Sequence[str], verbatim: int = 0) -> OverlapRow:
    """The row of one test set; with `verbatim` (words), also how many examples repeat that long a run verbatim."""
    row = OverlapRow(name, len(examples), 0, 0, 0, 0, verbatim_words=verbatim)
    for index, text in enumerate(examples):
        found = bloom.contains_text(text)
        hits = int(found.sum())
        run = verbatim_words(found)
        row.longest_verbatim_words = max(row.longest_verbatim_words, run)
        row.examples_with_verbatim += bool(verbatim) and run >= verbatim
        row.ngrams += len(found)
        row.ngrams_found += hits
        row.examples_with_ngrams += len(found) > 0
        row.examples_with_overlap += hits > 0
        row.flags.append(
            {
                "file": name,
                "index": index,
                "ngrams": len(found),
                "found": hits,
                "fraction": hits / len(found) if len(found) else 0.0,
                "overlap": hits > 0,
                "verbatim_words": run,
            }
        )
    return row


def check_overlap(
    filter_path: str | os.PathLike,
    test_files: Sequence[str | os.PathLike],
    *,
    unit: str = "auto",
    field: str | None = None,
    flags_out: str | os.PathLike | None = None,
    on_bad_utf8: str = "replace",
) -> list[OverlapRow]:
    """Per test file: the share of its 8-grams in the filter and of its examples with any such 8-gram.

    Lines that are not UTF-8 are repaired by default, as `prepare` does (`on_bad_utf8`: error, replace, skip);
    each row says how many.

    With `flags_out`, also writes one JSON line per test example: file, index (order of `load_examples`),
    ngrams, found, fraction and overlap (any 8-gram found), for scoring on the clean subset later.
    """
    if not test_files:
        raise GPT2KitError("no test files given")
    Utf8Policy(on_bad_utf8)  # a bad policy fails before any file is read
    bloom = BloomFilter.open(filter_path)
    rows = []
    for path in test_files:
        utf8 = Utf8Policy(on_bad_utf8, hint="; on_bad_utf8 = replace or skip reads past it")
        row = check_examples(bloom, str(path), load_examples(path, unit, field, utf8))
        row.bad_utf8 = utf8.describe("line")
        rows.append(row)
    if flags_out is not None:
        atomic_write_jsonl(check_file_output(flags_out, OVERLAP_FLAGS), (flag for row in rows for flag in row.flags))
    return rows


SAMPLE_SEPARATOR = re.compile(r"^=+ SAMPLE \d+ =+$", re.M)  # as `gpt2kit sample --num-samples N` prints them
SAMPLE_FIELDS = ("text", "completion", "sample")
VERBATIM_WORDS = 25  # a run of words this long found verbatim counts as memorised


def load_samples(path: str | os.PathLike) -> list[str]:
    """Generated samples: JSON lines (field text, completion or sample), a text file of `gpt2kit sample` output
    split at its SAMPLE separators, or else the whole text file as one sample."""
    path = Path(path)
    if not path.is_file():
        raise GPT2KitError(f"{path}: no such samples file")
    if file_kind(path) == "jsonl":
        samples = []
        for number, record in iter_jsonl(path):
            name = next((f for f in SAMPLE_FIELDS if isinstance(record.get(f), str)), None)
            if name is None:
                raise GPT2KitError(f"{path}:{number}: no string field {' / '.join(SAMPLE_FIELDS)}")
            samples.append(record[name])
        return samples
    text = "".join(text_blocks(path))
    parts = SAMPLE_SEPARATOR.split(text) if SAMPLE_SEPARATOR.search(text) else [text]
    return [part.strip("\n") for part in parts if part.strip()]


def check_samples(
    filter_path: str | os.PathLike, sample_files: Sequence[str | os.PathLike], verbatim: int = VERBATIM_WORDS
) -> list[OverlapRow]:
    """Memorisation (the paper's section 4, Figure 5): per file of generated samples, the share of their 8-grams
    in the training set's filter, and how many samples repeat `verbatim` words or more of it word for word."""
    if not sample_files:
        raise GPT2KitError("no samples files given")
    if verbatim < NGRAM:
        raise GPT2KitError(f"verbatim run must be at least {NGRAM} words (one 8-gram), got {verbatim}")
    bloom = BloomFilter.open(filter_path)
    return [check_examples(bloom, str(path), load_samples(path), verbatim) for path in sample_files]


def format_samples_table(rows: Sequence[OverlapRow]) -> str:
    name_width = max([len("samples file")] + [len(Path(row.name).name) for row in rows])
    verbatim = rows[0].verbatim_words if rows else VERBATIM_WORDS
    head = f"{'samples file':<{name_width}}  {'samples':>7}  {'8-grams':>9}  {'% 8-grams':>9}  {'% any':>7}  "
    lines = [head + f"{f'% >={verbatim} words':>14}  {'longest run':>11}"]
    for row in rows:
        lines.append(
            f"{Path(row.name).name:<{name_width}}  {row.examples:>7}  {row.ngrams:>9}  {row.percent_ngrams:>8.2f}%  "
            f"{row.percent_examples:>6.2f}%  {row.percent_verbatim:>13.2f}%  {row.longest_verbatim_words:>5} words"
        )
    return "\n".join(lines)


def format_table(rows: Sequence[OverlapRow], bloom_header: dict | None = None) -> str:
    """A table like the paper's Table 6: percent of test 8-grams found, and of examples with any overlap."""
    name_width = max([len("test set")] + [len(Path(row.name).name) for row in rows])
    lines = [
        f"{'test set':<{name_width}}  {'examples':>8}  {'8-grams':>10}  {'found':>9}  {'% 8-grams':>9}  {'% examples':>10}",
    ]
    for row in rows:
        lines.append(
            f"{Path(row.name).name:<{name_width}}  {row.examples:>8}  {row.ngrams:>10}  {row.ngrams_found:>9}  "
            f"{row.percent_ngrams:>8.2f}%  {row.percent_examples:>9.2f}%"
        )
    lines += [f"{Path(row.name).name}: {row.bad_utf8}" for row in rows if row.bad_utf8]
    if bloom_header:
        lines.append(
            f"filter: {bloom_header.get('items_inserted', 0):,} 8-grams, m={bloom_header['m']:,} bits, "
            f"k={bloom_header['k']}, false-positive bound {bloom_header['fpr_bound']:.1e}"
        )
    return "\n".join(lines)
