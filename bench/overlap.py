"""8-gram Bloom filter build throughput on Gutenberg: 1 vs 2 processes, and a Python-set exact count as the peer.

The peer is what a reader would write first: normalise the same way, put every 8-gram (as a string) in a Python
set. It is exact but its memory grows with the corpus (reported too); the filter is a fixed bit array.

Usage: python bench/overlap.py [--mb 20] [--workers 1,2] [--peer-mb 10]   (--mb 0: the whole corpus)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402


def gutenberg_files(megabytes: float) -> list[Path]:
    """Whole Gutenberg books in name order, about `megabytes` in all (0: every book)."""
    files, total = [], 0
    for path in sorted((SHARED / "train" / "gutenberg").glob("*.txt")):
        if megabytes and total >= megabytes * 1e6:
            break
        files.append(path)
        total += path.stat().st_size
    return files


def python_set_peer(files: list[Path]) -> tuple[int, float, int]:
    """(8-grams, seconds, approximate bytes) for an exact set of 8-gram strings over `files`."""
    from gpt2kit.data.bloom import NGRAM, normalise_words

    start = time.perf_counter()
    grams: set[str] = set()
    count = 0
    for path in files:
        words = normalise_words(path.read_text(encoding="utf-8"))
        for i in range(len(words) - NGRAM + 1):
            grams.add(" ".join(words[i : i + NGRAM]))
        count += max(0, len(words) - NGRAM + 1)
    seconds = time.perf_counter() - start
    approx_bytes = sys.getsizeof(grams) + sum(sys.getsizeof(g) for g in grams)
    return count, seconds, approx_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=20, help="MB of Gutenberg to index (0: all of it)")
    parser.add_argument("--workers", default="1,2", help="comma-separated process counts")
    parser.add_argument("--peer-mb", type=float, default=10, help="MB for the Python-set peer (0: skip it)")
    args = parser.parse_args()

    from gpt2kit.data.bloom import BloomFilter, build_filter, text_fingerprints

    files = gutenberg_files(args.mb)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(f"Gutenberg: {len(files)} books, {megabytes:.1f} MB; {os.cpu_count()} CPUs")
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (int(w) for w in args.workers.split(",")):
            start = time.perf_counter()
            result = build_filter(files, Path(tmp) / f"f{workers}.bloom", workers=workers)
            total = time.perf_counter() - start
            rates[workers] = result.ngrams / total
            print(
                f"  {workers} process(es): {result.ngrams:,} 8-grams; count {result.count_seconds:.1f} s + insert "
                f"{result.seconds:.1f} s = {total:.1f} s -> {rates[workers]:,.0f} 8-grams/s overall, "
                f"{result.ngrams_per_second:,.0f}/s inserting; filter {result.params.nbytes / 1e6:.1f} MB, "
                f"k={result.params.k}"
            )
        if 1 in rates and 2 in rates:
            print(f"ratio 2 processes / 1 process: {rates[2] / rates[1]:.2f}x")

        if args.peer_mb:
            sample = gutenberg_files(args.peer_mb)
            count, seconds, approx = python_set_peer(sample)
            start = time.perf_counter()
            result = build_filter(sample, Path(tmp) / "sample.bloom", workers=1)
            bloom_seconds = time.perf_counter() - start
            bloom = BloomFilter.open(result.path)
            # no false negatives: every 8-gram of the sample is in its filter
            missing = sum(int((~bloom.contains(text_fingerprints(p.read_text()))).sum()) for p in sample)
            print(
                f"peer (Python set of 8-gram strings, exact) on {sum(p.stat().st_size for p in sample) / 1e6:.1f} MB: "
                f"{count / seconds:,.0f} 8-grams/s, ~{approx / 1e6:.0f} MB of memory"
            )
            print(
                f"  Bloom filter, 1 process, same sample: {count / bloom_seconds:,.0f} 8-grams/s, "
                f"{result.params.nbytes / 1e6:.1f} MB; 8-grams missing from it: {missing}"
            )
            print(f"ratio Bloom (1 process) / Python set: {seconds / bloom_seconds:.2f}x")


if __name__ == "__main__":
    main()
