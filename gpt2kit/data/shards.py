"""Token shards on disk: a small versioned header, then the token ids, plus a manifest.

A shard is `HEADER` (32 bytes, little-endian: magic, format version, bytes per
token, token count, document count) followed by the token ids as uint16, or
uint32 when the vocabulary has more than 65536 entries. Every document ends
with `<|endoftext|>`. `manifest.json` beside the shards names the tokenizer
(sha256), every shard with its counts and sha256, and the train/val split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gpt2kit.errors import GPT2KitError, short_repr
from gpt2kit.io import atomic_write_text, file_sha256, read_json

MAGIC = b"GPT2KTOK"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, itemsize, num_tokens, num_docs
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"  # the tokenizer a prepared directory was made with
MANIFEST_FORMAT = "gpt2kit-shards"
SPLITS = ("train", "val")


class ShardError(GPT2KitError):
    """A shard or manifest is missing, truncated, corrupt or from another tokenizer."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535; larger vocabularies need uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class ShardHeader:
    version: int
    dtype: np.dtype
    num_tokens: int
    num_docs: int


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Parse and check a shard's header, including that the file holds every token it announces."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER.size)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise ShardError(f"{path}: shard is missing") from None
    except OSError as err:  # a directory, no permission, ...
        raise ShardError(f"{path}: cannot read the shard ({err.strerror or err})") from None
    if len(raw) < HEADER.size:
        raise ShardError(f"{path}: truncated shard ({size} bytes, shorter than the {HEADER.size}-byte header)")
    magic, version, itemsize, num_tokens, num_docs = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a gpt2kit token shard (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise ShardError(f"{path}: shard format version {version}, this gpt2kit reads version {FORMAT_VERSION}")
    if itemsize not in (2, 4):
        raise ShardError(f"{path}: unsupported token size of {itemsize} bytes")
    expected = HEADER.size + num_tokens * itemsize
    if size != expected:
        raise ShardError(
            f"{path}: truncated or padded shard: header says {num_tokens} tokens ({expected} bytes), file has {size}"
        )
    dtype = np.dtype(np.uint16) if itemsize == 2 else np.dtype(np.uint32)
    return ShardHeader(version, dtype, num_tokens, num_docs)


SCAN_CHUNK = 1 << 24  # bytes read at a time when verifying a shard


def scan_shard(path: str | os.PathLike, dtype: np.dtype) -> tuple[str, int]:
    """The shard file's sha256 and its largest token id (-1 when empty), in one read of the file."""
    digest = hashlib.sha256()
    largest = -1
    with open(path, "rb") as handle:
        head = handle.read(HEADER.size)
        digest.update(head)
        while chunk := handle.read(SCAN_CHUNK):  # a multiple of 4 bytes: never splits a token
            digest.update(chunk)
            largest = max(largest, int(np.frombuffer(chunk, dtype=dtype).max()))
    return digest.hexdigest(), largest


def open_tokens(path: str | os.PathLike) -> np.ndarray:
    """The shard's tokens as a read-only memory map (an empty array for an empty shard)."""
    header = read_header(path)
    if header.num_tokens == 0:
        return np.empty(0, dtype=header.dtype)
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER.size, shape=(header.num_tokens,))


