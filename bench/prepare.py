"""`gpt2kit prepare` throughput with 1 and with 2 worker processes, on the Gutenberg books, in one run.

Prints tokens/s for each worker count, the speed-up of 2 workers over 1, and the peer: bare tiktoken
(`encode_ordinary_batch` on the same text, already in memory, with as many threads as workers). prepare does
more than tokenize (it reads and checks the files, hashes the text, splits off validation documents and writes
checksummed shards), so the peer ratio says how much of tiktoken's speed survives the whole job.
Each run writes to a fresh temporary directory.

Usage: python bench/prepare.py [--mb 60] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, bare_tiktoken  # noqa: E402


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
    texts = [Path(book).read_text(encoding="utf-8") for book in chosen]
    encoding = bare_tiktoken()
    rates = {}
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as out:
            result = prepare(chosen, tokenizer, Path(out) / "shards", workers=workers, progress=False)
        start = time.perf_counter()
        peer_tokens = sum(len(ids) + 1 for ids in encoding.encode_ordinary_batch(texts, num_threads=workers))
        peer_rate = peer_tokens / (time.perf_counter() - start)
        rates[workers] = result.tokens_per_s
        print(
            f"{workers} worker(s): {result.tokens_written:,} tokens from {total / 1e6:.0f} MB in "
            f"{result.elapsed_s:.1f} s = {result.tokens_per_s:,.0f} tokens/s "
            f"({total / 1e6 / result.elapsed_s:.1f} MB/s); bare tiktoken with {workers} thread(s): "
            f"{peer_rate:,.0f} tokens/s, ratio {result.tokens_per_s / peer_rate:.2f}x"
        )
    base = rates.get(1)
    for workers, rate in rates.items():
        if base and workers != 1:
            print(f"ratio {workers} workers / 1 worker: {rate / base:.2f}x")


if __name__ == "__main__":
    main()
