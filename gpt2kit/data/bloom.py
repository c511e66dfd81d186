"""The 8-gram Bloom filter of the paper's overlap analysis (GPT-2, section 4): every 8-gram of the training text.

Text is normalised as in the paper: lower-cased alphanumeric words separated by single spaces. Each word is hashed
with xxh3-64; an 8-gram's 64-bit fingerprint is an order-sensitive combination of its word hashes passed through
the splitmix64 finaliser, all vectorised in numpy. The filter is a plain bit array split into stripes; an 8-gram
lives in one stripe (picked by its hash) and sets k bits there by double hashing. Stripes let several processes
insert at once: each stripe has its own lock, so no update is lost, and memory stays at one copy of the filter
plus a bounded chunk per worker.

Sizing: n is the number of 8-grams counted in the corpus (an upper bound on the distinct ones). Each stripe is sized
for a generous upper bound on its share of n, so the false-positive rate stays at or under the requested bound.

File format (version 1): MAGIC, a little-endian uint32 header length, a JSON header with at least
`version, n, k, m` (m in bits), zero padding to a 4096-byte boundary, then the m/8 bytes of the bit array.
The file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mmap
import multiprocessing
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gpt2kit.data.corpus import TEXT_AND_JSONL, corpus_files, file_kind, largest_first, text_blocks
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_open, jsonl_texts, remove_stale_temporaries
from gpt2kit.outputs import FileKind, claimed_file

log = logging.getLogger(__name__)

NGRAM = 8
FORMAT_VERSION = 1
MAGIC = b"GPT2KIT-NGRAM-BLOOM\n"
SHARDED_MAGIC = b"GPT2KIT-NGRAM-BLOOM-SHARDS\n"  # an index naming one filter file per hash range
BLOOM_FILTER = FileKind(
    "a gpt2kit 8-gram filter", lambda path: path.read_bytes()[: len(SHARDED_MAGIC)].startswith((MAGIC, SHARDED_MAGIC))
)
HASH_SCHEME = "xxh3_64(word) -> poly8 -> splitmix64; stripe by low 32 bits; double hashing, multiply-shift"
NORMALISATION = "lower-cased alphanumeric words ([^\\W_]+) joined by single spaces"
DATA_ALIGN = 4096
# Fingerprints are pooled and inserted this many at a time, grouped by stripe.
INSERT_CHUNK = 1 << 20
# At most this many fingerprints' k bit positions are held at once.
POSITIONS_CHUNK = 1 << 15
MAX_STRIPE_BITS = (1 << 32) - (1 << 20)

_WORD = re.compile(r"[^\W_]+")
_POLY = np.uint64(0x9E3779B97F4A7C15)
_SALT = np.uint64(0xD6E8FEB86659FD93)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


# -- normalisation and hashing ----------------------------------------------------------------------------------


def normalise_words(text: str) -> list[str]:
    """The paper's normalisation: lower-cased alphanumeric words."""
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Lower-cased alphanumeric words separated by single spaces."""
    return " ".join(normalise_words(text))


def word_hashes(words: Sequence[str]) -> np.ndarray:
    """xxh3-64 of each word's UTF-8 bytes, as uint64."""
    import xxhash

    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(w.encode()) for w in words), dtype=np.uint64, count=len(words))


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def ngram_fingerprints(hashes: np.ndarray, n: int = NGRAM) -> np.ndarray:
    """64-bit fingerprints of every run of `n` consecutive word hashes (uint64 arithmetic wraps by design)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            acc = acc * _POLY + hashes[offset : offset + count]
        return _splitmix64(acc)


def text_fingerprints(text: str, n: int = NGRAM) -> np.ndarray:
    """Fingerprints of all 8-grams of one document."""
    return ngram_fingerprints(word_hashes(normalise_words(text)), n)


# -- filter parameters ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BloomParams:
    """Shape of a striped Bloom filter. m = stripes * stripe_bits."""

    n: int
    k: int
    m: int
    stripes: int
    stripe_bits: int
    fpr: float
    fpr_bound: float

    @property
    def nbytes(self) -> int:
        return self.m // 8


def bloom_params(n: int, fpr: float = 1e-8) -> BloomParams:
    """Parameters for `n` items at a false-positive rate of at most `fpr`."""
    if n < 0:
        raise GPT2KitError(f"the n-gram count must be >= 0, got {n}")
    if not 0.0 < fpr < 1.0:
        raise GPT2KitError(f"the false-positive rate must be in (0, 1), got {fpr}")
    n = max(n, 1)
    # Up to 256 stripes keep lock contention low and writes local (a few percent more bits); tiny corpora get one. A stripe holds
    # fewer than 2**32 bits (indices are mapped into it with 32-bit multiply-shift), so huge filters get more.
    total_bits = -n * math.log(fpr) / (math.log(2) ** 2)
    stripes = int(max(min(256, max(1, n // (1 << 16))), math.ceil(total_bits / MAX_STRIPE_BITS)))
    mean = n / stripes
    # Items land on stripes by hash (binomial); size each stripe for its load at 7 standard deviations.
    per_stripe = n if stripes == 1 else math.ceil(mean + 7.0 * math.sqrt(mean) + 1.0)
    bits = -per_stripe * math.log(fpr) / (math.log(2) ** 2)
    stripe_bits = int(math.ceil(bits / 64.0)) * 64
    while True:  # k is rounded, so grow the stripe until the bound holds (a step or two at most)
        k = max(1, round(stripe_bits / per_stripe * math.log(2)))
        bound = (1.0 - math.exp(-k * per_stripe / stripe_bits)) ** k
        if bound <= fpr:
            return BloomParams(n, k, stripes * stripe_bits, stripes, stripe_bits, fpr, bound)
        stripe_bits += 64 * max(1, stripe_bits // 640_000)


def _bit_positions(fingerprints: np.ndarray, params: BloomParams, stripes: np.ndarray | int) -> tuple:
    """Byte offsets and bit masks of the k bits of each fingerprint, each of shape (len, k).

    Probe i is h1 + i*h2 (double hashing); its top 32 bits are mapped onto the stripe by multiply-shift,
    which avoids a 64-bit modulo (the slowest numpy operation here).
    """
    h2 = _splitmix64(fingerprints ^ _SALT) | np.uint64(1)
    steps = np.arange(params.k, dtype=np.uint64)
    with np.errstate(over="ignore"):
        probes = fingerprints[:, None] + steps[None, :] * h2[:, None]
    probes >>= np.uint64(32)
    probes *= np.uint64(params.stripe_bits)
    probes >>= np.uint64(32)
    offsets = np.asarray(stripes, dtype=np.uint64) * np.uint64(params.stripe_bits)
    probes += offsets[:, None] if offsets.ndim else offsets
    masks = np.left_shift(np.uint8(1), (probes & np.uint64(7)).astype(np.uint8))
    probes >>= np.uint64(3)
    return probes, masks


_SHARD_SALT = np.uint64(0x8CB92BA72F3D8DD7)


def shard_of(fingerprints: np.ndarray, shards: int) -> np.ndarray:
    """Which of `shards` filters holds each 8-gram: the top 32 bits of a re-mixed fingerprint, multiply-shifted
    (independent of the bits that pick the stripe and the probes inside a filter)."""
    if shards == 1:
        return np.zeros(len(fingerprints), dtype=np.int64)
    mixed = _splitmix64(fingerprints ^ _SHARD_SALT) >> np.uint64(32)
    return (mixed * np.uint64(shards) >> np.uint64(32)).astype(np.int64)


def _stripe_of(fingerprints: np.ndarray, params: BloomParams) -> np.ndarray:
    if params.stripes == 1:
        return np.zeros(len(fingerprints), dtype=np.int64)
    return ((fingerprints & np.uint64(0xFFFFFFFF)) * np.uint64(params.stripes) >> np.uint64(32)).astype(np.int64)


def insert_fingerprints(
    bits: np.ndarray, fingerprints: np.ndarray, params: BloomParams, locks: Sequence | None = None
) -> None:
    """Set the k bits of each fingerprint, one stripe at a time.

    Grouping by stripe keeps the writes within a small region of memory (about twice as fast as scattering
    them over the whole filter), and with `locks` (one per stripe) several processes can insert at once.
    """
    stripe = _stripe_of(fingerprints, params)
    order = np.argsort(stripe, kind="stable")
    fingerprints, stripe = fingerprints[order], stripe[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(stripe)) + 1])
    ends = np.append(starts[1:], len(stripe))
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        index = int(stripe[start])
        with locks[index] if locks is not None else contextlib.nullcontext():
            for piece in range(start, end, POSITIONS_CHUNK):  # bounds the (piece, k) position arrays
                byte, mask = _bit_positions(fingerprints[piece : min(end, piece + POSITIONS_CHUNK)], params, index)
                np.bitwise_or.at(bits, byte.ravel(), mask.ravel())


def _contains(bits: np.ndarray, fingerprints: np.ndarray, params: BloomParams) -> np.ndarray:
    found = np.empty(len(fingerprints), dtype=bool)
    for start in range(0, len(fingerprints), POSITIONS_CHUNK):
        chunk = fingerprints[start : start + POSITIONS_CHUNK]
        byte, mask = _bit_positions(chunk, params, _stripe_of(chunk, params))
        found[start : start + len(chunk)] = np.all((bits[byte] & mask) != 0, axis=1)
    return found


# -- reading corpora ----------------------------------------------------------------------------------------------


def document_fingerprints(path: Path, text_field: str = "text") -> Iterator[tuple[int, np.ndarray]]:
    """(documents started, fingerprints) for each bounded piece of a corpus file.

    A JSON-lines file is one document per line; a text file is one document read in blocks, with the last
    seven word hashes carried across blocks so that no 8-gram is lost at a boundary.
    """
    if file_kind(path) == "jsonl":
        for text in jsonl_texts(path, text_field):
            yield 1, text_fingerprints(text)
        return
    carry = np.empty(0, dtype=np.uint64)
    started = 1
    for block in text_blocks(path):
        hashes = np.concatenate([carry, word_hashes(normalise_words(block))])
        yield started, ngram_fingerprints(hashes)
        started = 0
        carry = hashes[-(NGRAM - 1) :] if len(hashes) >= NGRAM - 1 else hashes


def count_ngrams(path: Path, text_field: str = "text") -> tuple[int, int]:
    """(8-gram occurrences, documents) in one corpus file, without hashing."""
    if file_kind(path) == "jsonl":
        ngrams = docs = 0
        for text in jsonl_texts(path, text_field):
            ngrams += max(0, len(normalise_words(text)) - NGRAM + 1)
            docs += 1
        return ngrams, docs
    words = sum(len(normalise_words(block)) for block in text_blocks(path))
    return max(0, words - NGRAM + 1), 1


# -- the filter file ---------------------------------------------------------------------------------------------


@dataclass
class BloomFilter:
    """A loaded filter: parameters, header and a read-only view of the bits (memory-mapped from the file)."""

    params: BloomParams
    header: dict
    bits: np.ndarray
    path: Path | None = None

    def contains(self, fingerprints: np.ndarray) -> np.ndarray:
        return _contains(self.bits, fingerprints, self.params)

    def contains_text(self, text: str) -> np.ndarray:
        """For each 8-gram of `text` in order, whether the filter holds it."""
        return self.contains(text_fingerprints(text))

    @classmethod
    def open(cls, path: str | os.PathLike) -> BloomFilter | ShardedBloomFilter:
        """A filter file, or the index of a sharded filter (then the filter of every shard it names)."""
        path = Path(path)
        if not path.is_file():
            raise GPT2KitError(f"{path}: no such filter file")
        with open(path, "rb") as handle:
            magic = handle.read(max(len(MAGIC), len(SHARDED_MAGIC)))
        if magic.startswith(SHARDED_MAGIC):
            return ShardedBloomFilter.open(path)
        return cls.open_file(path)

    @classmethod
    def open_file(cls, path: Path) -> BloomFilter:
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                raise GPT2KitError(f"{path}: not a gpt2kit n-gram Bloom filter (bad magic)")
            (length,) = struct.unpack("<I", handle.read(4))
            try:
                header = json.loads(handle.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise GPT2KitError(f"{path}: corrupt filter header") from None
        if header.get("version") != FORMAT_VERSION:
            raise GPT2KitError(f"{path}: filter format version {header.get('version')}, expected {FORMAT_VERSION}")
        try:
            params = BloomParams(**{key: header[key] for key in BloomParams.__dataclass_fields__})
        except (KeyError, TypeError):
            raise GPT2KitError(f"{path}: filter header lacks the filter's parameters") from None
        offset = _data_offset(length)
        expected = offset + params.nbytes
        if path.stat().st_size != expected:
            raise GPT2KitError(f"{path}: filter is {path.stat().st_size} bytes, expected {expected} (truncated?)")
        bits = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(params.nbytes,))
        return cls(params, header, bits, path)


@dataclass
class ShardedBloomFilter:
    """Filters that split the 8-grams between them by `shard_of`; answers as one filter would."""

    header: dict  # the index's: shard files, totals, the largest false-positive bound of any shard
    shards: list[BloomFilter]
    path: Path | None = None

    def contains(self, fingerprints: np.ndarray) -> np.ndarray:
        found = np.zeros(len(fingerprints), dtype=bool)
        which = shard_of(fingerprints, len(self.shards))
        for index, bloom in enumerate(self.shards):
            rows = np.flatnonzero(which == index)
            if len(rows):
                found[rows] = bloom.contains(fingerprints[rows])
        return found

    def contains_text(self, text: str) -> np.ndarray:
        return self.contains(text_fingerprints(text))

    @classmethod
    def open(cls, path: str | os.PathLike) -> ShardedBloomFilter:
        path = Path(path)
        raw = path.read_bytes()
        try:
            header = json.loads(raw[len(SHARDED_MAGIC) :].decode("utf-8"))
            names, count = list(header["shard_files"]), int(header["shards"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise GPT2KitError(f"{path}: corrupt sharded filter index") from None
        if header.get("version") != FORMAT_VERSION or len(names) != count:
            raise GPT2KitError(
                f"{path}: sharded filter index version {header.get('version')} with {len(names)} of "
                f"{count} shards; expected version {FORMAT_VERSION} and every shard"
            )
        shards = []
        for index, name in enumerate(names):
            if not (path.parent / name).is_file():
                raise GPT2KitError(f"{path.parent / name}: shard {index} of the filter {path.name} is missing")
            shard = BloomFilter.open_file(path.parent / name)
            if shard.header.get("shard") != index or shard.header.get("shards") != count:
                raise GPT2KitError(f"{path.parent / name}: is not shard {index} of {count} of this filter")
            shards.append(shard)
        return cls(header, shards, path)


def write_shard_index(path: Path, header: dict) -> None:
    with atomic_open(path) as handle:
        handle.write(SHARDED_MAGIC + json.dumps(header, sort_keys=True, indent=1).encode() + b"\n")


def _data_offset(header_length: int) -> int:
    return -(-(len(MAGIC) + 4 + header_length) // DATA_ALIGN) * DATA_ALIGN


def write_filter(path: Path, header: dict, bits: memoryview | bytes) -> None:
    """Header then bits, to a temporary file renamed into place."""
    encoded = json.dumps(header, sort_keys=True).encode()
    offset = _data_offset(len(encoded))
    with atomic_open(path) as handle:
        handle.write(MAGIC + struct.pack("<I", len(encoded)) + encoded)
        handle.write(b"\0" * (offset - handle.tell()))
        handle.write(bits)


# -- building -------------------------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    path: Path
    params: BloomParams
    files: int
    documents: int
    ngrams: int
    seconds: float
    count_seconds: float
    workers: int

    @property
    def ngrams_per_second(self) -> float:
        return self.ngrams / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> list[str]:
        """What the build made, for people: the counts, the filter's size and bound, the speed."""
        processes = f"{self.workers} process" + ("es" if self.workers != 1 else "")
        return [
            f"{self.ngrams:,} 8-grams from {self.documents:,} documents in {self.files} files -> {self.path}",
            f"m={self.params.m:,} bits ({self.params.nbytes / 1e6:.1f} MB), k={self.params.k}, "
            f"false-positive bound {self.params.fpr_bound:.2e}",
            f"insert: {self.seconds:.1f} s, {self.ngrams_per_second:,.0f} 8-grams/s with {processes}",
        ]


