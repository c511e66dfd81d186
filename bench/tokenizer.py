"""Encode throughput: gpt2kit vs raw tiktoken vs transformers' GPT2TokenizerFast, in one run.

Also the same vocabulary in HF `tokenizers`' id layout (<|endoftext|> at 0, the bytes at 1..256), which
gpt2kit encodes in tiktoken's rank space and maps to ids on the way out.

Also times training a 32k vocabulary on 50 MB. Usage: python bench/tokenizer.py [--mb 12] [--train-mb 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_tiktoken, best_time, gutenberg_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=12)
    parser.add_argument("--train-mb", type=float, default=50)
    parser.add_argument("--train-vocab", type=int, default=32768)
    args = parser.parse_args()

    import transformers

    from gpt2kit.tokenizer import ENDOFTEXT, Tokenizer, train_tokenizer

    lines = gutenberg_text(int(args.mb * 1e6))
    megabytes = sum(len(line.encode()) for line in lines) / 1e6
    # Documents of ~100 lines each, as a trainer would feed them.
    docs = ["".join(lines[i : i + 100]) for i in range(0, len(lines), 100)]

    ours = Tokenizer.gpt2()
    remapped = Tokenizer(
        ours.mergeable_ranks,
        {ENDOFTEXT: 0},
        "gpt2-remapped",
        token_ids={token: rank + 1 for token, rank in ours.mergeable_ranks.items()},
    )
    raw = bare_tiktoken()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save(tmp)
        hf = transformers.GPT2TokenizerFast.from_pretrained(tmp)
    threads = os.cpu_count() or 1

    results = {}
    for name, func in (
        ("gpt2kit encode_batch", lambda: ours.encode_batch(docs)),
        ("tiktoken encode_ordinary_batch", lambda: raw.encode_ordinary_batch(docs, num_threads=threads)),
        ("gpt2kit encode_batch (remapped ids)", lambda: remapped.encode_batch(docs)),
        ("transformers GPT2TokenizerFast", lambda: hf(docs)["input_ids"]),
        ("gpt2kit encode (1 thread)", lambda: [ours.encode(d) for d in docs]),
        ("tiktoken encode_ordinary (1 thread)", lambda: [raw.encode_ordinary(d) for d in docs]),
    ):
        results[name] = megabytes / best_time(func, repeats=2 if "transformers" in name else 3)
    n_tokens = sum(map(len, ours.encode_batch(docs)))
    assert [[i + 1 for i in ids] for ids in ours.encode_batch(docs[:50])] == remapped.encode_batch(docs[:50])
    print(f"encode {megabytes:.1f} MB of Gutenberg ({n_tokens:,} tokens), {threads} threads")
    for name, rate in results.items():
        print(f"  {name:38s} {rate:8.2f} MB/s")
    print(
        f"ratio gpt2kit / tiktoken (batch):       {results['gpt2kit encode_batch'] / results['tiktoken encode_ordinary_batch']:.2f}x"
    )
    print(
        f"ratio gpt2kit / tiktoken (1 thread):    {results['gpt2kit encode (1 thread)'] / results['tiktoken encode_ordinary (1 thread)']:.2f}x"
    )
    print(
        f"ratio remapped / tiktoken (batch):      {results['gpt2kit encode_batch (remapped ids)'] / results['tiktoken encode_ordinary_batch']:.2f}x"
    )
    print(
        f"ratio gpt2kit / GPT2TokenizerFast:      {results['gpt2kit encode_batch'] / results['transformers GPT2TokenizerFast']:.2f}x"
    )

    if args.train_mb > 0:
        train_lines = gutenberg_text(int(args.train_mb * 1e6))
        start = time.perf_counter()
        trained = train_tokenizer(iter(train_lines), args.train_vocab)
        elapsed = time.perf_counter() - start
        print(f"train {trained.vocab_size} tokens on {args.train_mb:.0f} MB: {elapsed:.1f} s")


if __name__ == "__main__":
    main()
