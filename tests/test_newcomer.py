"""What a newcomer does first, as nanoGPT's README has them do it: prepare tiny-shakespeare (one file, one
document) and train on the defaults."""

import logging

import numpy as np
import pytest
from conftest import shared_file
from helpers import small_train_config

from gpt2kit.data.prepare import prepare
from gpt2kit.data.prepare_common import split_by_position
from gpt2kit.data.shards import open_tokens
from gpt2kit.train import train


def split_tokens(data, split):
    from gpt2kit.data.shards import load_manifest

    manifest = load_manifest(data)
    return np.concatenate([open_tokens(data / s.file) for s in manifest.shards if s.split == split])


@pytest.mark.parametrize("tasks", [None, 1])
def test_a_single_document_is_split_by_position(tmp_path, tiny_tokenizer, caplog, tasks):
    text_file = shared_file("train/tinyshakespeare/input.txt")
    text = text_file.read_text()
    with caplog.at_level(logging.INFO, logger="gpt2kit"):
        result = prepare([str(text_file)], tiny_tokenizer, tmp_path / "data", tasks=tasks, workers=1, progress=False)
    assert any("is one document: split by position" in r.getMessage() for r in caplog.records)
    manifest = result.manifest
    assert manifest.split_stats("train").num_docs == 1 and manifest.split_stats("val").num_docs == 1
    train_part, val_part = split_by_position(text, 0.1)  # the default 0.005 is raised to nanoGPT's tenth
    assert train_part + val_part == text and train_part.endswith("\n")
    assert abs(len(val_part) / len(text) - 0.1) < 0.001
    eot = tiny_tokenizer.eot_token
    assert split_tokens(tmp_path / "data", "val").tolist() == tiny_tokenizer.encode(val_part) + [eot]
    assert split_tokens(tmp_path / "data", "train").tolist() == tiny_tokenizer.encode(train_part) + [eot]
    config = small_train_config(tmp_path / "data", tmp_path / "run", eval_interval=2, eval_windows=2)
    assert train(config).val_loss is not None  # trains, and validates on the held-out tenth


def test_position_split_keeps_lines_and_words_whole():
    assert split_by_position("one\ntwo\nthree\nfour\n", 0.3) == ("one\ntwo\nthree\n", "four\n")
    assert split_by_position("alpha beta gamma delta", 0.2) == ("alpha beta gamma ", "delta")
    assert split_by_position("x" * 10, 0.2) == ("x" * 8, "xx")


def test_train_runs_on_the_defaults_without_a_config(data_dir, tmp_path, run_cli):
    result = run_cli("train", "--data", data_dir, "--out", tmp_path / "run", "--set", "max_steps=2",
                     "batch_tokens=2048", "eval_interval=0", "progress=false", "device=cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no --config: training on the defaults: preset cpu-6m, context the model's, 2 steps" in result.stdout
    assert (tmp_path / "run" / "final" / "config.json").exists()