def _insert_file(bits: np.ndarray, path: Path, params: BloomParams, text_field: str, locks) -> tuple[int, int]:
    """Insert a file's 8-grams in batches of about INSERT_CHUNK (small documents are pooled)."""
    ngrams = docs = pending_size = 0
    pending: list[np.ndarray] = []
    for started, fingerprints in document_fingerprints(path, text_field):
        docs += started
        ngrams += len(fingerprints)
        pending.append(fingerprints)
        pending_size += len(fingerprints)
        if pending_size >= INSERT_CHUNK:
            insert_fingerprints(bits, np.concatenate(pending), params, locks)
            pending, pending_size = [], 0
    if pending_size:
        insert_fingerprints(bits, np.concatenate(pending), params, locks)
    return ngrams, docs


def _insert_worker(shared: mmap.mmap, params: BloomParams, text_field: str, locks, tasks, results) -> None:
    """A forked worker: insert each file from `tasks` into the shared bits; report counts or an error."""
    bits = np.frombuffer(shared, dtype=np.uint8)
    while (path := tasks.get()) is not None:
        try:
            results.put(("ok", _insert_file(bits, path, params, text_field, locks)))
        except GPT2KitError as err:
            results.put(("error", str(err)))
        except Exception as err:  # a worker must always answer, or the parent waits forever
            results.put(("error", f"{path}: {type(err).__name__}: {err}"))


