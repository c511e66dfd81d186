"""`gpt2kit prepare` as tasks, for many machines: each input file is tokenized into its own shards.

Task `rank` of `tasks` tokenizes the input files whose index is `rank` modulo `tasks` (a deterministic slice),
writing `train-fFFFFFF-PPP.bin` and `val-fFFFFFF-PPP.bin` (file FFFFFF, part PPP, a part closing at `shard_tokens`
train tokens) and then a record of that file's shards. The shard set is a function of the input files and the
settings alone, not of the number of tasks or where they ran. Which documents go to validation is drawn per
document from a generator seeded by (seed, file, batch of the file), so it does not depend on the number of tasks
either; the manifest records this as `layout = "per-file"`. A final step, in the calling process, reads the
records in file order and writes the manifest.

Resume: a task that completed is not run again (its completion is recorded by the executor), and inside a task a
file whose record exists and whose shards are intact is skipped, so a re-run redoes only what was lost.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from gpt2kit import executors
from gpt2kit.data.prepare_common import (
    Batch,
    DocumentReader,
    GroupWriter,
    PrepareConfig,
    PrepareError,
    PrepareResult,
    batches,
    check_same_run,
    input_files,
    single_document_share,
    tokenize_batch,
    tokenizer_record,
    validation_rows_by_position,
)
from gpt2kit.data.shards import MANIFEST_NAME, TOKENIZER_DIR, GroupInfo, Manifest, ShardError, ShardInfo, token_dtype
from gpt2kit.io import atomic_write_text, remove_stale_temporaries
from gpt2kit.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

LAYOUT = "per-file"
TASKS_DIR = ".tasks"  # under the output: per-file records, settings, the executor's logs


def validation_draw(seed: int, file_index: int, batch: Batch, val_fraction: float) -> list[int]:
    """Rows of `batch` that go to validation: each document independently with probability `val_fraction`,
    from one generator per batch seeded by (seed, file, batch); a file's batches do not depend on the tasks."""
    if val_fraction <= 0:
        return []
    draws = np.random.default_rng([seed, file_index, batch.index]).random(len(batch.docs))
    return np.flatnonzero(draws < val_fraction).tolist()


def _record_path(out: Path, file_index: int) -> Path:
    return out / TASKS_DIR / "files" / f"{file_index:06d}.json"


def _read_record(out: Path, file_index: int, source: str) -> dict | None:
    """The record of a file tokenized earlier, if it is for this file and its shards are intact."""
    path = _record_path(out, file_index)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("source") != source:
        return None
    shards = [ShardInfo(**s) for s in record["shards"]]
    try:
        Manifest({}, record["dtype"], {}, shards).verify(out, checksums=False)
    except ShardError:
        return None
    return record


class TokenizeFiles(PipelineStep):
    """A datatrove step: tokenize this task's slice of the input files into per-file shards."""

    type = "🔢 - TOKENIZE"
    name = "tokenize files"

    def __init__(self, files: list[str], out: str, tokenizer_sha: str, dtype: str, config: PrepareConfig):
        super().__init__()
        self.files, self.out, self.tokenizer_sha, self.dtype, self.config = files, out, tokenizer_sha, dtype, config

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        out = Path(self.out)
        for index in range(rank, len(self.files), world_size):
            if _read_record(out, index, self.files[index]) is not None:
                self.stat_update("files_reused")
                continue
            record = self.tokenize_file(out, index)
            self.stat_update("files")
            self.stat_update("documents", value=record["input_stats"]["documents"])
            self.stat_update("tokens", value=sum(s["num_tokens"] for s in record["shards"]))
        yield from ()

    def tokenize_file(self, out: Path, index: int) -> dict:
        config, path = self.config, Path(self.files[index])
        val_share = single_document_share([Path(f) for f in self.files], config)
        reader = DocumentReader(config.split_lines, config.text_field, config.on_bad_utf8, val_share)
        dtype = np.dtype(self.dtype)
        docs_seen = 0
        groups: list[GroupInfo] = []
        shards: list[ShardInfo] = []
        group: GroupWriter | None = None
        try:
            for batch in batches(reader.files([path]), config.batch_bytes):
                if val_share is None:
                    val_rows = validation_draw(config.seed, index, batch, config.val_fraction)
                else:
                    val_rows = validation_rows_by_position(batch, docs_seen)
                docs_seen += len(batch.docs)
                if group is None:
                    part = len(groups)
                    group = GroupWriter(out, part, batch.index, dtype, stem=f"f{index:06d}-{part:03d}")
                tokenizer_dir = str(out / TOKENIZER_DIR)
                group.add(
                    batch,
                    tokenize_batch(
                        tokenizer_dir, self.tokenizer_sha, batch.docs, batch.doc_bytes, val_rows, self.dtype
                    ),
                )
                if group.train_tokens >= config.shard_tokens:
                    info, written = group.close()
                    groups.append(info)
                    shards.extend(written)
                    group = None
            if group is not None:
                info, written = group.close()
                groups.append(info)
                shards.extend(written)
        except BaseException:
            if group is not None:
                group.abort()
            raise
        record = {
            "source": str(path),
            "dtype": self.dtype,
            "groups": [asdict(g) for g in groups],
            "shards": [asdict(s) for s in shards],
            "input_stats": reader.input_stats(),
        }
        atomic_write_text(_record_path(out, index), json.dumps(record) + "\n")
        return record


