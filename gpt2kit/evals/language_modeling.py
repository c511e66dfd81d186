"""Corpus language modelling: WikiText-2/103, PTB, 1BW (word level), enwik8 (bytes), text8 (characters).

The whole test file is scored as one stream (after `<|endoftext|>`), in
non-overlapping windows of the model's context by default, or sliding by
`--stride` and scoring only the new tokens. The loss is summed in float64 and
normalised three ways: per BPE token (`loss`, `ppl`), per word of the original
tokenized file (`word_ppl`: exp(total NLL / words), the paper's unit for word
benchmarks, so detokenization cannot change the denominator), and per byte or
character (`bpb`, `bpc`).

Word counts follow the datasets' published counts: whitespace tokens plus one
end-of-line token per line (WikiText-2 valid: 213,886 + 3,760 = 217,646; PTB
valid: 70,390 + 3,370 = 73,760).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpt2kit.evals.data import EvalDataError, HFDataset, read_text
from gpt2kit.evals.detokenize import LM1B, PTB, WIKITEXT, Detokenizer
from gpt2kit.evals.scoring import score_stream
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec
from gpt2kit.windows import rolling_windows

# enwik8 and text8 are 100M-character files; the standard split holds out the last 5M as test.
CHARACTER_TEST_SIZE = 5_000_000
TEXT8_UNIT = 1000  # text8 has no line breaks; --limit counts units of about this many characters


@dataclass(frozen=True)
class Corpus:
    lines: list[str]  # the tokenized lines as in the file; `--limit` counts these


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it does not start another
    return lines


def count_words(lines: list[str]) -> int:
    """The dataset's own token count: whitespace tokens plus one end-of-line (<eos>) per line."""
    return sum(len(line.split()) for line in lines) + len(lines)


def load_word_corpus(ctx: TaskContext, text_key: str) -> Corpus:
    if ctx.data.rows is not None:
        # HF rows are lines; WikiText keeps each line's newline in the text, PTB does not.
        text = "".join(row[text_key] if row[text_key].endswith("\n") else row[text_key] + "\n" for row in ctx.data.rows)
    else:
        text = read_text(ctx.data.path)
    lines = _lines(text)
    if not any(line.strip() for line in lines):
        raise EvalDataError(f"{ctx.data.describe()}: the corpus is empty")
    return Corpus(lines)


def _character_slice(ctx: TaskContext) -> tuple[str, int]:
    """The test text of enwik8/text8: the whole file if it is the 5M test slice already, else its last 5M."""
    raw = ctx.data.path.read_bytes()
    dropped = 0
    if len(raw) > CHARACTER_TEST_SIZE:
        raw = raw[-CHARACTER_TEST_SIZE:]
        # The cut may fall inside a multi-byte character; start at the next whole one.
        while raw and 0x80 <= raw[0] < 0xC0:
            raw, dropped = raw[1:], dropped + 1
    return raw.decode("utf-8", errors="replace"), dropped


def _text8_units(text: str) -> list[str]:
    units, start = [], 0
    while start < len(text):
        end = text.find(" ", start + TEXT8_UNIT)
        end = len(text) if end < 0 else end + 1
        units.append(text[start:end])
        start = end
    return units


def run_corpus(ctx: TaskContext, detokenizer: Detokenizer | None, unit: str, text_key: str = "text") -> TaskOutput:
    """Score a corpus; `unit` is "word" (word_ppl + bpb), "byte" (bpb) or "char" (bpc)."""
    note = ""
    if unit == "word":
        corpus = load_word_corpus(ctx, text_key)
        units = ctx.limited(corpus.lines)
        detok = detokenizer if detokenizer is not None and ctx.options.detokenize_for(ctx.name) else None
        text = "".join((detok.detokenize_line(line) if detok else line) + "\n" for line in units)
        words = count_words(units)
    else:
        full, dropped = _character_slice(ctx)
        if not full:
            raise EvalDataError(f"{ctx.data.describe()}: the corpus is empty")
        units = ctx.limited(_text8_units(full) if unit == "char" else full.splitlines(keepends=True))
        text = "".join(units)
        words = 0
        if dropped:
            note = f"; {dropped} bytes of a character cut by the 5M boundary skipped"
    tokens = [ctx.tokenizer.eot_token] + ctx.encode(text)
    windows = score_stream(ctx.scorer, tokens, ctx.options.stride)
    total = -math.fsum(lp for window in windows for lp in window)
    n_tokens = len(tokens) - 1
    n_bytes = len(text.encode("utf-8"))
    metrics = {"loss": total / n_tokens, "ppl": math.exp(total / n_tokens)}
    counts = {"tokens": n_tokens, "bytes": n_bytes, "windows": len(windows), "lines": len(units)}
    if unit == "word":
        metrics["word_ppl"] = math.exp(total / words)
        metrics["bpb"] = total / math.log(2) / n_bytes
        counts["words"] = words
    elif unit == "byte":
        metrics["bpb"] = total / math.log(2) / n_bytes
    else:
        metrics["bpc"] = total / math.log(2) / len(text)
        counts["characters"] = len(text)
    length = ctx.context_length
    stride = ctx.options.stride or length
    layout = "non-overlapping" if stride == length else f"overlapping, scoring the last {stride} tokens of each"
    detok_note = ""
    if unit == "word":
        detok_note = f"; {detokenizer.name} detokenizer {'on' if detok else 'off'}" if detokenizer else ""
        denominators = f"word_ppl = exp(NLL / {words} words incl. one <eos> per line); bpb over {n_bytes} UTF-8 bytes"
    elif unit == "byte":
        denominators = f"bpb = NLL / ln 2 / {n_bytes} bytes (last 5M bytes of the file{note})"
    else:
        denominators = f"bpc = NLL / ln 2 / {len(text)} characters (last 5M characters of the file)"
    protocol = (
        f"corpus log-likelihood as one stream after <|endoftext|>, windows of {length} tokens, stride {stride} "
        f"({layout}){detok_note}; {denominators}"
    )
    samples = []
    position = 1
    for k, (window, logprobs) in enumerate(zip(rolling_windows(len(tokens), length, stride), windows, strict=True)):
        nll = -math.fsum(logprobs)
        samples.append(
            {"window": k, "first_token": position, "input_start": window.start, "scored": len(logprobs), "nll": nll}
        )
        position += len(logprobs)
    return TaskOutput(metrics=metrics, n=len(units), protocol=protocol, samples=samples, counts=counts)