def _count_task(args: tuple[Path, str]) -> tuple[int, int] | str:
    try:
        return count_ngrams(*args)
    except GPT2KitError as err:
        return str(err)


def _fork_context():
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def build_filter(
    corpus: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    fpr: float = 1e-8,
    workers: int = 1,
    text_field: str = "text",
    expected_ngrams: int | None = None,
) -> BuildResult:
    """Count the corpus's 8-grams, size a filter for `fpr`, insert every 8-gram and write the filter file.

    `corpus` holds text files, JSON-lines files (.jsonl, .gz, .zst) with a `text_field`, or directories of them.
    `expected_ngrams` skips the counting pass (the filter is then sized for that many 8-grams).
    """
    if workers < 1:
        raise GPT2KitError(f"workers must be >= 1, got {workers}")
    if not 0.0 < fpr < 1.0:
        raise GPT2KitError(f"the false-positive rate must be in (0, 1), got {fpr}")
    files = largest_first(corpus_files(corpus, TEXT_AND_JSONL))
    with claimed_file(out, BLOOM_FILTER) as out_path:  # one writer: a build clears its own temporaries
        if removed := remove_stale_temporaries(out_path.parent, [out_path.name]):
            log.info("%s: removed %d temporary files left by an interrupted build", out_path.parent, removed)
        context = _fork_context()
        if context is None and workers > 1:
            log.warning("no fork start method here; building with one process")
            workers = 1
        if workers > len(files):
            log.info("%d workers asked for, %d input files: one process per file", workers, len(files))
        workers = min(workers, len(files))

        start = time.perf_counter()
        if expected_ngrams is None:
            counted = _map_files(_count_task, [(path, text_field) for path in files], workers, context)
            expected_ngrams = sum(n for n, _ in counted)
            if expected_ngrams == 0:
                raise GPT2KitError(f"no 8-grams in the corpus ({len(files)} files with fewer than 8 words of text)")
            log.info("counted %d 8-grams in %d files", expected_ngrams, len(files))
        elif expected_ngrams < 0:
            raise GPT2KitError(f"expected_ngrams must be >= 0, got {expected_ngrams}")
        count_seconds = time.perf_counter() - start
        params = bloom_params(expected_ngrams, fpr)
        log.info("filter: %d bits (%.1f MB), k=%d, %d stripes", params.m, params.nbytes / 1e6, params.k, params.stripes)

        start = time.perf_counter()
        shared = mmap.mmap(-1, params.nbytes)
        bits = np.frombuffer(shared, dtype=np.uint8)
        try:
            if workers == 1:
                totals = [_insert_file(bits, path, params, text_field, None) for path in files]
            else:
                totals = _insert_parallel(shared, files, params, text_field, workers, context)
            ngrams = sum(n for n, _ in totals)
            documents = sum(d for _, d in totals)
            if ngrams > params.n:
                raise GPT2KitError(
                    f"the corpus has {ngrams} 8-grams but the filter was sized for {params.n}; "
                    "raise expected_ngrams or let the build count them"
                )
            seconds = time.perf_counter() - start
            header = asdict(params) | {
                "version": FORMAT_VERSION,
                "ngram": NGRAM,
                "hash": HASH_SCHEME,
                "normalisation": NORMALISATION,
                "items_inserted": ngrams,
                "documents": documents,
                "files": len(files),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            out = Path(out)
            write_filter(out, header, memoryview(shared))
        finally:
            del bits
            shared.close()
        return BuildResult(out, params, len(files), documents, ngrams, seconds, count_seconds, workers)


def _map_files(func, tasks: list, workers: int, context) -> list[tuple[int, int]]:
    if workers == 1:
        results = [func(task) for task in tasks]
    else:
        with context.Pool(workers) as pool:
            results = pool.map(func, tasks, chunksize=1)
    for result in results:
        if isinstance(result, str):
            raise GPT2KitError(result)
    return results


def _insert_parallel(shared, files, params, text_field, workers, context) -> list[tuple[int, int]]:
    locks = [context.Lock() for _ in range(params.stripes)]
    tasks, results = context.Queue(), context.Queue()
    for path in files:
        tasks.put(path)
    for _ in range(workers):
        tasks.put(None)
    processes = [
        context.Process(target=_insert_worker, args=(shared, params, text_field, locks, tasks, results), daemon=True)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    totals = []
    try:
        for _ in files:
            status, value = results.get()
            if status == "error":
                raise GPT2KitError(value)
            totals.append(value)
    finally:
        for process in processes:
            if process.is_alive() and len(totals) < len(files):
                process.terminate()
            process.join()
    return totals


# -- checking test sets --------------------------------------------------------------------------------------------
