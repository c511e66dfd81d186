"""What both ways of preparing share: the settings, reading documents, cutting them into batches, tokenizing a
batch, writing a shard group, and the record that lets a re-run reuse finished work."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpt2kit.config import Checked
from gpt2kit.data.corpus import corpus_files, file_kind
from gpt2kit.data.shards import (
    GroupInfo,
    Manifest,
    ShardInfo,
    ShardWriter,
)
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import BAD_UTF8_POLICIES, Utf8Policy, parse_json_line, reading
from gpt2kit.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# A corpus that is one document gives validation at least this share of its text, by position (nanoGPT's 90/10).
SINGLE_DOCUMENT_VAL_SHARE = 0.1


class PrepareError(GPT2KitError):
    """Bad corpus input: a missing file, bad UTF-8, a missing text field, an empty corpus."""


@dataclass
class InputStats:
    files: int = 0
    documents: int = 0
    empty_skipped: int = 0


@dataclass
class PrepareResult:
    manifest: Manifest
    out: Path
    groups_written: int
    groups_reused: int
    tokens_written: int
    elapsed_s: float
    tokens_per_s: float  # tokens written per second of the whole run


# -- reading documents --------------------------------------------------------------------


def input_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The files `inputs` name (see `data.corpus.corpus_files`); none for a corpus that is only a HF dataset."""
    return corpus_files(inputs) if inputs else []


def single_document_share(files: list[Path], config: PrepareConfig) -> float | None:
    """The share of the text that goes to validation, by position, when the corpus is one document (one text
    file read whole, as tiny-shakespeare is used): its documents cannot be shared out. None otherwise."""
    if config.val_fraction <= 0 or config.split_lines or config.hf_dataset or len(files) != 1:
        return None
    if file_kind(files[0]) != "text":
        return None
    return max(config.val_fraction, SINGLE_DOCUMENT_VAL_SHARE)


def split_by_position(text: str, val_share: float) -> tuple[str, str]:
    """`text` cut before its last `val_share`, at the line (else the space) nearest the cut."""
    cut = round(len(text) * (1 - val_share))
    for separator in ("\n", " "):
        before, after = text.rfind(separator, 0, cut), text.find(separator, cut)
        candidates = [i + 1 for i in (before, after) if 0 <= i < len(text) - 1]
        if candidates:
            cut = min(candidates, key=lambda i: abs(i - cut))
            break
    return text[:cut], text[cut:]


def validation_rows_by_position(batch: Batch, docs_before: int) -> list[int]:
    """With a single-document corpus split in two, the second part is the validation document."""
    return [1 - docs_before] if docs_before <= 1 < docs_before + len(batch.docs) else []


