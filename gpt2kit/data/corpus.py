"""The one corpus reader: which files a list of inputs names, what kind each is, and reading text files in blocks.

Every command that reads a corpus (`prepare`, `overlap build`, `demonstrations`, `tokenizer train`) finds its
files here, so they all accept the same inputs: files, directories (searched recursively, hidden entries skipped)
and glob patterns; plain text and JSON lines, compressed or not (`.gz .zst .bz2 .xz`, read by `io.reading`);
Parquet where the command can read it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from gpt2kit.errors import GPT2KitError
from gpt2kit.io import Utf8Policy, reading

COMPRESSIONS = ("", ".gz", ".zst", ".bz2", ".xz")
TEXT_SUFFIXES = tuple(s + c for s in (".txt", ".text", ".md", ".raw", ".tokens") for c in COMPRESSIONS)
JSONL_SUFFIXES = tuple(s + c for s in (".jsonl", ".ndjson") for c in COMPRESSIONS)
PARQUET_SUFFIXES = (".parquet",)
TEXT_AND_JSONL = ("text", "jsonl")
ALL_KINDS = ("text", "jsonl", "parquet")
_SUFFIXES = {"text": TEXT_SUFFIXES, "jsonl": JSONL_SUFFIXES, "parquet": PARQUET_SUFFIXES}
# Text files are read in blocks of whole lines of about this many bytes, so memory stays bounded on huge files.
TEXT_BLOCK_BYTES = 4 << 20


def file_kind(path: Path) -> str:
    """ "jsonl" or "parquet" by suffix; anything else (a file named directly) is read as text."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def _describe(kinds: Iterable[str]) -> str:
    names = {"text": "text (.txt, .md)", "jsonl": "JSON-lines (.jsonl)", "parquet": "Parquet (.parquet)"}
    return " or ".join(names[k] for k in kinds)


def corpus_files(inputs: Iterable[str | os.PathLike], kinds: tuple[str, ...] = ALL_KINDS) -> list[Path]:
    """The files `inputs` name, in order, each once: a file as it is, a directory's files of `kinds` (sorted by
    path), a glob pattern's matches (sorted). One line for an input that names nothing."""
    suffixes = tuple(s for kind in kinds for s in _SUFFIXES[kind])
    files: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.name.lower().endswith(suffixes)
            )
            if not found:
                raise GPT2KitError(f"{path}: no {_describe(kinds)} files in this directory, compressed or not")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(str(spec)):
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
            if not matches:
                raise GPT2KitError(f"{spec}: no files match this pattern")
            files.extend(matches)
        else:
            raise GPT2KitError(f"{spec}: no such file or directory")
    if not files:
        raise GPT2KitError("no corpus files given")
    unsupported = [p for p in files if file_kind(p) not in kinds]
    if unsupported:
        raise GPT2KitError(f"{unsupported[0]}: this command reads {_describe(kinds)} files")
    return list(dict.fromkeys(files))


def largest_first(files: list[Path]) -> list[Path]:
    """Files by size, largest first: worker pools then finish together."""
    return sorted(files, key=lambda p: (-p.stat().st_size, str(p)))


def text_blocks(path: Path, utf8: Utf8Policy | None = None) -> Iterator[str]:
    """A text file as blocks of whole lines of about TEXT_BLOCK_BYTES (no word is split between blocks).

    A line that is not UTF-8 stops with one line naming it, unless `utf8` repairs or skips it.
    """
    line_number = 0
    buffer: list[bytes] = []
    size = 0
    utf8 = utf8 or Utf8Policy()
    with reading(path) as handle:
        for raw in handle:
            buffer.append(raw)
            size += len(raw)
            if size >= TEXT_BLOCK_BYTES:
                yield _decode_block(buffer, path, line_number, utf8)
                line_number += len(buffer)
                buffer, size = [], 0
    if buffer:
        yield _decode_block(buffer, path, line_number, utf8)


def _decode_block(lines: list[bytes], path: Path, first_line: int, utf8: Utf8Policy) -> str:
    try:
        return b"".join(lines).decode("utf-8")
    except UnicodeDecodeError:  # rare: decode line by line to name (or repair, or skip) the bad ones
        texts = (utf8.decode(raw, f"{path}:{number}") for number, raw in enumerate(lines, first_line + 1))
        return "".join(text for text in texts if text is not None)
