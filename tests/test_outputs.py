"""The output policy: nothing a command did not write is deleted or overwritten, and one writer at a time."""

import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import saved_model

from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_directory
from gpt2kit.outputs import (
    HOLDER_NAME,
    PREPARED_DATA,
    TRAINING_RUN,
    OutputBusy,
    OutputError,
    OutputExists,
    claim_directory,
)


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer):
    return saved_model(tmp_path / "model", tiny_tokenizer, n_layer=1, n_embd=16, n_positions=32)


def a_run_directory(root):
    """What a training run leaves: checkpoints, metrics, its config and a note of the user's."""
    run = root / "victim"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "checkpoints" / "step-00000010" / "training_state.pt").write_bytes(b"state")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "notes.txt").write_text("mine")
    return run


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_convert_into_a_run_directory_is_refused_and_nothing_is_lost(tmp_path, model_dir, run_cli):
    run = a_run_directory(tmp_path)
    before = snapshot(run)
    for extra in ((), ("--overwrite",)):
        code, _, err = run_cli("convert", model_dir, run, *extra)
        assert code == 2
        assert "is not a model directory" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_convert_into_the_current_directory_is_refused(tmp_path, model_dir, run_cli, monkeypatch):
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (".", "..", str(work)):
        code, _, err = run_cli("convert", model_dir, target)
        assert code == 2 and "current directory" in err, err
    assert list(work.iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))


def test_an_existing_model_is_replaced_only_with_overwrite(tmp_path, model_dir, run_cli):
    target = tmp_path / "copy"
    assert run_cli("convert", model_dir, target)[0] == 0
    code, _, err = run_cli("convert", model_dir, target)
    assert code == 2 and "already holds a model" in err and "--overwrite" in err
    assert run_cli("convert", model_dir, target, "--overwrite")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "model"]  # no temporaries left


def test_file_targets_of_another_kind_are_never_replaced(tmp_path, model_dir, run_cli):
    precious = tmp_path / "model.gguf"
    precious.write_text("not a model")
    code, _, err = run_cli("convert", model_dir, precious, "--overwrite")
    assert code == 2 and "is not a gguf model file" in err
    assert precious.read_text() == "not a model"


def test_symlinks_and_devices_are_refused_as_targets(tmp_path, model_dir, run_cli):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    code, _, err = run_cli("convert", model_dir, tmp_path / "link")
    assert code == 2 and "symbolic link" in err
    assert (tmp_path / "link").is_symlink()
    code, _, err = run_cli("convert", model_dir, "/dev/null", "--to", "llmc")
    assert code == 2 and "not a regular file" in err


def test_saved_weights_are_readable_like_the_other_files(model_dir):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in model_dir.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]


def test_a_replaced_directory_is_swapped_in_one_step(tmp_path, monkeypatch):
    """With the exchange, no moment has neither the old nor the new directory at the path."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    seen = []
    real_replace = os.replace

    def watching_replace(a, b):
        seen.append(target.exists())
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", watching_replace)
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "new"
    assert all(seen) and not list(tmp_path.glob(".*"))


def test_a_kill_between_the_fallback_renames_is_repaired_on_the_next_write(tmp_path):
    target = tmp_path / "model"
    old = tmp_path / ".model.old"
    old.mkdir()
    (old / "config.json").write_text("old")  # what the fallback leaves when killed between its renames
    with pytest.raises(RuntimeError):
        with atomic_directory(target):
            raise RuntimeError("the next write fails too")
    assert (target / "config.json").read_text() == "old"


def test_a_directory_of_the_users_is_not_claimed(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="is not a training run"):
        claim_directory(mine, TRAINING_RUN)
    with claim_directory(tmp_path / "run", TRAINING_RUN):
        pass
    with pytest.raises(OutputError, match="gpt2kit train"):
        claim_directory(tmp_path / "run", PREPARED_DATA)
    assert isinstance(OutputExists("x"), GPT2KitError)


HOLD = textwrap.dedent(
    """
    import sys, time
    from gpt2kit.outputs import TRAINING_RUN, claim_directory
    claim = claim_directory(sys.argv[1], TRAINING_RUN)
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def hold_in_another_process(path, seconds):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = hold_in_another_process(tmp_path / "run", 60)
    try:
        with pytest.raises(OutputBusy, match=f"process {holder.pid} "):
            claim_directory(tmp_path / "run", TRAINING_RUN)
    finally:
        holder.kill()
        holder.wait()
    # A killed holder's lock dies with it: the next writer goes ahead at once.
    start = time.monotonic()
    with claim_directory(tmp_path / "run", TRAINING_RUN) as claim:
        holder_record = json.loads((claim.directory / HOLDER_NAME).read_text())
        assert holder_record["pid"] == os.getpid()
    assert time.monotonic() - start < 5


def test_two_trainings_on_one_run_directory(tmp_path, data_dir, run_cli):
    holder = hold_in_another_process(tmp_path / "run", 60)
    try:
        code, _, err = run_cli(
            "train", "--config", "cpu-smoke", "--data", data_dir, "--out", tmp_path / "run", "--set", "max_steps=1"
        )
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"process {holder.pid}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_two_prepares_on_one_directory(tmp_path, tiny_tokenizer, run_cli):
    from gpt2kit.data.prepare import prepare

    (tmp_path / "corpus.txt").write_text("some words here\n" * 50)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD.replace("TRAINING_RUN", "PREPARED_DATA"), str(tmp_path / "data"), "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(OutputBusy, match=f"process {holder.pid} "):
            prepare([str(tmp_path / "corpus.txt")], tiny_tokenizer, tmp_path / "data", workers=1, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "data" / "manifest.json").exists()