class DocumentReader:
    """Yields documents as text from files and a HF dataset, counting what it skips or repairs."""

    def __init__(self, split_lines: bool, text_field: str, on_bad_utf8: str, val_share: float | None = None):
        self.split_lines = split_lines
        self.text_field = text_field
        self.val_share = val_share  # a single-document corpus: yield it as two parts, train then validation
        self.utf8 = Utf8Policy(on_bad_utf8, PrepareError, hint="; set on_bad_utf8 to replace or skip")
        self.stats = InputStats()

    def input_stats(self) -> dict:
        """What was read, skipped and repaired, for the manifest."""
        return asdict(self.stats) | {"bad_utf8_replaced": self.utf8.replaced, "bad_utf8_skipped": self.utf8.skipped}

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
            kind = file_kind(path)
            if kind == "jsonl":
                yield from self._jsonl(path)
            elif kind == "parquet":
                yield from self._parquet(path)
            elif self.split_lines:
                with reading(path) as handle:
                    for number, raw in enumerate(handle, 1):
                        text = self.utf8.decode(raw.rstrip(b"\r\n"), f"{path}:{number}")
                        if self._keep(text):
                            yield text
            else:
                with reading(path) as handle:
                    text = self.utf8.decode(handle.read(), str(path))
                if text is not None:
                    text = text.removeprefix("\ufeff")
                if self.val_share is not None and text is not None and text.strip():
                    parts = split_by_position(text, self.val_share)
                    log.info(
                        "%s is one document: split by position, its last %d of %d characters to validation",
                        path, len(parts[1]), len(text),
                    )  # fmt: skip
                    yield from (part for part in parts if self._keep(part))
                elif self._keep(text):
                    yield text

    def _field(self, row: object, where: str) -> str | None:
        if not isinstance(row, dict):
            raise PrepareError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if self.text_field not in row:
            fields = ", ".join(sorted(map(str, row))[:8]) or "none"
            raise PrepareError(
                f"{where}: no field {self.text_field!r} (fields here: {fields}; choose another text field)"
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
                line = self.utf8.decode(raw, where)
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
                f"{path}: no column {self.text_field!r} (columns: {', '.join(names[:8])}; choose another text field)"
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
            raise PrepareError(
                "reading a HF dataset needs the `datasets` package (pip install 'gpt2kit[data]')"
            ) from None
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
            raise PrepareError(f"HF dataset {spec} (split {split}): {type(err).__name__}: {err}") from None


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


# -- writing groups --------------------------------------------------------------------------


class GroupWriter:
    """The open train and val shards of the current group."""

    def __init__(self, out: Path, index: int, first_batch: int, dtype: np.dtype, stem: str | None = None):
        self.out = out
        self.index = index
        self.first_batch = first_batch
        self.dtype = dtype
        stem = stem or f"{index:05d}"
        self.writers = {split: ShardWriter(out / f"{split}-{stem}.bin", dtype) for split in ("train", "val")}
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


def tokenizer_record(tokenizer: Tokenizer, sha256: str) -> dict:
    """What a manifest records of the tokenizer."""
    return {
        "name": tokenizer.name,
        "sha256": sha256,
        "vocab_size": tokenizer.vocab_size,
        "eot_token": tokenizer.eot_token,
    }


def check_same_run(out: Path, earlier_tokenizer: dict, earlier_settings: dict, tokenizer: dict, settings: dict) -> None:
    """An output folder is reused only with the tokenizer and settings (inputs included) it was made with."""
    if earlier_tokenizer.get("sha256") != tokenizer["sha256"]:
        raise PrepareError(
            f"{out}: holds shards made with tokenizer {earlier_tokenizer.get('name')!r} "
            f"(sha256 {str(earlier_tokenizer.get('sha256'))[:12]}...), not {tokenizer['name']!r} "
            f"(sha256 {tokenizer['sha256'][:12]}...); write to another directory"
        )
    for key in sorted(set(settings) | set(earlier_settings)):
        if settings.get(key) != earlier_settings.get(key):
            raise PrepareError(
                f"{out}: was prepared with {key}={earlier_settings.get(key)!r}, now {settings.get(key)!r}; "
                "write to another directory, or use the same settings to resume"
            )


@dataclass
class PrepareConfig(Checked):
    """What `prepare` reads and how it splits and shards it (recorded in the manifest as its settings)."""

    val_fraction: float = 0.005  # share of documents for validation, drawn by a seeded hash
    workers: int | None = None  # tokenizer processes; None: all cores
    seed: int = 0  # seed of the train/validation draw
    split_lines: bool = False  # one document per line of text files
    text_field: str = "text"  # field (JSON lines) or column (parquet, HF) holding the text
    on_bad_utf8: str = "replace"  # what bad UTF-8 gets: error, replace or skip
    hf_dataset: str | None = None  # a HF dataset NAME[:CONFIG], streamed after the files
    hf_split: str = "train"  # the split of hf_dataset
    shard_tokens: int = 100_000_000  # train tokens per shard group
    batch_bytes: int = 1 << 20  # text per tokenizer task
    progress: bool = True

    def problems(self) -> list[str]:
        bad = []
        if not 0.0 <= self.val_fraction < 1.0:
            bad.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens <= 0 or self.batch_bytes <= 0:
            bad.append("shard_tokens and batch_bytes must be positive")
        if self.workers is not None and self.workers < 1:
            bad.append(f"workers must be at least 1, got {self.workers}")
        if self.on_bad_utf8 not in BAD_UTF8_POLICIES:
            bad.append(f"on_bad_utf8 must be one of {', '.join(BAD_UTF8_POLICIES)}, got {self.on_bad_utf8!r}")
        return bad

    def settings(self, files: list[Path]) -> dict:
        """The manifest's record of the run: what a re-run must match to reuse shards."""
        values = {key: value for key, value in asdict(self).items() if key not in ("workers", "progress")}
        values["hf_split"] = self.hf_split if self.hf_dataset else None
        return {"inputs": [str(p) for p in files], **values}