def prepare_with_tasks(
    inputs: list[str],
    tokenizer: str | Tokenizer,
    out: Path,
    config: PrepareConfig,
    executor: executors.ExecutorConfig,
    tasks: int | None = None,
) -> PrepareResult:
    """Tokenize `inputs` as `tasks` tasks (default: one per input file) on `executor`, then write the manifest."""
    start = time.perf_counter()
    if config.hf_dataset:
        raise PrepareError("a HF dataset is streamed by one process: prepare it without tasks")
    out = out.resolve()  # tasks may start in another folder, on another machine
    files = [str(p.resolve()) for p in input_files(inputs)]
    if tasks is not None and tasks < 1:
        raise PrepareError(f"tasks must be at least 1, got {tasks}")
    tasks = min(tasks or len(files), len(files))
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    tokenizer_sha = tok.sha256
    dtype = token_dtype(tok.vocab_size)
    settings = config.settings([Path(f) for f in files]) | {"layout": LAYOUT}
    tokenizer_info = tokenizer_record(tok, tokenizer_sha)
    _check_earlier_run(out, settings, tokenizer_info)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tok.save(out / TOKENIZER_DIR)
    atomic_write_text(
        out / TASKS_DIR / "settings.json", json.dumps({"settings": settings, "tokenizer": tokenizer_info})
    )

    reused = [_read_record(out, index, source) for index, source in enumerate(files)]
    step = TokenizeFiles(files, str(out), tokenizer_sha, dtype.name, config)
    stage = executors.Stage("tokenize", tasks, [step], out / TASKS_DIR / "logs" / f"tokenize-{tasks}")
    executors.run_stages([stage], executor)
    manifest = _write_manifest(out, files, settings, tokenizer_info, dtype.name)
    elapsed = time.perf_counter() - start
    groups_reused = sum(len(record["groups"]) for record in reused if record is not None)
    tokens = sum(s.num_tokens for s in manifest.shards) - sum(
        s["num_tokens"] for record in reused if record is not None for s in record["shards"]
    )
    rate = tokens / elapsed if elapsed else 0.0
    return PrepareResult(manifest, out, len(manifest.groups) - groups_reused, groups_reused, tokens, elapsed, rate)


def _check_earlier_run(out: Path, settings: dict, tokenizer: dict) -> None:
    """The earlier run's record (a task run's, or a finished streaming run's manifest) must match this one."""
    earlier = out / TASKS_DIR / "settings.json"
    if earlier.is_file():
        recorded = json.loads(earlier.read_text())
        check_same_run(out, recorded["tokenizer"], recorded["settings"], tokenizer, settings)
    elif (out / MANIFEST_NAME).is_file():
        manifest = Manifest.load(out)
        check_same_run(out, manifest.tokenizer, manifest.settings, tokenizer, settings)


def _write_manifest(out: Path, files: list[str], settings: dict, tokenizer_info: dict, dtype: str) -> Manifest:
    """The final step: every file's record, in file order, into one manifest."""
    manifest = Manifest(tokenizer_info, dtype, settings)
    totals: dict[str, int] = {}
    for index, source in enumerate(files):
        record = _read_record(out, index, source)
        if record is None:
            raise PrepareError(f"{source}: its task did not finish (run the same command again to resume)")
        for group, shards in _regrouped(record, len(manifest.groups)):
            manifest.groups.append(group)
            manifest.shards.extend(shards)
        for key, value in record["input_stats"].items():
            totals[key] = totals.get(key, 0) + value
    if totals.get("documents", 0) == 0:
        raise PrepareError(f"empty corpus: no non-empty documents in {len(files)} input files")
    if manifest.split_stats("train").num_docs == 0:
        raise PrepareError("no training documents: every document was drawn for validation; lower val_fraction")
    if settings["val_fraction"] > 0 and manifest.split_stats("val").num_docs == 0:
        log.warning(
            "no document was drawn for validation (%d documents at %s)", totals["documents"], settings["val_fraction"]
        )
    manifest.input_stats = totals
    manifest.complete = True
    manifest.save(out)
    return manifest


def _regrouped(record: dict, first_index: int):
    """A file's groups renumbered after the groups of the files before it."""
    for offset, group in enumerate(record["groups"]):
        index = first_index + offset
        shards = [ShardInfo(**s | {"group": index}) for s in record["shards"] if s["group"] == group["index"]]
        yield GroupInfo(**group | {"index": index}), shards
