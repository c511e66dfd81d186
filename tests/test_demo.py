"""`gpt2kit demo --quick`: the whole pipeline end to end (synth, BPE, prepare, train, eval, samples, report)."""

import hashlib
import json
import re

import pytest

from gpt2kit.cli import main
from gpt2kit.study.demo import COLUMNS


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_quick_demo_end_to_end_then_resumes(tmp_path, capsys):
    out = tmp_path / "demo-out"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| model | parameters | Stories, last word (ACC) |")
    assert f"report: {out / 'report.md'}" in printed

    report = (out / "report.md").read_text()
    lines = report.splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    baseline = next(line for line in lines if line.startswith("| trivial baseline |"))
    model = next(line for line in lines if line.startswith("| cpu-100k |"))
    assert all(c.label in header for c in COLUMNS)
    # Every task has a baseline and a score for the model (no "-" cells).
    assert "| - |" not in baseline.split("|", 3)[3] and " - |" not in model
    for png in ("loss.png", "capacity.png", "memorisation.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    memorisation = json.loads((out / "runs/cpu-100k/memorisation.json").read_text())
    assert memorisation["train_ppl"] > 1 and memorisation["heldout_ppl"] > 1 and memorisation["samples"] == 8
    assert 0 <= memorisation["sample_8grams_in_training_percent"] <= 100
    assert "| cpu-100k | 182,016 | " in report.split("## Memorisation")[1]
    assert "### cpu-100k" in report and "⟨" in report  # samples
    assert re.search(r"\| lambada_test.jsonl \| 200 \| [\d.]+ \| [\d.]+ \| 0 \|", report)  # overlap, no key found
    for step in ("generate the corpus", "train the BPE", "prepare the shards", "train cpu-100k", "eval cpu-100k"):
        assert f"| {step} |" in report

    # The real harness scored the synthetic files: every job records the sha256 of the file it read.
    results = json.loads((out / "runs/cpu-100k/eval.json").read_text())
    assert set(results) == {c.task for c in COLUMNS}
    lambada = out / "web/eval/lambada_test.jsonl"
    assert results["lambada"]["data_sha256"] == hashlib.sha256(lambada.read_bytes()).hexdigest()
    assert results["lambada"]["n"] == 40 and results["heldout"]["metrics"]["ppl"] > 1

    # Running it again finds everything done: no training, evaluation or sampling is repeated.
    checkpoint = next((out / "runs/cpu-100k/checkpoints").iterdir())
    stamps = lambda: [p.stat().st_mtime_ns for p in (checkpoint / "model.safetensors", out / "runs/cpu-100k/eval.json")]
    before = stamps()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    again = (out / "report.md").read_text()
    assert stamps() == before
    # The report still gives the time each step took when it ran.
    for step in ("train cpu-100k", "eval cpu-100k"):
        assert [line for line in again.splitlines() if line.startswith(f"| {step} |")] == [
            line for line in report.splitlines() if line.startswith(f"| {step} |")
        ]
    rows = lambda text: [line for line in text.splitlines() if line.startswith("| cpu-100k")]  # noqa: E731
    assert rows(again) == rows(report) and rows(again)[0] == model  # the scores, then the memorisation row


def test_demo_reuses_its_directory_only_for_the_same_settings(tmp_path):
    from gpt2kit.study.demo import FULL, QUICK, _start_fresh_if_changed

    _start_fresh_if_changed(tmp_path, QUICK, 0)
    assert not (tmp_path / "timings.json").exists()
    (tmp_path / "runs").mkdir()
    (tmp_path / "report.md").write_text("old")
    (tmp_path / "timings.json").write_text('{"train the BPE": 1.5}')
    (tmp_path / "notes.txt").write_text("mine")
    # Same plan and seed: a resumed run keeps everything, and the recorded step times.
    _start_fresh_if_changed(tmp_path, QUICK, 0)
    assert json.loads((tmp_path / "timings.json").read_text()) == {"train the BPE": 1.5}
    assert (tmp_path / "runs").is_dir() and (tmp_path / "report.md").exists()
    # Another plan or seed: what the demo wrote is cleared, anything else is left alone.
    for plan, seed in ((QUICK, 1), (FULL, 1)):
        (tmp_path / "runs").mkdir(exist_ok=True)
        _start_fresh_if_changed(tmp_path, plan, seed)
        assert not (tmp_path / "timings.json").exists()
        assert not (tmp_path / "runs").exists() and not (tmp_path / "report.md").exists()
        assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "demo.json").read_text())["seed"] == 1
