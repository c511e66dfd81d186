"""`gpt2kit prepare` throughput with 1 and with 2 worker processes, on the Gutenberg books, in one run.

Prints tokens/s for each worker count and the speed-up (the target is >= 1.7x
for 2 workers on 2 cores). Each run writes to a fresh temporary directory.

Usage: python bench/prepare.py [--mb 60] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=60, help="megabytes of books to tokenize (0: all)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()

    from gpt2kit.data.prepare import prepare
    from gpt2kit.tokenizer import Tokenizer

    books = sorted((SHARED / "train" / "gutenberg").glob("*.txt"))
    chosen, total = [], 0
    for book in books:
        if args.mb and total >= args.mb * 1e6:
            break
        chosen.append(str(book))
        total += book.stat().st_size
    tokenizer = Tokenizer.gpt2()
    rates = {}
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as out:
            result = prepare(chosen, tokenizer, Path(out) / "shards", workers=workers, progress=False)
        rates[workers] = result.tokens_per_s
        print(
            f"{workers} worker(s): {result.tokens_written:,} tokens from {total / 1e6:.0f} MB in "
            f"{result.elapsed_s:.1f} s = {result.tokens_per_s:,.0f} tokens/s"
        )
    base = rates.get(1)
    for workers, rate in rates.items():
        if base and workers != 1:
            print(f"ratio {workers} workers / 1 worker: {rate / base:.2f}x")


if __name__ == "__main__":
    main()
