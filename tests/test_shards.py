import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2kit.data.prepare import PrepareError, prepare
from gpt2kit.data.shards import (
    HEADER,
    Manifest,
    ShardError,
    load_manifest,
    open_tokens,
    read_header,
    token_dtype,
    write_shard,
)
from gpt2kit.errors import GPT2KitError

ROOT = Path(__file__).resolve().parents[1]


def write_docs(directory: Path, docs: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(docs):
        (directory / f"doc{i:03d}.txt").write_text(text)
    return directory


DOCS = [f"Document number {i}. The river crossed the bridge {i} times, said the merchant.\n" for i in range(40)]


def shard_tokens(out: Path, split: str) -> list[int]:
    manifest = Manifest.load(out)
    return [int(t) for path in manifest.shard_paths(out, split) for t in open_tokens(path)]


# -- the shard format -------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size,dtype", [(50257, np.uint16), (65536, np.uint16), (100_000, np.uint32)])
def test_shard_round_trip_and_dtype(tmp_path, vocab_size, dtype):
    assert token_dtype(vocab_size) == dtype
    tokens = np.array([0, 1, vocab_size - 1, 7], dtype=dtype)
    sha = write_shard(tmp_path / "s.bin", tokens, num_docs=2, dtype=dtype)
    header = read_header(tmp_path / "s.bin")
    assert (header.version, header.dtype, header.num_tokens, header.num_docs) == (1, np.dtype(dtype), 4, 2)
    assert open_tokens(tmp_path / "s.bin").tolist() == tokens.tolist()
    assert len(sha) == 64 and (tmp_path / "s.bin").stat().st_size == HEADER.size + 4 * np.dtype(dtype).itemsize
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_shards_get_one_clear_error(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(10, dtype=np.uint16), 1, np.uint16)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(ShardError, match="truncated or padded shard: header says 10 tokens"):
        read_header(path)
    path.write_bytes(b"NOTASHRD" + data[8:])
    with pytest.raises(ShardError, match="not a gpt2kit token shard"):
        read_header(path)
    path.write_bytes(data[:10])
    with pytest.raises(ShardError, match="shorter than the 32-byte header"):
        read_header(path)
    path.write_bytes(data[:8] + (99).to_bytes(4, "little") + data[12:])
    with pytest.raises(ShardError, match="format version 99"):
        read_header(path)
    with pytest.raises(ShardError, match="shard is missing"):
        read_header(tmp_path / "nope.bin")


# -- prepare ------------------------------------------------------------------------------------


def test_prepare_writes_documents_with_endoftext_and_a_manifest(tmp_path, tiny_tokenizer):
    corpus = write_docs(tmp_path / "corpus", DOCS)
    result = prepare([str(corpus)], tiny_tokenizer, tmp_path / "out", val_fraction=0.1, workers=1, progress=False)
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.complete and manifest.tokenizer["sha256"] == tiny_tokenizer.sha256
    assert manifest.dtype == "uint16"
    train, val = manifest.split_stats("train"), manifest.split_stats("val")
    assert (train.num_docs, val.num_docs) == (36, 4)  # ceil(40 * 0.1) documents go to validation
    everything = shard_tokens(tmp_path / "out", "train") + shard_tokens(tmp_path / "out", "val")
    eot = tiny_tokenizer.eot_token
    assert everything.count(eot) == 40
    decoded = sorted(tiny_tokenizer.decode(ids) for ids in _split_on(everything, eot))
    assert decoded == sorted(DOCS)
    assert train.num_bytes == sum(len(d.encode()) for d in DOCS) - val.num_bytes
    assert train.bytes_per_token == pytest.approx(train.num_bytes / train.num_tokens)
    values = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert values["splits"]["val"]["bytes_per_token"] > 0
    for shard in manifest.shards:
        assert len(shard.sha256) == 64
    manifest.verify(tmp_path / "out", checksums=True)
    assert result.groups_written == 1 and result.tokens_written == len(everything)
    # A flipped byte keeps the header valid; only the checksum notices.
    shard = tmp_path / "out" / manifest.shards[0].file
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    manifest.verify(tmp_path / "out", checksums=False)
    with pytest.raises(ShardError, match="sha256 differs from the manifest"):
        manifest.verify(tmp_path / "out")
    manifest.complete = False
    manifest.save(tmp_path / "out")
    with pytest.raises(ShardError, match="preparation did not finish"):
        load_manifest(tmp_path / "out")


def _split_on(tokens: list[int], eot: int) -> list[list[int]]:
    docs, current = [], []
    for token in tokens:
        if token == eot:
            docs.append(current)
            current = []
        else:
            current.append(token)
    return docs


def test_split_is_deterministic_by_seed(tmp_path, tiny_tokenizer):
    corpus = write_docs(tmp_path / "corpus", DOCS)
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        prepare([str(corpus)], tiny_tokenizer, tmp_path / name, val_fraction=0.2, seed=seed, workers=1, progress=False)
        runs[name] = shard_tokens(tmp_path / name, "val")
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_two_workers_write_the_same_shards_as_one(tmp_path, tiny_tokenizer):
    corpus = write_docs(tmp_path / "corpus", DOCS * 3)
    common = dict(val_fraction=0.05, batch_bytes=500, shard_tokens=2000, progress=False)
    one = prepare([str(corpus)], tiny_tokenizer, tmp_path / "one", workers=1, **common)
    two = prepare([str(corpus)], tiny_tokenizer, tmp_path / "two", workers=2, **common)
    assert len(one.manifest.groups) > 2
    assert [s.sha256 for s in one.manifest.shards] == [s.sha256 for s in two.manifest.shards]


def test_rerun_skips_finished_shards_and_redoes_missing_ones(tmp_path, tiny_tokenizer):
    corpus = write_docs(tmp_path / "corpus", DOCS * 3)
    out = tmp_path / "out"
    common = dict(val_fraction=0.05, batch_bytes=500, shard_tokens=2000, workers=1, progress=False)
    first = prepare([str(corpus)], tiny_tokenizer, out, **common)
    groups = len(first.manifest.groups)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    again = prepare([str(corpus)], tiny_tokenizer, out, **common)
    assert (again.groups_reused, again.groups_written) == (groups, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")} == mtimes
    # A run killed after two groups: its manifest lists two groups, the later shards are gone.
    manifest = Manifest.load(out)
    manifest.groups = manifest.groups[:2]
    kept = {s.file for s in manifest.shards if s.group < 2}
    manifest.shards = [s for s in manifest.shards if s.file in kept]
    manifest.complete = False
    manifest.save(out)
    for path in out.glob("*.bin"):
        if path.name not in kept:
            path.unlink()
    resumed = prepare([str(corpus)], tiny_tokenizer, out, **common)
    assert (resumed.groups_reused, resumed.groups_written) == (2, groups - 2)
    assert [s.sha256 for s in resumed.manifest.shards] == [s.sha256 for s in first.manifest.shards]
    assert all(out.joinpath(name).stat().st_mtime_ns == mtimes[name] for name in kept)


def test_rerun_with_other_settings_or_tokenizer_is_refused(tmp_path, tiny_tokenizer, gpt2_tokenizer):
    corpus = write_docs(tmp_path / "corpus", DOCS)
    prepare([str(corpus)], tiny_tokenizer, tmp_path / "out", workers=1, progress=False)
    with pytest.raises(PrepareError, match=r"holds shards made with tokenizer .* write to another directory"):
        prepare([str(corpus)], gpt2_tokenizer, tmp_path / "out", workers=1, progress=False)
    with pytest.raises(PrepareError, match="prepared with seed=0, now 5"):
        prepare([str(corpus)], tiny_tokenizer, tmp_path / "out", seed=5, workers=1, progress=False)


def test_split_lines_and_jsonl_gz_zst_parquet(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    lines = tmp_path / "lines.txt"
    lines.write_text("first line\n\nsecond line\nthird line\n")
    result = prepare(
        [str(lines)], tiny_tokenizer, tmp_path / "a", split_lines=True, val_fraction=0, workers=1, progress=False
    )
    assert result.manifest.split_stats("train").num_docs == 3
    assert result.manifest.input_stats["empty_skipped"] == 1

    rows = [{"body": f"row {i} of json", "id": i} for i in range(5)]
    payload = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "j" / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    pq.write_table(pa.table({"body": [r["body"] for r in rows]}), tmp_path / "j" / "c.parquet")
    result = prepare(
        [str(tmp_path / "j")],
        tiny_tokenizer,
        tmp_path / "b",
        text_field="body",
        val_fraction=0,
        workers=1,
        progress=False,
    )
    assert result.manifest.split_stats("train").num_docs == 15
    text = tiny_tokenizer.decode(shard_tokens(tmp_path / "b", "train"))
    assert text.count("row 3 of json") == 3


def test_hf_dataset_streams_a_local_dataset(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    data = tmp_path / "local-dataset"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": f"story {i} ends here"}) + "\n" for i in range(7)))
    result = prepare(
        [],
        tiny_tokenizer,
        tmp_path / "out",
        hf_dataset=str(data),
        hf_split="train",
        val_fraction=0,
        workers=1,
        progress=False,
    )
    assert result.manifest.split_stats("train").num_docs == 7
    assert "story 6 ends here" in tiny_tokenizer.decode(shard_tokens(tmp_path / "out", "train"))
    with pytest.raises(PrepareError, match="no field 'content'"):
        prepare(
            [], tiny_tokenizer, tmp_path / "o2", hf_dataset=str(data), text_field="content", workers=1, progress=False
        )


def test_bad_utf8_policies_and_counts(tmp_path, tiny_tokenizer):
    corpus = write_docs(tmp_path / "corpus", DOCS[:5])
    (corpus / "bad.txt").write_bytes(b"good start \xff\xfe bad bytes")
    with pytest.raises(PrepareError, match=r"bad.txt: not UTF-8 \(byte 11\)"):
        prepare([str(corpus)], tiny_tokenizer, tmp_path / "e", on_bad_utf8="error", workers=1, progress=False)
    replaced = prepare([str(corpus)], tiny_tokenizer, tmp_path / "r", val_fraction=0, workers=1, progress=False)
    assert replaced.manifest.input_stats["bad_utf8_replaced"] == 1
    assert "good start \ufffd\ufffd bad bytes" in tiny_tokenizer.decode(shard_tokens(tmp_path / "r", "train"))
    skipped = prepare(
        [str(corpus)], tiny_tokenizer, tmp_path / "s", on_bad_utf8="skip", val_fraction=0, workers=1, progress=False
    )
    assert skipped.manifest.input_stats["bad_utf8_skipped"] == 1
    assert skipped.manifest.split_stats("train").num_docs == 5


def test_bad_input_errors(tmp_path, tiny_tokenizer):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("  \n\n")
    with pytest.raises(PrepareError, match="empty corpus"):
        prepare([str(empty)], tiny_tokenizer, tmp_path / "o1", workers=1, progress=False)
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(PrepareError, match=r"rows.jsonl:2: no field 'text' \(fields here: body"):
        prepare([str(tmp_path / "rows.jsonl")], tiny_tokenizer, tmp_path / "o2", workers=1, progress=False)
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(GPT2KitError, match=r"broken.jsonl:2: not valid JSON"):
        prepare([str(tmp_path / "broken.jsonl")], tiny_tokenizer, tmp_path / "o3", workers=1, progress=False)
    with pytest.raises(GPT2KitError, match="no such file or directory"):
        prepare([str(tmp_path / "missing.txt")], tiny_tokenizer, tmp_path / "o4", workers=1, progress=False)
    with pytest.raises(GPT2KitError, match="no files match"):
        prepare([str(tmp_path / "*.nothing")], tiny_tokenizer, tmp_path / "o5", workers=1, progress=False)
    (tmp_path / "one.jsonl").write_text('{"text": "a single document"}\n')
    with pytest.raises(PrepareError, match="no training documents"):
        prepare(
            [str(tmp_path / "one.jsonl")], tiny_tokenizer, tmp_path / "o6", workers=1, progress=False, val_fraction=0.5
        )


def test_cli_prepare_and_its_one_line_error(tmp_path, tiny_tokenizer):
    corpus = write_docs(tmp_path / "corpus", DOCS)
    tiny_tokenizer.save(tmp_path / "tok")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "gpt2kit", "prepare", "--input", str(corpus), "--tokenizer", str(tmp_path / "tok")]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "out"), "--val-fraction", "0.1", "--workers", "1", "--seed", "3", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "train: 36 documents" in done.stdout and "val: 4 documents" in done.stdout
    (corpus / "bad.txt").write_bytes(b"\xc3\x28")
    failed = subprocess.run(
        [*command, "--out", str(tmp_path / "o2"), "--on-bad-utf8", "error", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and "bad.txt: not UTF-8" in failed.stderr
