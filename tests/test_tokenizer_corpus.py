"""Tokenizer training reads its corpus through the one corpus reader (issue 29): compressed text, JSON lines by their
text field, directories and glob patterns, as `prepare` does."""

import gzip
import json

import pytest
from textgen import generated_text

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizer import train_tokenizer

zstandard = pytest.importorskip("zstandard")


@pytest.fixture(scope="module")
def corpus_lines():
    return generated_text(2000, seed=3).splitlines(keepends=True)


@pytest.fixture(scope="module")
def plain_ranks(tmp_path_factory, corpus_lines):
    path = tmp_path_factory.mktemp("plain") / "corpus.txt"
    path.write_text("".join(corpus_lines), encoding="utf-8")
    return train_tokenizer([path], vocab_size=400).mergeable_ranks


def write_gzip_text(path, lines):
    path.write_bytes(gzip.compress("".join(lines).encode()))
    return path


def write_zstd_jsonl(path, lines):
    """Each line a record, so the trainer sees the very strings the plain text's lines are."""
    records = "".join(json.dumps({"id": i, "text": line}) + "\n" for i, line in enumerate(lines))
    path.write_bytes(zstandard.ZstdCompressor().compress(records.encode()))
    return path


def test_compressed_text_and_jsonl_train_the_vocabulary_of_the_plain_text(tmp_path, corpus_lines, plain_ranks):
    gz = write_gzip_text(tmp_path / "corpus.txt.gz", corpus_lines)
    zst = write_zstd_jsonl(tmp_path / "corpus.jsonl.zst", corpus_lines)
    assert train_tokenizer([gz], vocab_size=400).mergeable_ranks == plain_ranks
    assert train_tokenizer([zst], vocab_size=400).mergeable_ranks == plain_ranks


def test_a_directory_or_pattern_of_mixed_files_trains_as_their_text_in_order(tmp_path, corpus_lines, plain_ranks):
    half = len(corpus_lines) // 2
    write_gzip_text(tmp_path / "a.txt.gz", corpus_lines[:half])
    write_zstd_jsonl(tmp_path / "b.jsonl.zst", corpus_lines[half:])
    (tmp_path / ".hidden.txt").write_text("zzzz qqqq " * 1000, encoding="utf-8")  # skipped, as prepare skips it
    (tmp_path / "notes.bin").write_bytes(b"\xff\xfe" * 100)  # not corpus: skipped by suffix
    assert train_tokenizer([tmp_path], vocab_size=400).mergeable_ranks == plain_ranks
    assert train_tokenizer([str(tmp_path / "[ab].*")], vocab_size=400).mergeable_ranks == plain_ranks


def test_a_jsonl_record_without_text_is_one_line_naming_it(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(GPT2KitError, match=r"docs.jsonl:2: no string field 'text'"):
        train_tokenizer([path], vocab_size=300)
