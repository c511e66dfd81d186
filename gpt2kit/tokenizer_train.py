"""Training a GPT-2-style byte-level BPE with HF `tokenizers`: its merge ranks, from a corpus or from strings.

The corpus is read by the one corpus reader (`data.corpus`): files, directories and glob patterns; text files line by
line and JSON lines by their text field, compressed or not. `tokenizer.train_tokenizer` makes the `Tokenizer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

from gpt2kit.data.corpus import TEXT_AND_JSONL, corpus_files, file_kind
from gpt2kit.io import STRICT_UTF8, jsonl_texts, reading
from gpt2kit.tokenizer_bytes import TokenizerError, bytes_to_unicode, str_to_token


def corpus_texts(inputs: Iterable[str | os.PathLike]) -> Iterator[str]:
    """The training texts of a corpus: each line of its text files, the text field of each JSON line."""
    for path in corpus_files(inputs, TEXT_AND_JSONL):
        if file_kind(path) == "jsonl":
            yield from jsonl_texts(path)
            continue
        with reading(path) as handle:
            for number, raw in enumerate(handle, 1):
                yield STRICT_UTF8.decode(raw, f"{path}:{number}")


def train_ranks(
    texts: Iterable[str | os.PathLike] | Iterator[str],
    vocab_size: int,
    *,
    files: bool | None = None,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> dict[bytes, int]:
    """The merge ranks of a byte-level BPE of `vocab_size` tokens with `<|endoftext|>` (see `train_tokenizer`)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise TokenizerError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    if files is None:
        files = isinstance(texts, (list, tuple)) and all(isinstance(t, (str, os.PathLike)) for t in texts)
    lines = corpus_texts(texts) if files else iter(texts)
    seen_text = False

    def nonempty(stream: Iterator[str]) -> Iterator[str]:
        nonlocal seen_text
        for line in stream:
            if line.strip():
                seen_text = True
            yield line

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = byte_level
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(nonempty(lines), trainer=trainer)
    if not seen_text:
        raise TokenizerError("cannot train a tokenizer on an empty corpus")
    return _ranks_of_hf_bpe(json.loads(hf.to_str())["model"])


def _ranks_of_hf_bpe(model: dict) -> dict[bytes, int]:
    """A trained HF BPE model's ranks: bytes in GPT-2's order, then merges in training order."""
    ranks = {bytes([b]): rank for rank, b in enumerate(bytes_to_unicode())}
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        ranks[str_to_token(left) + str_to_token(right)] = len(ranks)
    return ranks
