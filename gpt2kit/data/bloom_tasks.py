"""`gpt2kit overlap build` as tasks: a Bloom filter sharded by hash, built by map and reduce tasks on any executor.

At the paper's false-positive bound of 1e-8 a filter needs about 48 bits per 8-gram: 48 GB for WebText's
8 billion, far more than one process should hold. Here the 8-grams are split into S shards by `shard_of` (a hash
of the fingerprint), and:

1. map: task `rank` hashes the corpus files whose index is `rank` modulo the task count and appends each 8-gram's
   64-bit fingerprint to its shard's bucket, one bucket file per (shard, input file), published atomically when
   the file is done, with a record of its document and 8-gram counts;
2. reduce: task s reads shard s's buckets, sizes its filter from their exact count (no counting pass), inserts
   them a chunk at a time and writes the shard's filter file. Memory: one shard's bits plus one chunk.

The output `OUT` is, for S = 1, a filter file like `build_filter`'s; for S > 1, an index naming the shard files
`OUT.shard-SSSSS-of-TTTTT` beside it. `BloomFilter.open` reads either. Work files live in `OUT.work` and are
deleted after a build succeeds; completed tasks and finished files are skipped when a build is run again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from gpt2kit import executors
from gpt2kit.data.bloom import (
    BLOOM_FILTER,
    FORMAT_VERSION,
    HASH_SCHEME,
    INSERT_CHUNK,
    NGRAM,
    NORMALISATION,
    BloomFilter,
    BloomParams,
    bloom_params,
    document_fingerprints,
    insert_fingerprints,
    shard_of,
    write_filter,
    write_shard_index,
)
from gpt2kit.data.corpus import TEXT_AND_JSONL, corpus_files, largest_first
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_write_text, remove_stale_temporaries
from gpt2kit.outputs import claimed_file

SHARD_HASH = "splitmix64(fingerprint ^ salt), top 32 bits multiply-shifted onto the shards"
BUCKET_FLUSH = 1 << 20  # fingerprints held per map task before they are appended to their buckets


def shard_file_name(out: Path, shard: int, shards: int) -> str:
    return f"{out.name}.shard-{shard:05d}-of-{shards:05d}"


class HashCorpus(PipelineStep):
    """Map: this task's slice of the corpus files into per-shard buckets of fingerprints."""

    type = "#️⃣ - HASH"
    name = "8-gram fingerprints"

    def __init__(self, files: list[str], work: str, shards: int, text_field: str):
        super().__init__()
        self.files, self.work, self.shards, self.text_field = files, work, shards, text_field

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        work = Path(self.work)
        for index in range(rank, len(self.files), world_size):
            record = work / "files" / f"{index:06d}.json"
            if record.is_file():
                self.stat_update("files_reused")
                continue
            documents, ngrams = self.hash_file(work, index)
            atomic_write_text(
                record, json.dumps({"source": self.files[index], "documents": documents, "ngrams": ngrams})
            )
            self.stat_update("files")
            self.stat_update("ngrams", value=ngrams)
        yield from ()

    def hash_file(self, work: Path, index: int) -> tuple[int, int]:
        """Append the file's fingerprints to temporary buckets, then publish them all under their final names."""
        buckets = [work / "buckets" / f"{shard:05d}" / f"{index:06d}.u64" for shard in range(self.shards)]
        temporary = [bucket.with_name(f".{bucket.name}.tmp") for bucket in buckets]
        for path in temporary:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        documents = ngrams = 0
        pending: list[np.ndarray] = []
        held = 0
        for started, fingerprints in document_fingerprints(Path(self.files[index]), self.text_field):
            documents += started
            ngrams += len(fingerprints)
            pending.append(fingerprints)
            held += len(fingerprints)
            if held >= BUCKET_FLUSH:
                self._append(np.concatenate(pending), temporary)
                pending, held = [], 0
        if held:
            self._append(np.concatenate(pending), temporary)
        for path, bucket in zip(temporary, buckets, strict=True):
            os.replace(path, bucket)
        return documents, ngrams

    def _append(self, fingerprints: np.ndarray, paths: list[Path]) -> None:
        which = shard_of(fingerprints, self.shards)
        order = np.argsort(which, kind="stable")
        fingerprints, which = fingerprints[order], which[order]
        bounds = np.searchsorted(which, np.arange(self.shards + 1))
        for shard, path in enumerate(paths):
            if bounds[shard + 1] > bounds[shard]:
                with open(path, "ab") as handle:
                    handle.write(fingerprints[bounds[shard] : bounds[shard + 1]].astype("<u8").tobytes())


