"""`gpt2kit prepare`: stream a corpus into token shards with many worker processes.

Documents are read in order and cut into batches of about `batch_bytes` of
text. Worker processes tokenize batches; the main process writes the results,
in order, into shard groups: one train shard and one val shard per group, a
group closing once its train shard holds `shard_tokens` tokens. The manifest
is rewritten atomically after every group, so a re-run with the same settings
checks the input against the recorded hashes and skips finished groups.

Which documents go to validation is decided per batch by a generator seeded
with (seed, batch index): ceil(total * val_fraction) documents in all, at least
one when val_fraction > 0.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpt2kit.data.shards import (
    MANIFEST_NAME,
    GroupInfo,
    Manifest,
    ShardError,
    ShardInfo,
    ShardWriter,
    token_dtype,
)
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import parse_json_line, reading
from gpt2kit.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

BAD_UTF8_POLICIES = ("error", "replace", "skip")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt",)
TOKENIZER_DIR = "tokenizer"


class PrepareError(GPT2KitError):
    """Bad corpus input: a missing file, bad UTF-8, a missing text field, an empty corpus."""


@dataclass
class InputStats:
    files: int = 0
    documents: int = 0
    empty_skipped: int = 0
    bad_utf8_replaced: int = 0
    bad_utf8_skipped: int = 0


@dataclass
class PrepareResult:
    manifest: Manifest
    out: Path
    groups_written: int
    groups_reused: int
    tokens_written: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_written / self.elapsed_s if self.elapsed_s > 0 else 0.0


# -- reading documents --------------------------------------------------------------------


def _suffix_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, directories (searched recursively for .txt, .jsonl[.gz|.zst] and .parquet) and glob patterns."""
    files: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(known))
            if not found:
                raise PrepareError(
                    f"{path}: no .txt, .jsonl, .jsonl.gz, .jsonl.zst or .parquet files in this directory"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(str(spec)):
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
            if not matches:
                raise PrepareError(f"{spec}: no files match this pattern")
            files.extend(matches)
        else:
            raise PrepareError(f"{spec}: no such file or directory")
    return files


class DocumentReader:
    """Yields documents as text from files and a HF dataset, counting what it skips or repairs."""

    def __init__(self, split_lines: bool, text_field: str, on_bad_utf8: str):
        if on_bad_utf8 not in BAD_UTF8_POLICIES:
            raise PrepareError(f"--on-bad-utf8 must be one of {', '.join(BAD_UTF8_POLICIES)}, got {on_bad_utf8!r}")
        self.split_lines = split_lines
        self.text_field = text_field
        self.on_bad_utf8 = on_bad_utf8
        self.stats = InputStats()

    def _decode(self, raw: bytes, where: str) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.on_bad_utf8 == "error":
                raise PrepareError(
                    f"{where}: not UTF-8 (byte {err.start}); set on_bad_utf8 to replace or skip"
                ) from None
            if self.on_bad_utf8 == "skip":
                self.stats.bad_utf8_skipped += 1
                return None
            self.stats.bad_utf8_replaced += 1
            return raw.decode("utf-8", errors="replace")

    def _keep(self, text: str | None) -> bool:
        if text is None:
            return False
        if not text.strip():
            self.stats.empty_skipped += 1
            return False
        self.stats.documents += 1
        return True

    def files(self, paths: list[Path]) -> Iterator[str]:
        for path in paths:
            self.stats.files += 1
            kind = _suffix_kind(path)
            if kind == "jsonl":
                yield from self._jsonl(path)
            elif kind == "parquet":
                yield from self._parquet(path)
            elif self.split_lines:
                with reading(path) as handle:
                    for number, raw in enumerate(handle, 1):
                        text = self._decode(raw.rstrip(b"\r\n"), f"{path}:{number}")
                        if self._keep(text):
                            yield text
            else:
                with reading(path) as handle:
                    text = self._decode(handle.read(), str(path))
                if text is not None:
                    text = text.removeprefix("\ufeff")
                if self._keep(text):
                    yield text

    def _field(self, row: object, where: str) -> str | None:
        if not isinstance(row, dict):
            raise PrepareError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if self.text_field not in row:
            fields = ", ".join(sorted(map(str, row))[:8]) or "none"
            raise PrepareError(
                f"{where}: no field {self.text_field!r} (fields here: {fields}; choose with --text-field)"
            )
        value = row[self.text_field]
        if value is not None and not isinstance(value, str):
            raise PrepareError(f"{where}: field {self.text_field!r} is {type(value).__name__}, not text")
        return value

    def _jsonl(self, path: Path) -> Iterator[str]:
        with reading(path) as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{number}"
                line = self._decode(raw, where)
                if line is None:
                    continue
                text = self._field(parse_json_line(line, where), where)
                if self._keep(text):
                    yield text

    def _parquet(self, path: Path) -> Iterator[str]:
        try:
            import pyarrow
            import pyarrow.parquet as pq
        except ImportError:
            raise PrepareError(f"{path}: reading parquet needs pyarrow (pip install 'gpt2kit[data]')") from None

        try:
            parquet = pq.ParquetFile(path)
        except (pyarrow.ArrowException, OSError) as err:
            raise PrepareError(f"{path}: not a readable parquet file ({err})") from None
        names = parquet.schema_arrow.names
        if self.text_field not in names:
            raise PrepareError(
                f"{path}: no column {self.text_field!r} (columns: {', '.join(names[:8])}; choose with --text-field)"
            )
        try:
            for batch in parquet.iter_batches(columns=[self.text_field], batch_size=1024):
                for text in batch.column(0).to_pylist():
                    if text is not None and not isinstance(text, str):
                        raise PrepareError(f"{path}: column {self.text_field!r} holds {type(text).__name__}, not text")
                    if self._keep(text):
                        yield text
        except pyarrow.ArrowException as err:
            raise PrepareError(f"{path}: unreadable parquet data ({err})") from None

    def hf_dataset(self, spec: str, split: str) -> Iterator[str]:
        """Stream a HF dataset, `NAME[:CONFIG]` (a hub id or a local dataset directory)."""
        try:
            import datasets
        except ImportError:
            raise PrepareError("--hf-dataset needs the `datasets` package (pip install 'gpt2kit[data]')") from None
        name, config = spec, None
        if not Path(spec).exists() and ":" in spec:
            name, config = spec.split(":", 1)
        try:
            rows = iter(datasets.load_dataset(name, config, split=split, streaming=True))
            for number, row in enumerate(rows, 1):
                text = self._field(row, f"{spec} [{split}] row {number}")
                if self._keep(text):
                    yield text
        except GPT2KitError:
            raise
        except Exception as err:  # hub, network, unknown split or config: all mean the dataset is not usable
            raise PrepareError(f"--hf-dataset {spec} --split {split}: {type(err).__name__}: {err}") from None


@dataclass
class Batch:
    index: int
    docs: list[str]
    doc_bytes: list[int]
    digest: bytes  # sha256 of the documents' UTF-8 text, each followed by 0xFF (never in UTF-8)


def batches(documents: Iterator[str], batch_bytes: int) -> Iterator[Batch]:
    docs: list[str] = []
    sizes: list[int] = []
    digest = hashlib.sha256()
    index = 0
    for text in documents:
        encoded = text.encode("utf-8", errors="surrogatepass")
        digest.update(encoded)
        digest.update(b"\xff")
        docs.append(text)
        sizes.append(len(encoded))
        if sum(sizes) >= batch_bytes:
            yield Batch(index, docs, sizes, digest.digest())
            docs, sizes, digest, index = [], [], hashlib.sha256(), index + 1
    if docs:
        yield Batch(index, docs, sizes, digest.digest())


# -- tokenizing ----------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _worker_tokenizer(directory: str, sha256: str) -> Tokenizer:
    """Each worker process loads the tokenizer from the output directory once."""
    tokenizer = Tokenizer.from_dir(directory)
    if tokenizer.sha256 != sha256:
        raise PrepareError(f"{directory}: tokenizer changed while preparing")
    return tokenizer


@dataclass
class TokenizedBatch:
    train: np.ndarray
    val: np.ndarray
    train_docs: int
    val_docs: int
    train_bytes: int
    val_bytes: int


def tokenize_batch(
    tokenizer_dir: str, tokenizer_sha: str, docs: list[str], doc_bytes: list[int], val_rows: list[int], dtype: str
) -> TokenizedBatch:
    """Tokenize one batch (in a worker process): each document then `<|endoftext|>`, split into train and val."""
    tokenizer = _worker_tokenizer(tokenizer_dir, tokenizer_sha)
    eot = np.array([tokenizer.eot_token], dtype=dtype)
    is_val = np.zeros(len(docs), dtype=bool)
    is_val[val_rows] = True
    # numpy arrays straight from tiktoken: no Python int per token (about 10% of a worker's time otherwise).
    parts: dict[bool, list[np.ndarray]] = {False: [np.empty(0, dtype=dtype)], True: [np.empty(0, dtype=dtype)]}
    for doc, val in zip(docs, is_val, strict=True):
        parts[bool(val)] += [tokenizer.encode_to_numpy(doc).astype(dtype, copy=False), eot]
    val_bytes = sum(size for size, val in zip(doc_bytes, is_val, strict=True) if val)
    return TokenizedBatch(
        train=np.concatenate(parts[False]),
        val=np.concatenate(parts[True]),
        train_docs=int((~is_val).sum()),
        val_docs=int(is_val.sum()),
        train_bytes=sum(doc_bytes) - val_bytes,
        val_bytes=val_bytes,
    )


def validation_rows(batch: Batch, docs_before: int, val_fraction: float, seed: int) -> list[int]:
    """Which rows of `batch` go to validation: enough that ceil(documents so far * fraction) are val."""
    if val_fraction <= 0:
        return []
    target = lambda n: math.ceil(round(n * val_fraction, 9))
    count = target(docs_before + len(batch.docs)) - target(docs_before)
    rng = np.random.default_rng([seed, batch.index])
    return sorted(rng.choice(len(batch.docs), size=count, replace=False).tolist())


# -- writing groups --------------------------------------------------------------------------


class _GroupWriter:
    """The open train and val shards of the current group."""

    def __init__(self, out: Path, index: int, first_batch: int, dtype: np.dtype):
        self.out = out
        self.index = index
        self.first_batch = first_batch
        self.dtype = dtype
        self.writers = {split: ShardWriter(out / f"{split}-{index:05d}.bin", dtype) for split in ("train", "val")}
        self.bytes = {"train": 0, "val": 0}
        self.digest = hashlib.sha256()
        self.end_batch = first_batch

    def add(self, batch: Batch, result: TokenizedBatch) -> None:
        self.writers["train"].append(result.train, result.train_docs)
        self.writers["val"].append(result.val, result.val_docs)
        self.bytes["train"] += result.train_bytes
        self.bytes["val"] += result.val_bytes
        self.digest.update(batch.digest)
        self.end_batch = batch.index + 1

    @property
    def train_tokens(self) -> int:
        return self.writers["train"].num_tokens

    def close(self) -> tuple[GroupInfo, list[ShardInfo]]:
        shards = []
        for split, writer in self.writers.items():
            if writer.num_docs == 0:
                writer.abort()
                (self.out / writer.path.name).unlink(missing_ok=True)  # a stale shard from an older run
                continue
            sha = writer.close()
            shards.append(
                ShardInfo(
                    writer.path.name, split, self.index, writer.num_docs, writer.num_tokens, self.bytes[split], sha
                )
            )
        return GroupInfo(self.index, self.first_batch, self.end_batch, self.digest.hexdigest()), shards

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


def _reusable_groups(
    out: Path, manifest: Manifest | None, tokenizer: Tokenizer, tokenizer_sha: str, settings: dict
) -> list[GroupInfo]:
    """Groups of an earlier run with the same tokenizer and settings whose shards are intact."""
    if manifest is None:
        return []
    if manifest.tokenizer.get("sha256") != tokenizer_sha:
        raise PrepareError(
            f"{out}: holds shards made with tokenizer {manifest.tokenizer.get('name')!r} "
            f"(sha256 {str(manifest.tokenizer.get('sha256'))[:12]}...), not {tokenizer.name!r} "
            f"(sha256 {tokenizer_sha[:12]}...); use another --out"
        )
    for key in sorted(set(settings) | set(manifest.settings)):
        if settings.get(key) != manifest.settings.get(key):
            raise PrepareError(
                f"{out}: was prepared with {key}={manifest.settings.get(key)!r}, now {settings.get(key)!r}; "
                "use another --out, or the same settings to resume"
            )
    reusable = []
    for group in manifest.groups:
        shards = [s for s in manifest.shards if s.group == group.index]
        probe = Manifest(manifest.tokenizer, manifest.dtype, manifest.settings, shards)
        try:
            probe.verify(out)
        except ShardError as err:
            log.warning("redoing shard group %d: %s", group.index, err)
            break
        reusable.append(group)
    return reusable


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(
    inputs: list[str],
    tokenizer: str | Tokenizer,
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.005,
    workers: int | None = None,
    seed: int = 0,
    split_lines: bool = False,
    text_field: str = "text",
    on_bad_utf8: str = "replace",
    hf_dataset: str | None = None,
    hf_split: str = "train",
    shard_tokens: int = 100_000_000,
    batch_bytes: int = 1 << 20,
    progress: bool = True,
) -> PrepareResult:
    """Tokenize `inputs` (and/or a HF dataset) into shards under `out`; see the module docstring."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if not 0.0 <= val_fraction < 1.0:
        raise PrepareError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens <= 0 or batch_bytes <= 0:
        raise PrepareError("--shard-tokens and the batch size must be positive")
    workers = workers or default_workers()
    if workers < 1:
        raise PrepareError(f"--workers must be at least 1, got {workers}")
    if not inputs and not hf_dataset:
        raise PrepareError("nothing to prepare: give --input files or --hf-dataset")
    out = Path(out)
    files = expand_inputs(inputs)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    settings = {
        "inputs": [str(p) for p in files],
        "hf_dataset": hf_dataset,
        "hf_split": hf_split if hf_dataset else None,
        "split_lines": split_lines,
        "text_field": text_field,
        "on_bad_utf8": on_bad_utf8,
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
        "batch_bytes": batch_bytes,
    }
    tokenizer_sha = tok.sha256  # hashes the whole vocabulary: compute it once
    previous = Manifest.load(out) if (out / MANIFEST_NAME).exists() else None
    reusable = _reusable_groups(out, previous, tok, tokenizer_sha, settings)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = out / TOKENIZER_DIR
    tok.save(tokenizer_dir)
    tokenizer_info = {
        "name": tok.name,
        "sha256": tokenizer_sha,
        "vocab_size": tok.vocab_size,
        "eot_token": tok.eot_token,
    }
    manifest = Manifest(tokenizer_info, dtype.name, settings)
    reuse_end = reusable[-1].end_batch if reusable else 0

    reader = DocumentReader(split_lines, text_field, on_bad_utf8)

    def documents() -> Iterator[str]:
        yield from reader.files(files)
        if hf_dataset:
            yield from reader.hf_dataset(hf_dataset, hf_split)

    # The bar counts text bytes; file sizes give its total only for plain text input.
    plain_text = not hf_dataset and all(_suffix_kind(p) == "text" for p in files)
    known_size = sum(p.stat().st_size for p in files) if plain_text else None
    bar = tqdm(total=known_size, unit="B", unit_scale=True, desc=f"prepare -> {out}", disable=not progress)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    pending: deque[tuple[Batch, Future]] = deque()
    group: _GroupWriter | None = None
    docs_seen = 0
    tokens_written = 0
    groups_written = 0
    reuse_digest = hashlib.sha256()
    reuse_queue = deque(reusable)

    def finish_group() -> None:
        nonlocal group, groups_written
        info, shards = group.close()
        manifest.groups.append(info)
        manifest.shards.extend(shards)
        manifest.save(out)
        groups_written += 1
        group = None

    def consume(batch: Batch, result: TokenizedBatch) -> None:
        nonlocal group, tokens_written
        if group is None:
            group = _GroupWriter(out, len(manifest.groups), batch.index, dtype)
        group.add(batch, result)
        tokens_written += len(result.train) + len(result.val)
        bar.update(sum(batch.doc_bytes))
        if group.train_tokens >= shard_tokens:
            finish_group()

    try:
        for batch in batches(documents(), batch_bytes):
            val_rows = validation_rows(batch, docs_seen, val_fraction, seed)
            docs_seen += len(batch.docs)
            if batch.index < reuse_end:
                reuse_digest.update(batch.digest)
                bar.update(sum(batch.doc_bytes))
                if batch.index + 1 == reuse_queue[0].end_batch:
                    reused = reuse_queue.popleft()
                    if reuse_digest.hexdigest() != reused.text_sha256:
                        raise PrepareError(
                            f"{out}: the input differs from the earlier run's (shard group {reused.index}); "
                            "use another --out"
                        )
                    manifest.groups.append(reused)
                    manifest.shards.extend(s for s in previous.shards if s.group == reused.index)
                    reuse_digest = hashlib.sha256()
                continue
            args = (str(tokenizer_dir), tokenizer_sha, batch.docs, batch.doc_bytes, val_rows, dtype.name)
            if pool is None:
                consume(batch, tokenize_batch(*args))
                continue
            pending.append((batch, pool.submit(tokenize_batch, *args)))
            while len(pending) >= 2 * workers:
                done_batch, future = pending.popleft()
                consume(done_batch, future.result())
        while pending:
            done_batch, future = pending.popleft()
            consume(done_batch, future.result())
        if group is not None:
            finish_group()
    except BaseException:
        if group is not None:
            group.abort()
        for _, future in pending:
            future.cancel()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

    if reuse_queue:
        raise PrepareError(f"{out}: the input is shorter than in the earlier run; use another --out")
    if reader.stats.documents == 0:
        sources = ", ".join([*map(str, inputs), *([hf_dataset] if hf_dataset else [])])
        raise PrepareError(f"empty corpus: no non-empty documents in {sources}")
    if manifest.split_stats("train").num_docs == 0:
        raise PrepareError(
            f"no training documents: all {reader.stats.documents} went to validation; "
            "lower --val-fraction or use --split-lines"
        )
    manifest.input_stats = asdict(reader.stats)
    manifest.complete = True
    manifest.save(out)
    return PrepareResult(manifest, out, groups_written, len(reusable), tokens_written, time.perf_counter() - start)


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """The manifest of a finished `prepare` run."""
    manifest = Manifest.load(directory)
    if not manifest.complete:
        raise ShardError(f"{directory}: preparation did not finish (re-run `gpt2kit prepare` to complete it)")
    return manifest
