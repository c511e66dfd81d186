"""Shared helpers for the benchmarks: where the shared data lives, timing, MFU."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

SHARED = Path(os.environ.get("GPT2KIT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
os.environ.setdefault("GPT2KIT_GPT2_VOCAB", str(SHARED / "gpt2-vocab" / "gpt2.tiktoken"))


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (what C libraries print) for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def bare_tiktoken():
    """tiktoken's own Encoding of the official GPT-2 vocabulary, built without gpt2kit: the encoding peer."""
    import base64

    import tiktoken

    from gpt2kit.tokenizer import ENDOFTEXT, GPT2_PATTERN

    ranks = {}
    with open(SHARED / "gpt2-vocab" / "gpt2.tiktoken", "rb") as vocab:
        for line in vocab:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256})


def gutenberg_text(n_bytes: int) -> list[str]:
    """Whole lines of Gutenberg books, about `n_bytes` of UTF-8 in all."""
    lines: list[str] = []
    total = 0
    for book in sorted((SHARED / "train" / "gutenberg").glob("*.txt")):
        for line in book.read_text(encoding="utf-8").splitlines(keepends=True):
            lines.append(line)
            total += len(line.encode())
            if total >= n_bytes:
                return lines
    return lines


def best_time(func: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best