class BuildShard(PipelineStep):
    """Reduce: shard s's buckets into its filter file, sized for their exact count."""

    type = "🧮 - BLOOM"
    name = "filter shard"

    def __init__(self, work: str, out: str, shards: int, fpr: float):
        super().__init__()
        self.work, self.out, self.shards, self.fpr = work, out, shards, fpr

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        for shard in range(rank, self.shards, world_size):
            self.stat_update("ngrams", value=self.build(shard))
        yield from ()

    def build(self, shard: int) -> int:
        buckets = sorted((Path(self.work) / "buckets" / f"{shard:05d}").glob("*.u64"))
        count = sum(path.stat().st_size for path in buckets) // 8
        params = bloom_params(count, self.fpr)
        bits = np.zeros(params.nbytes, dtype=np.uint8)
        for path in buckets:
            values = np.memmap(path, dtype="<u8", mode="r") if path.stat().st_size else np.empty(0, "<u8")
            for start in range(0, len(values), INSERT_CHUNK):
                insert_fingerprints(bits, np.asarray(values[start : start + INSERT_CHUNK], dtype=np.uint64), params)
        header = asdict(params) | {
            "version": FORMAT_VERSION,
            "ngram": NGRAM,
            "hash": HASH_SCHEME,
            "normalisation": NORMALISATION,
            "items_inserted": count,
            "shard": shard,
            "shards": self.shards,
            "shard_hash": SHARD_HASH,
        }
        out = Path(self.out)
        target = out if self.shards == 1 else out.with_name(shard_file_name(out, shard, self.shards))
        write_filter(target, header, memoryview(bits))
        return count


def k_range(shards: list[BloomParams]) -> str:
    """The shards' number of hash functions: one value, or the lowest and highest."""
    ks = sorted({p.k for p in shards})
    return str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"


@dataclass
class ShardedBuildResult:
    path: Path
    shards: list[BloomParams]
    files: int
    documents: int
    ngrams: int
    seconds: float
    tasks: int

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.shards)

    @property
    def fpr_bound(self) -> float:
        return max(p.fpr_bound for p in self.shards)

    @property
    def ngrams_per_second(self) -> float:
        return self.ngrams / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> list[str]:
        """What the build made, for people: the counts, the shards' size and bound, the speed."""
        return [
            f"{self.ngrams:,} 8-grams from {self.documents:,} documents in {self.files} files -> {self.path}",
            f"{len(self.shards)} shards, {self.nbytes / 1e6:.1f} MB, k={k_range(self.shards)}, "
            f"false-positive bound {self.fpr_bound:.2e}",
            f"build: {self.seconds:.1f} s, {self.ngrams_per_second:,.0f} 8-grams/s with {self.tasks} map tasks",
        ]


def build_sharded_filter(
    corpus: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    shards: int = 1,
    fpr: float = 1e-8,
    text_field: str = "text",
    executor: executors.ExecutorConfig | None = None,
    tasks: int | None = None,
) -> ShardedBuildResult:
    """Build the corpus's 8-gram filter as `tasks` map tasks (default: one per file) and `shards` reduce tasks."""
    if shards < 1:
        raise GPT2KitError(f"shards must be at least 1, got {shards}")
    if tasks is not None and tasks < 1:
        raise GPT2KitError(f"tasks must be at least 1, got {tasks}")
    if not 0.0 < fpr < 1.0:
        raise GPT2KitError(f"the false-positive rate must be in (0, 1), got {fpr}")
    start = time.perf_counter()
    with claimed_file(out, BLOOM_FILTER) as out:  # one writer: a build clears its own temporaries and shards
        files = [str(p.resolve()) for p in largest_first(corpus_files(corpus, TEXT_AND_JSONL))]
        tasks = min(tasks or len(files), len(files))
        work = out.with_name(out.name + ".work")
        executors.reset_work_folder(work, executors.work_fingerprint([shards, fpr, text_field], files))
        remove_stale_temporaries(out.parent, [out.name])
        stages = [
            executors.Stage("hash", tasks, [HashCorpus(files, str(work), shards, text_field)], work / "logs" / "hash"),
            executors.Stage("filter", shards, [BuildShard(str(work), str(out), shards, fpr)], work / "logs" / "filter"),
        ]
        executors.run_stages(stages, executor or executors.ExecutorConfig())
        return _finish(out, work, files, shards, fpr, tasks, time.perf_counter() - start)


def _finish(out: Path, work: Path, files: list[str], shards: int, fpr: float, tasks: int, seconds: float):
    records = [json.loads((work / "files" / f"{i:06d}.json").read_text()) for i in range(len(files))]
    documents = sum(r["documents"] for r in records)
    ngrams = sum(r["ngrams"] for r in records)
    if ngrams == 0:
        raise GPT2KitError(f"no 8-grams in the corpus ({len(files)} files with fewer than 8 words of text)")
    names = [out.name] if shards == 1 else [shard_file_name(out, s, shards) for s in range(shards)]
    headers = [BloomFilter.open_file(out.parent / name).header for name in names]
    params = [BloomParams(**{key: h[key] for key in BloomParams.__dataclass_fields__}) for h in headers]
    if shards > 1:
        write_shard_index(
            out,
            {
                "version": FORMAT_VERSION,
                "ngram": NGRAM,
                "hash": HASH_SCHEME,
                "shard_hash": SHARD_HASH,
                "normalisation": NORMALISATION,
                "shards": shards,
                "shard_files": names,
                "items_inserted": ngrams,
                "documents": documents,
                "files": len(files),
                "m": sum(p.m for p in params),
                "k": k_range(params),
                "fpr": fpr,
                "fpr_bound": max(p.fpr_bound for p in params),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
    for stale in out.parent.glob(f"{out.name}.shard-*-of-*"):  # shards of an earlier build with another count
        if stale.name not in names:
            stale.unlink()
    shutil.rmtree(work, ignore_errors=True)
    return ShardedBuildResult(out, params, len(files), documents, ngrams, seconds, tasks)
