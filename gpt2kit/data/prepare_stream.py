"""`prepare` streaming: a corpus into token shards with many worker processes.

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

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from gpt2kit.data.corpus import file_kind
from gpt2kit.data.prepare_common import (
    Batch,
    DocumentReader,
    GroupWriter,
    PrepareConfig,
    PrepareError,
    PrepareResult,
    TokenizedBatch,
    batches,
    check_same_run,
    input_files,
    single_document_share,
    tokenize_batch,
    tokenizer_record,
    validation_rows_by_position,
)
from gpt2kit.data.shards import (
    MANIFEST_NAME,
    TOKENIZER_DIR,
    GroupInfo,
    Manifest,
    ShardError,
    token_dtype,
)
from gpt2kit.executors import default_workers
from gpt2kit.io import remove_stale_temporaries
from gpt2kit.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


def validation_rows(batch: Batch, docs_before: int, val_fraction: float, seed: int) -> list[int]:
    """Which rows of `batch` go to validation: enough that ceil(documents so far * fraction) are val."""
    if val_fraction <= 0:
        return []
    target = lambda n: math.ceil(round(n * val_fraction, 9))
    count = target(docs_before + len(batch.docs)) - target(docs_before)
    rng = np.random.default_rng([seed, batch.index])
    return sorted(rng.choice(len(batch.docs), size=count, replace=False).tolist())


def _reusable_groups(out: Path, manifest: Manifest | None, tokenizer: dict, settings: dict) -> list[GroupInfo]:
    """Groups of an earlier run with the same tokenizer and settings whose shards are intact."""
    if manifest is None:
        return []
    check_same_run(out, manifest.tokenizer, manifest.settings, tokenizer, settings)
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


class StreamingPreparation:
    """One `prepare` run: batches of documents go to tokenizer processes and come back, in order, into shard
    groups; groups an earlier run finished with the same input and settings are reused after checking."""

    def __init__(self, inputs: list[str], tokenizer: str | Tokenizer, out: Path, config: PrepareConfig):
        self.start = time.perf_counter()
        self.inputs, self.out, self.config = inputs, out, config
        self.workers = config.workers or default_workers()
        self.files = input_files(inputs)
        self.tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        self.dtype = token_dtype(self.tok.vocab_size)
        settings = config.settings(self.files)
        self.tokenizer_sha = self.tok.sha256  # hashes the whole vocabulary: compute it once
        self.previous = Manifest.load(out) if (out / MANIFEST_NAME).exists() else None
        tokenizer_info = tokenizer_record(self.tok, self.tokenizer_sha)
        self.reusable = _reusable_groups(out, self.previous, tokenizer_info, settings)
        out.mkdir(parents=True, exist_ok=True)
        if removed := remove_stale_temporaries(out):
            log.info("%s: removed %d temporary files left by an interrupted run", out, removed)
        self.tokenizer_dir = out / TOKENIZER_DIR
        self.tok.save(self.tokenizer_dir)
        self.manifest = Manifest(tokenizer_info, self.dtype.name, settings)
        self.val_share = single_document_share(self.files, config)
        self.reader = DocumentReader(config.split_lines, config.text_field, config.on_bad_utf8, self.val_share)
        self.group: GroupWriter | None = None
        self.tokens_written = self.groups_written = 0
        self.reuse_queue = deque(self.reusable)
        self.reuse_digest = hashlib.sha256()
        self.bar = None

    def documents(self) -> Iterator[str]:
        yield from self.reader.files(self.files)
        if self.config.hf_dataset:
            yield from self.reader.hf_dataset(self.config.hf_dataset, self.config.hf_split)

    def run(self) -> PrepareResult:
        from tqdm.auto import tqdm

        # The bar counts text bytes; file sizes give its total only for plain text input.
        plain_text = not self.config.hf_dataset and all(file_kind(p) == "text" for p in self.files)
        known_size = sum(p.stat().st_size for p in self.files) if plain_text else None
        self.bar = tqdm(
            total=known_size, unit="B", unit_scale=True, desc=f"prepare -> {self.out}", disable=not self.config.progress
        )
        pool = ProcessPoolExecutor(max_workers=self.workers) if self.workers > 1 else None
        pending: deque[tuple[Batch, Future]] = deque()
        try:
            self._tokenize_all(pool, pending)
            if self.bar.total:  # the bar counts document bytes; newlines and empty lines make up the rest
                self.bar.update(self.bar.total - self.bar.n)
        except BaseException:
            if self.group is not None:
                self.group.abort()
            for _, future in pending:
                future.cancel()
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()
        return self._finish()

    def _tokenize_all(self, pool: ProcessPoolExecutor | None, pending: deque) -> None:
        reuse_end = self.reusable[-1].end_batch if self.reusable else 0
        docs_seen = 0
        for batch in batches(self.documents(), self.config.batch_bytes):
            if self.val_share is None:
                val_rows = validation_rows(batch, docs_seen, self.config.val_fraction, self.config.seed)
            else:
                val_rows = validation_rows_by_position(batch, docs_seen)
            docs_seen += len(batch.docs)
            if batch.index < reuse_end:
                self._reuse(batch)
                continue
            args = (str(self.tokenizer_dir), self.tokenizer_sha, batch.docs, batch.doc_bytes, val_rows, self.dtype.name)
            if pool is None:
                self._consume(batch, tokenize_batch(*args))
                continue
            pending.append((batch, pool.submit(tokenize_batch, *args)))
            while len(pending) >= 2 * self.workers:
                done_batch, future = pending.popleft()
                self._consume(done_batch, future.result())
        while pending:
            done_batch, future = pending.popleft()
            self._consume(done_batch, future.result())
        if self.group is not None:
            self._finish_group()

    def _reuse(self, batch: Batch) -> None:
        """Check a batch an earlier run already tokenized; at a group's end, take that group over."""
        self.reuse_digest.update(batch.digest)
        self.bar.update(sum(batch.doc_bytes))
        if batch.index + 1 == self.reuse_queue[0].end_batch:
            reused = self.reuse_queue.popleft()
            if self.reuse_digest.hexdigest() != reused.text_sha256:
                raise PrepareError(
                    f"{self.out}: the input differs from the earlier run's (shard group {reused.index}); "
                    "write to another directory"
                )
            self.manifest.groups.append(reused)
            self.manifest.shards.extend(s for s in self.previous.shards if s.group == reused.index)
            self.reuse_digest = hashlib.sha256()

    def _consume(self, batch: Batch, result: TokenizedBatch) -> None:
        if self.group is None:
            self.group = GroupWriter(self.out, len(self.manifest.groups), batch.index, self.dtype)
        self.group.add(batch, result)
        self.tokens_written += len(result.train) + len(result.val)
        self.bar.update(sum(batch.doc_bytes))
        if self.group.train_tokens >= self.config.shard_tokens:
            self._finish_group()

    def _finish_group(self) -> None:
        info, shards = self.group.close()
        self.manifest.groups.append(info)
        self.manifest.shards.extend(shards)
        self.manifest.save(self.out)
        self.groups_written += 1
        self.group = None

    def _finish(self) -> PrepareResult:
        if self.reuse_queue:
            raise PrepareError(f"{self.out}: the input is shorter than in the earlier run; write to another directory")
        if self.reader.stats.documents == 0:
            sources = ", ".join([*map(str, self.inputs), *([self.config.hf_dataset] if self.config.hf_dataset else [])])
            raise PrepareError(f"empty corpus: no non-empty documents in {sources}")
        if self.manifest.split_stats("train").num_docs == 0:
            raise PrepareError(
                f"no training documents: all {self.reader.stats.documents} went to validation; "
                "lower val_fraction or split text files into one document per line"
            )
        self.manifest.input_stats = self.reader.input_stats()
        self.manifest.complete = True
        self.manifest.save(self.out)
        elapsed = time.perf_counter() - self.start
        rate = self.tokens_written / elapsed if elapsed > 0 else 0.0
        written, reused = self.groups_written, len(self.reusable)
        return PrepareResult(self.manifest, self.out, written, reused, self.tokens_written, elapsed, rate)