def test_prepare_and_train_refuse_a_directory_of_the_users(tmp_path, tiny_tokenizer, data_dir, run_cli):
    from gpt2kit.data.prepare import prepare

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    (tmp_path / "corpus.txt").write_text("some words here\n" * 50)
    with pytest.raises(OutputError, match="is not prepared token shards"):
        prepare([str(tmp_path / "corpus.txt")], tiny_tokenizer, mine, workers=1, progress=False)
    code, _, err = run_cli("train", "--config", "cpu-smoke", "--data", data_dir, "--out", mine, "--set", "max_steps=1")
    assert code == 2 and "is not a training run" in err
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]


def test_the_demo_never_clears_a_directory_of_the_users(tmp_path, run_cli):
    mine = tmp_path / "project"
    (mine / "runs").mkdir(parents=True)
    (mine / "runs" / "important.txt").write_text("x")
    code, _, err = run_cli("demo", "--quick", "--out", mine)
    assert code == 2 and "is not the demo's output" in err
    assert (mine / "runs" / "important.txt").read_text() == "x"


def test_file_outputs_replace_only_their_own_kind(tmp_path):
    from gpt2kit.evals.runner import write_results, write_samples

    results = {"lambada": {"metrics": {"acc": 0.5}}}
    write_results(results, tmp_path / "results.json")
    write_results(results, tmp_path / "results.json")  # an earlier result is replaced
    essay = tmp_path / "essay.json"
    essay.write_text('{"title": "mine"}')
    with pytest.raises(OutputError, match="is not gpt2kit eval results"):
        write_results(results, essay)
    with pytest.raises(OutputError, match="is not gpt2kit eval samples"):
        write_samples([{"task": "x"}], essay)
    assert essay.read_text() == '{"title": "mine"}'


def test_the_overlap_filter_is_never_written_over_a_users_file(tmp_path, run_cli):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one two three four five six seven eight nine ten\n" * 20)
    precious = tmp_path / "filter.bin"
    precious.write_text("mine")
    for extra in ((), ("--shards", "2")):
        code, _, err = run_cli("overlap", "build", "--corpus", corpus, "--out", precious, *extra)
        assert code == 2 and "is not a gpt2kit 8-gram filter" in err, err
    assert precious.read_text() == "mine"
    assert run_cli("overlap", "build", "--corpus", corpus, "--out", tmp_path / "new.bloom")[0] == 0
    assert run_cli("overlap", "build", "--corpus", corpus, "--out", tmp_path / "new.bloom")[0] == 0


def test_a_work_folder_of_the_users_is_never_cleared(tmp_path):
    from gpt2kit.executors import reset_work_folder

    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("x")
    with pytest.raises(OutputError, match="is not a job's work folder"):
        reset_work_folder(work, "fingerprint-1")
    assert (work / "data.csv").read_text() == "x"
    reset_work_folder(tmp_path / "fresh", "fingerprint-1")
    (tmp_path / "fresh" / "partial").write_text("x")
    reset_work_folder(tmp_path / "fresh", "fingerprint-2")  # its own folder is reset
    assert not (tmp_path / "fresh" / "partial").exists()


def users_directory(root):
    mine = root / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    return mine


def test_webtext_build_demonstrations_and_sweep_refuse_a_directory_of_the_users(tmp_path):
    from gpt2kit.data.demonstrations import find_demonstrations
    from gpt2kit.study.sweep import SweepConfig, run_sweep
    from gpt2kit.webtext import WebTextConfig, build_webtext

    mine = users_directory(tmp_path)
    (tmp_path / "links.txt").write_text("http://127.0.0.1:9/a\n")
    with pytest.raises(OutputError, match="is not a corpus build"):
        build_webtext(WebTextConfig(inputs=[str(tmp_path / "links.txt")], out=str(mine)))
    (tmp_path / "corpus.txt").write_text("Q: what is two plus two? A: four\n")
    with pytest.raises(OutputError, match="is not a demonstrations report"):
        find_demonstrations([str(tmp_path / "corpus.txt")], out=mine)
    with pytest.raises(OutputError, match="is not a model-size sweep"):
        run_sweep(SweepConfig(data=str(tmp_path), out=str(mine), sizes=["cpu-25k"], tokens=1, eval_jobs=[]))
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]


def test_tokenizer_train_never_writes_into_a_model_or_a_users_directory(tmp_path, model_dir, run_cli):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog sat on the log\n" * 40)
    before = snapshot(model_dir)
    code, _, err = run_cli("tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", model_dir)
    assert code == 2 and "is not a trained tokenizer" in err
    assert snapshot(model_dir) == before  # its vocabulary still matches its weights
    for _ in range(2):  # its own earlier output is replaced
        assert (
            run_cli("tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", tmp_path / "bpe")[0] == 0
        )