class ShardWriter:
    """Stream tokens into a shard: a temporary file that becomes `path` only on `close()`.

    Memory stays bounded by the arrays passed to `append`; a crash leaves no
    partial shard under the final name.
    """

    def __init__(self, path: str | os.PathLike, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.num_tokens = 0
        self.num_docs = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._handle = os.fdopen(fd, "wb")
        self._handle.write(b"\0" * HEADER.size)

    def append(self, tokens: np.ndarray, num_docs: int) -> None:
        self._handle.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self.num_tokens += len(tokens)
        self.num_docs += num_docs

    def close(self) -> str:
        """Write the header, publish the shard atomically and return its sha256."""
        self._handle.seek(0)
        self._handle.write(HEADER.pack(MAGIC, FORMAT_VERSION, self.dtype.itemsize, self.num_tokens, self.num_docs))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        os.fchmod(self._handle.fileno(), 0o644)  # mkstemp creates 0600; shards are ordinary data files
        self._handle.close()
        os.replace(self._tmp, self.path)
        return file_sha256(self.path)

    def abort(self) -> None:
        self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def write_shard(path: str | os.PathLike, tokens: np.ndarray, num_docs: int, dtype: np.dtype) -> str:
    """Write a whole shard at once; returns its sha256."""
    writer = ShardWriter(path, dtype)
    try:
        writer.append(tokens, num_docs)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


# -- manifest ---------------------------------------------------------------------------


@dataclass
class ShardInfo:
    file: str
    split: str
    group: int
    num_docs: int
    num_tokens: int
    num_bytes: int  # UTF-8 bytes of the documents' text, for bits per byte
    sha256: str


@dataclass
class GroupInfo:
    """Consecutive input batches whose documents went into one train shard and one val shard."""

    index: int
    first_batch: int
    end_batch: int
    text_sha256: str


@dataclass
class SplitStats:
    num_docs: int = 0
    num_tokens: int = 0
    num_bytes: int = 0

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / self.num_tokens if self.num_tokens else 0.0


# What each manifest record holds, by field: every one is required, and no other is allowed.
TOKENIZER_FIELDS = {"name": str, "sha256": str, "vocab_size": int, "eot_token": int}
SHARD_FIELDS = {"file": str, "split": str, "group": int, "num_docs": int, "num_tokens": int, "num_bytes": int,
                "sha256": str}  # fmt: skip
GROUP_FIELDS = {"index": int, "first_batch": int, "end_batch": int, "text_sha256": str}
_WANTED = {str: "a string", int: "a non-negative integer", dict: "an object", list: "a list", bool: "true or false"}


def _typed(value, kind: type, where: str, field: str):
    """`value` when it is a `kind` (int: a non-negative one, not a bool), else one line naming `field`."""
    ok = isinstance(value, kind) and (kind is not int or (not isinstance(value, bool) and value >= 0))
    if not ok:
        raise ShardError(f"{where}: malformed manifest ({field} must be {_WANTED[kind]}, got {short_repr(value)})")
    return value


def _record(value, kinds: dict[str, type], where: str, field: str) -> dict:
    value = _typed(value, dict, where, field)
    unknown = value.keys() - kinds.keys()
    if unknown:
        raise ShardError(f"{where}: malformed manifest ({field} has an unknown key {short_repr(min(unknown))})")
    for name, kind in kinds.items():
        _typed(value.get(name), kind, where, f"{field}.{name}")
    return value


def _shard(value, where: str, field: str) -> ShardInfo:
    value = _record(value, SHARD_FIELDS, where, field)
    file = Path(value["file"])
    if value["file"] in ("", ".") or file.is_absolute() or ".." in file.parts:  # a shard is a file beside the manifest
        raise ShardError(f"{where}: malformed manifest ({field}.file must name a file in the data directory)")
    if value["split"] not in SPLITS:
        raise ShardError(f"{where}: malformed manifest ({field}.split must be one of {', '.join(SPLITS)})")
    return ShardInfo(**value)


def _dtype_name(value, where: str) -> str:
    if value not in ("uint16", "uint32"):
        raise ShardError(f"{where}: malformed manifest (dtype must be uint16 or uint32, got {short_repr(value)})")
    return value


@dataclass
class Manifest:
    tokenizer: dict  # name, sha256, vocab_size, eot_token
    dtype: str
    settings: dict  # everything that decides the shards' content, to detect a changed re-run
    shards: list[ShardInfo] = field(default_factory=list)
    groups: list[GroupInfo] = field(default_factory=list)
    complete: bool = False
    input_stats: dict = field(default_factory=dict)  # documents read, bad UTF-8 and empty-document counts

    def split_stats(self, split: str) -> SplitStats:
        stats = SplitStats()
        for shard in self.shards:
            if shard.split == split:
                stats.num_docs += shard.num_docs
                stats.num_tokens += shard.num_tokens
                stats.num_bytes += shard.num_bytes
        return stats

    def shard_paths(self, directory: str | os.PathLike, split: str) -> list[Path]:
        return [Path(directory) / s.file for s in self.shards if s.split == split]

    def to_json(self) -> str:
        values = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION, **asdict(self)}
        values["splits"] = {}
        for split in SPLITS:
            stats = self.split_stats(split)
            values["splits"][split] = {**asdict(stats), "bytes_per_token": stats.bytes_per_token}
        return json.dumps(values, indent=2)

    def save(self, directory: str | os.PathLike) -> None:
        atomic_write_text(Path(directory) / MANIFEST_NAME, self.to_json() + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.exists():
            raise ShardError(f"{path}: missing (prepare the data with `gpt2kit prepare`)")
        values = read_json(path, ShardError)
        if not isinstance(values, dict) or values.get("format") != MANIFEST_FORMAT:
            raise ShardError(f"{path}: not a gpt2kit shard manifest")
        if values.get("version") != FORMAT_VERSION:
            raise ShardError(f"{path}: manifest version {values.get('version')}, expected {FORMAT_VERSION}")
        where = str(path)
        return cls(
            tokenizer=_record(values.get("tokenizer"), TOKENIZER_FIELDS, where, "tokenizer"),
            dtype=_dtype_name(values.get("dtype"), where),
            settings=_typed(values.get("settings"), dict, where, "settings"),
            shards=[
                _shard(s, where, f"shards[{i}]")
                for i, s in enumerate(_typed(values.get("shards"), list, where, "shards"))
            ],
            groups=[
                GroupInfo(**_record(g, GROUP_FIELDS, where, f"groups[{i}]"))
                for i, g in enumerate(_typed(values.get("groups"), list, where, "groups"))
            ],
            complete=_typed(values.get("complete"), bool, where, "complete"),
            input_stats=_typed(values.get("input_stats", {}), dict, where, "input_stats"),
        )

    def verify(self, directory: str | os.PathLike, split: str | None = None, checksums: bool = True) -> None:
        """Check the listed shards (of `split`, or all): present, headers as the manifest says, and with
        `checksums` their sha256 and that every token id is inside the tokenizer's vocabulary.

        Checksums read each shard once (about 1 GB/s here): small beside any training run, and what
        catches a flipped byte or a shard written with another tokenizer before training reads it."""
        vocab_size = self.tokenizer.get("vocab_size")
        for shard in self.shards:
            if split is not None and shard.split != split:
                continue
            path = Path(directory) / shard.file
            header = read_header(path)
            if header.num_tokens != shard.num_tokens or header.num_docs != shard.num_docs:
                raise ShardError(
                    f"{path}: holds {header.num_tokens} tokens / {header.num_docs} documents, "
                    f"the manifest says {shard.num_tokens} / {shard.num_docs}"
                )
            if header.dtype != np.dtype(self.dtype):
                raise ShardError(f"{path}: tokens are {header.dtype}, the manifest says {self.dtype}")
            if not checksums:
                continue
            sha256, largest = scan_shard(path, header.dtype)
            if sha256 != shard.sha256:
                raise ShardError(f"{path}: sha256 differs from the manifest's (the shard is corrupt or was changed)")
            if isinstance(vocab_size, int) and largest >= vocab_size:
                raise ShardError(f"{path}: token id {largest} is outside the tokenizer's vocabulary of {vocab_size}")


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """The manifest of a finished `prepare` run."""
    manifest = Manifest.load(directory)
    if not manifest.complete:
        raise ShardError(f"{directory}: preparation did not finish (re-run `gpt2kit prepare` to complete it)")
    return manifest