def _word_task(detokenizer: Detokenizer, text_key: str = "text"):
    return lambda ctx: run_corpus(ctx, detokenizer, "word", text_key)


WORD_METRICS = ("word_ppl", "bpb", "loss", "ppl")
WORD_FORMAT = "the tokenized text file, one line per line of the corpus"


def _corpus_task(name: str, metrics: tuple, column: tuple, **fields) -> TaskSpec:
    """A language-modelling task: one column (metric, label, kind, the paper's scores by size)."""
    return TaskSpec(name=name, metrics=metrics, family="language modelling", columns=(Column(*column),), **fields)


TASKS = (
    _corpus_task(
        name="wikitext2",
        metrics=WORD_METRICS,
        column=("word_ppl", "WikiText2 (PPL)", "ppl", {"117M": 29.41, "345M": 22.76, "762M": 19.93, "1542M": 18.34}),
        data_files=(
            "wiki.test.tokens",
            "wiki.test.raw",
            "wikitext-2/wiki.test.tokens",
            "wikitext-2-raw/wiki.test.raw",
        ),
        file_format=f"wiki.test.tokens or wiki.test.raw: {WORD_FORMAT}",
        protocol="word-level perplexity over the detokenized stream, non-overlapping context windows",
        run=_word_task(WIKITEXT),
        hf_dataset=HFDataset("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
    ),
    _corpus_task(
        name="wikitext103",
        metrics=WORD_METRICS,
        column=("word_ppl", "WikiText103 (PPL)", "ppl", {"117M": 37.50, "345M": 26.37, "762M": 22.05, "1542M": 17.48}),
        data_files=("wikitext-103/wiki.test.tokens", "wikitext-103-raw/wiki.test.raw"),
        file_format=f"wikitext-103/wiki.test.tokens or wikitext-103-raw/wiki.test.raw: {WORD_FORMAT}",
        protocol="word-level perplexity over the detokenized stream, non-overlapping context windows",
        run=_word_task(WIKITEXT),
        hf_dataset=HFDataset("Salesforce/wikitext", "wikitext-103-raw-v1", "test"),
    ),
    _corpus_task(
        name="ptb",
        metrics=WORD_METRICS,
        column=("word_ppl", "PTB (PPL)", "ppl", {"117M": 65.85, "345M": 47.33, "762M": 40.31, "1542M": 35.76}),
        data_files=("ptb.test.txt", "ptb/ptb.test.txt"),
        file_format=f"ptb.test.txt (Mikolov's preprocessing): {WORD_FORMAT}",
        protocol="word-level perplexity over the detokenized stream (N -> 1, clitics joined), non-overlapping windows",
        run=_word_task(PTB, "sentence"),
        hf_dataset=HFDataset("ptb-text-only/ptb_text_only", None, "test"),
    ),
    _corpus_task(
        name="lm1b",
        metrics=WORD_METRICS,
        column=("word_ppl", "1BW (PPL)", "ppl", {"117M": 75.20, "345M": 55.72, "762M": 44.575, "1542M": 42.16}),
        data_files=(
            "news.en.heldout-00000-of-00050",
            "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050",
        ),
        file_format="news.en.heldout-00000-of-00050: one tokenized sentence per line",
        protocol="word-level perplexity over the detokenized sentences joined by newlines, non-overlapping windows",
        run=_word_task(LM1B),
    ),
    _corpus_task(
        name="enwik8",
        metrics=("bpb", "loss", "ppl"),
        column=("bpb", "enwik8 (BPB)", "bpb", {"117M": 1.16, "345M": 1.01, "762M": 0.97, "1542M": 0.93}),
        data_files=("enwik8", "enwik8.test"),
        file_format="enwik8 (the raw 100M-byte file; its last 5M bytes are the test set) or the 5M test slice",
        protocol="bits per byte over the raw bytes, non-overlapping context windows",
        run=lambda ctx: run_corpus(ctx, None, "byte"),
    ),
    _corpus_task(
        name="text8",
        metrics=("bpc", "loss", "ppl"),
        column=("bpc", "text8 (BPC)", "bpb", {"117M": 1.17, "345M": 1.06, "762M": 1.02, "1542M": 0.98}),
        data_files=("text8", "text8.test"),
        file_format="text8 (the 100M-character file; its last 5M characters are the test set) or the 5M test slice",
        protocol="bits per character, non-overlapping context windows",
        run=lambda ctx: run_corpus(ctx, None, "char"),
    ),
)
