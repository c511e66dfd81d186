"""Demonstration-finder scan speed: `gpt2kit demonstrations` against the same regular expressions run the plain
way (`re.finditer` of each over the whole text), on the shared Gutenberg books, in one run.

Prints MB/s per core for both, the ratio, and what was found. The goal is at least 20 MB/s per core.
Usage: python bench/demonstrations.py [--mb 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402


def plain_scan(texts: list[str]) -> int:
    """Every cue's regex over every whole text: what the finder would cost without its literal anchors."""
    from gpt2kit.data import demonstrations as d

    cues = d._TRANSLATION_CUES + [d._PHRASE_CUE] + d._QA_CUES + d._SUMMARY_CUES + d._CLOZE_CUES + [d._SUM_CUE]
    return sum(1 for text in texts for _, regex, _ in cues for _ in regex.finditer(text))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=40.0, help="megabytes of books (0: all of them)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from gpt2kit.data.demonstrations import find_demonstrations, format_table

    books, total = [], 0
    for book in sorted((SHARED / "train" / "gutenberg").glob("*.txt")):
        books.append(book)
        total += book.stat().st_size
        if args.mb and total >= args.mb * 1e6:
            break
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "books"
        corpus.mkdir()
        for book in books:
            (corpus / book.name).symlink_to(book)
        one, kinds = find_demonstrations([corpus], None, workers=1)
        many, _ = find_demonstrations([corpus], None, workers=args.workers)
    texts = [book.read_text(encoding="utf-8") for book in books]
    start = time.perf_counter()
    plain_matches = plain_scan(texts)
    plain_seconds = time.perf_counter() - start
    mb = one.bytes / 1e6
    print(f"{len(books)} Gutenberg books, {mb:.1f} MB")
    print(f"  gpt2kit demonstrations, 1 worker   {mb / one.seconds:7.1f} MB/s per core")
    print(f"  gpt2kit demonstrations, {args.workers} workers  {mb / many.seconds:7.1f} MB/s")
    print(f"  plain re.finditer of the same cues {mb / plain_seconds:7.1f} MB/s per core ({plain_matches} raw matches)")
    print(f"  ratio gpt2kit / plain: {plain_seconds / one.seconds:.1f}x; goal 20 MB/s per core: "
          f"{'met' if mb / one.seconds >= 20 else 'NOT met'}")  # fmt: skip
    print(format_table(many, kinds))


if __name__ == "__main__":
    main()
