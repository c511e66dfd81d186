"""Regression tests for the holes found trying to break gpt2kit: corrupt shards, stale temporaries, full disks,
oversized configs, seeds past int64, unusable --out paths, cut WARC files."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli_process, small_train_config

import gpt2kit
from gpt2kit.checkpoint import CheckpointError
from gpt2kit.data.loader import TokenWindows
from gpt2kit.data.prepare import prepare
from gpt2kit.data.shards import Manifest, ShardError, write_shard
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.train import Trainer
from gpt2kit.training_run import CHECKPOINT_DIR, TrainingError, checkpoints


@pytest.fixture
def prepared(tmp_path, tiny_tokenizer):
    from textgen import generated_text

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"{i:02d}.txt").write_text(generated_text(40, seed=i))
    common = dict(val_fraction=0.1, batch_bytes=4000, shard_tokens=3000, workers=1, progress=False)
    result = prepare([str(corpus)], tiny_tokenizer, tmp_path / "data", **common)
    return corpus, tmp_path / "data", common, result


def flip_a_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_shard_stops_training_before_it_starts(prepared):
    _, data, _, result = prepared
    shard = data / result.manifest.shards[0].file
    TokenWindows(data, "train", 16)  # fine before
    flip_a_byte(shard)
    with pytest.raises(ShardError, match="sha256 differs from the manifest"):
        TokenWindows(data, "train", 16)


def test_prepare_does_not_reuse_a_tampered_shard(prepared, tiny_tokenizer):
    corpus, data, common, first = prepared
    shard = data / first.manifest.shards[0].file
    flip_a_byte(shard)
    again = prepare([str(corpus)], tiny_tokenizer, data, **common)
    assert again.groups_written >= 1
    assert [s.sha256 for s in again.manifest.shards] == [s.sha256 for s in first.manifest.shards]
    Manifest.load(data).verify(data)


def test_token_ids_beyond_the_vocabulary_are_caught_when_the_shard_opens(prepared, tiny_tokenizer):
    _, data, _, result = prepared
    manifest = Manifest.load(data)
    info = manifest.shards[0]
    tokens = np.zeros(info.num_tokens, dtype=np.dtype(manifest.dtype))
    tokens[7] = tiny_tokenizer.vocab_size + 3  # a buggy writer, or another tokenizer
    info.sha256 = write_shard(data / info.file, tokens, info.num_docs, np.dtype(manifest.dtype))
    manifest.save(data)
    with pytest.raises(ShardError, match=f"token id {tiny_tokenizer.vocab_size + 3} is outside"):
        TokenWindows(data, info.split, 16)


def test_stale_temporary_checkpoints_are_removed_when_a_run_starts(prepared, tmp_path):
    _, data, _, _ = prepared
    run = tmp_path / "run"
    stale = run / CHECKPOINT_DIR / ".step-00000030.k2j4x9.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    half_written = run / CHECKPOINT_DIR / ".step-00000020.old"  # killed between the two renames
    half_written.mkdir()
    Trainer(small_train_config(data, run)).run()
    leftovers = [p.name for p in (run / CHECKPOINT_DIR).iterdir() if p.name.startswith(".")]
    assert leftovers == [] and [p.name for p in checkpoints(run)] == ["step-00000002", "step-00000004"]
    assert (run / CHECKPOINT_DIR / "step-00000020").exists()  # the .old was the only copy: restored, not deleted


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_older_checkpoint(prepared, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import gpt2kit.checkpoint as checkpoint_module

    _, data, _, _ = prepared
    real_save_file = checkpoint_module.save_file
    calls = []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            real_save_file(tensors, path, metadata=metadata)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as caught:
        Trainer(small_train_config(data, run)).run()
    message = str(caught.value)
    assert "\n" not in message and "No space left on device" in message and "older checkpoints are intact" in message
    assert [p.name for p in checkpoints(run)] == ["step-00000002"]
    survivor = gpt2kit.load(run / CHECKPOINT_DIR / "step-00000002").model
    assert all(torch.isfinite(p).all() for p in survivor.parameters())  # the older checkpoint loads whole
    assert not [p for p in (run / CHECKPOINT_DIR).iterdir() if p.name.endswith(".tmp")]


def test_a_config_far_larger_than_its_weights_fails_at_once(tmp_path, tiny_tokenizer):
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=32, n_layer=2, n_head=2, n_embd=16))
    gpt2kit.save(model, tiny_tokenizer, tmp_path / "m")
    for field, value, message in (("n_layer", 100_000, "n_layer is 100000, but the weights hold 2 layers"),
                                  ("n_embd", 4096, "but the weights' wte.weight is"),
                                  ("vocab_size", 10**6, "but the weights' wte.weight is")):  # fmt: skip
        config = json.loads((tmp_path / "m" / "config.json").read_text())
        (tmp_path / "m" / "config.json").write_text(json.dumps(config | {field: value, "n_head": 2}))
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=message):
            gpt2kit.load(tmp_path / "m")
        assert time.perf_counter() - start < 5
        (tmp_path / "m" / "config.json").write_text(json.dumps(config))


def test_sample_seed_beyond_int64_is_one_line(tmp_path, tiny_tokenizer):
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=32, n_layer=1, n_head=2, n_embd=16))
    gpt2kit.save(model, tiny_tokenizer, tmp_path / "m")
    result = run_cli_process("sample", "--model", tmp_path / "m", "--prompt", "a", "--seed", "99999999999999999999")
    assert result.returncode == 2 and "seed" in result.stderr and "64-bit" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_out_paths_that_cannot_be_used_are_one_line(tmp_path):
    from gpt2kit.cli import main

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    corpus = tmp_path / "c.txt"
    corpus.write_text("some words here " * 10)
    cases = [
        (["prepare", "--input", corpus, "--out", a_file], "exists and is not a directory"),
        (["prepare", "--input", corpus, "--out", a_file / "sub"], f"because {a_file} is a file"),
        (["tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", a_file], "not a directory"),
        (["overlap", "build", "--corpus", corpus, "--out", tmp_path], "is a directory, not a file"),
        (["synth", "--out", a_file / "x" / "y"], f"because {a_file} is a file"),
    ]
    for args, message in cases:
        result = run_cli_process(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Errno" not in result.stderr and result.stderr.count("\n") == 1, args
    assert main(["prepare", "--input", str(corpus), "--out", str(a_file)]) == 2
    # An output file that exists is replaced when it is this command's own earlier output, as a second
    # `overlap build` does; a file of the user's is not.
    assert main(["overlap", "build", "--corpus", str(corpus), "--out", str(a_file)]) == 2
    assert a_file.read_text() == "x"
    for _ in range(2):
        assert main(["overlap", "build", "--corpus", str(corpus), "--out", str(tmp_path / "f.bloom")]) == 0


def test_a_cut_warc_record_is_counted_as_truncated(tmp_path):
    pytest.importorskip("warcio")
    from warcio.archiveiterator import ArchiveIterator

    from gpt2kit.webtext.config import WebTextConfig
    from gpt2kit.webtext.pipeline import build_webtext
    from tests.test_webtext import stage_table, write_warc

    whole = tmp_path / "whole.warc.gz"
    write_warc(whole, "")
    data = whole.read_bytes()
    with open(whole, "rb") as handle:
        records = ArchiveIterator(handle)
        offsets = [records.get_record_offset() for _ in records]
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: (offsets[1] + offsets[2]) // 2])  # the second record's gzip member ends early
    out = tmp_path / "out"
    build_webtext(WebTextConfig(input_kind="warc", inputs=[str(cut)], out=str(out), workers=1))
    total, kept, removed = stage_table(out)["read"]
    assert removed.get("truncated") == 1 and (total, kept) == (2, 1)


def test_atomic_writes_publish_ordinary_permissions(tmp_path):
    import os

    from gpt2kit.io import atomic_directory, atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "a").write_text("1")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_run_directory_is_a_model_everywhere(prepared, tmp_path, caplog):
    import logging
    import shutil

    from gpt2kit.cli import main

    _, data, _, _ = prepared
    run = tmp_path / "run"
    Trainer(small_train_config(data, run)).run()
    assert (run / "final" / "config.json").exists() and not (run / "final" / "training_state.pt").exists()
    with caplog.at_level(logging.INFO, logger="gpt2kit"):
        loaded = gpt2kit.load(run)
    assert loaded.path == run / "final" and "using its final model" in caplog.text
    assert main(["sample", "--model", str(run), "--prompt", "a", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    shutil.rmtree(run / "final")  # a run still going (or killed): its newest checkpoint
    loaded = gpt2kit.load(run)
    assert loaded.path == run / CHECKPOINT_DIR / "step-00000004"
    assert any("newest checkpoint, step-00000004" in note for note in loaded.notes)
    (tmp_path / "empty-run" / CHECKPOINT_DIR).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="a training run without a finished checkpoint"):
        gpt2kit.load(tmp_path / "empty-run")
