import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2kit.cli_values import parse_eval_jobs
from gpt2kit.errors import GPT2KitError
from gpt2kit.study.sweep import EvalJob, SweepConfig, _check_settings


def test_parse_eval_jobs():
    jobs = parse_eval_jobs(
        "lambada, arith=nq_open ,nq_open", ["arith=a.jsonl", "arith:examples=b.jsonl", "lambada=l.jsonl"]
    )
    assert jobs == [
        EvalJob("lambada", "lambada", "l.jsonl", None),
        EvalJob("arith", "nq_open", "a.jsonl", "b.jsonl"),
        EvalJob("nq_open", "nq_open", None, None),
    ]


@pytest.mark.parametrize(
    "tasks, data, message",
    [
        ("", [], "--eval-tasks: no tasks given"),
        ("lambada,lambada", [], "twice"),
        ("lambada", ["ptb=x"], "not one of the evaluations"),
        ("lambada", ["lambada"], "NAME=PATH"),
    ],
)
def test_parse_eval_jobs_errors(tasks, data, message):
    with pytest.raises(GPT2KitError, match=message):
        parse_eval_jobs(tasks, data)


def config(tmp_path, **changes):
    values = dict(data="data", out=str(tmp_path), sizes=["cpu-1m"], tokens=1000, eval_jobs=[EvalJob("ptb", "ptb")])
    return SweepConfig(**{**values, **changes})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sizes": []}, "empty"),
        ({"sizes": ["cpu-1m", "cpu-1m"]}, "twice"),
        ({"sizes": ["cpu-9z"]}, "unknown size 'cpu-9z'"),
        ({"tokens": 0}, "positive"),
        ({"eval_limit": 0}, "positive"),
    ],
)
def test_config_validation(tmp_path, changes, message):
    with pytest.raises(GPT2KitError, match=message):
        config(tmp_path, **changes)


def test_resume_refuses_changed_settings_and_redoes_changed_evaluations(tmp_path):
    _check_settings(config(tmp_path), tmp_path)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["tokens"] == 1000 and saved["eval_jobs"][0]["task"] == "ptb"
    # Adding a size is how a sweep grows: allowed.
    _check_settings(config(tmp_path, sizes=["cpu-1m", "cpu-6m"]), tmp_path)
    with pytest.raises(GPT2KitError, match="started with tokens=1000"):
        _check_settings(config(tmp_path, tokens=2000), tmp_path)
    run = tmp_path / "runs" / "cpu-1m"
    run.mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    (run / "samples.json").write_text("[]")
    _check_settings(config(tmp_path, sizes=["cpu-1m", "cpu-6m"]), tmp_path)
    assert (run / "eval.json").exists() and (run / "samples.json").exists()
    _check_settings(config(tmp_path, eval_jobs=[EvalJob("ptb", "ptb"), EvalJob("lambada", "lambada")]), tmp_path)
    assert not (run / "eval.json").exists() and (run / "samples.json").exists()
    _check_settings(
        config(tmp_path, eval_jobs=[EvalJob("ptb", "ptb"), EvalJob("lambada", "lambada")], prompts=["Hi"]), tmp_path
    )
    assert not (run / "samples.json").exists()
    (tmp_path / "sweep.json").write_text("{broken")
    with pytest.raises(GPT2KitError, match="unreadable sweep settings"):
        _check_settings(config(tmp_path), tmp_path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small synthetic web, a BPE trained on it, and its prepared shards."""
    from gpt2kit.data.prepare import prepare
    from gpt2kit.study.synth import SynthConfig, iter_documents, synthesize
    from gpt2kit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("sweep-data")
    web = synthesize(root / "web", SynthConfig(size_mb=0.3, eval_examples=20, heldout_kb=5))
    train_tokenizer(iter_documents(web.out), 400, files=False).save(root / "tok")
    prepare([str(p) for p in web.train_files], str(root / "tok"), root / "data", val_fraction=0.05, progress=False)
    return root


TINY_RUN = [
    "context_length=64",
    "batch_tokens=512",
    "micro_batch_size=8",
    "device=cpu",
    "optim.warmup_steps=2",
    "log_interval=1",
    "eval_interval=10",
    "eval_windows=2",
    "checkpoint_interval=6",
    "keep_checkpoints=2",
    "progress=false",
]


def tiny_sweep(root, out, sizes):
    from gpt2kit.study.synth import EVAL_DIR, LAMBADA_FILE, NQ_EXAMPLES_FILE, NQ_FILE

    eval_dir = root / "web" / EVAL_DIR
    jobs = [
        EvalJob("lambada", "lambada", str(eval_dir / LAMBADA_FILE), limit=5),
        EvalJob("qa", "nq_open", str(eval_dir / NQ_FILE), str(eval_dir / NQ_EXAMPLES_FILE), limit=4),
    ]
    return SweepConfig(
        data=str(root / "data"),
        out=str(out),
        sizes=sizes,
        tokens=512 * 12,
        eval_jobs=jobs,
        overrides=TINY_RUN,
        eval_shots=2,
        prompts=["Q:", ""],
        sample_tokens=8,
    )


def test_sweep_trains_evaluates_reports_and_resumes(prepared, tmp_path):
    from gpt2kit.study.sweep import run_sweep

    out = tmp_path / "sweep"
    report, results = run_sweep(tiny_sweep(prepared, out, ["cpu-100k"]))
    first = results[0]
    assert first.model_dir.name == "step-00000012"
    assert set(first.seconds) == {"train", "eval", "samples", "memorisation"}
    assert set(first.results) == {"lambada", "qa"} and first.results["qa"]["n"] == 4
    assert 0 <= first.results["qa"]["metrics"]["em"] <= 1 and len(first.samples) == 2
    steps = [json.loads(line)["step"] for line in (out / "runs/cpu-100k/metrics.jsonl").open()]
    assert max(steps) == 12
    text = report.read_text()
    assert "| cpu-100k | " in text and "LAMBADA" in text and "qa (em)" in text
    # Memorisation: training-set and held-out perplexity on the same number of windows, computed directly here
    import numpy as np
    import torch

    import gpt2kit
    from gpt2kit.data.loader import TokenWindows

    model = gpt2kit.load(first.model_dir).model.eval()
    for split, key in (("train", "train_ppl"), ("val", "heldout_ppl")):
        windows = TokenWindows(prepared / "data", split, model.config.n_positions)
        count = min(32, len(windows))
        x, y = windows.batch(np.linspace(0, len(windows) - 1, count).astype(int))
        with torch.no_grad():
            direct = float(torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).exp())
        assert first.memorisation[key] == pytest.approx(direct, rel=1e-4), key
    assert "## Memorisation (the paper's section 4)" in text and (out / "memorisation.png").exists()

    # Growing the sweep trains only the new size and reuses the finished one.
    weights = (first.model_dir / "model.safetensors").read_bytes()
    _, results = run_sweep(tiny_sweep(prepared, out, ["cpu-100k", "cpu-1m"]))
    assert results[0].seconds == {} and set(results[1].seconds) == {"train", "eval", "samples", "memorisation"}
    assert results[0].timings == first.timings and set(first.timings) == {"train", "eval", "samples", "memorisation"}
    assert results[0].params < results[1].params
    assert (first.model_dir / "model.safetensors").read_bytes() == weights
    grown = (out / "report.md").read_text()
    assert "| cpu-1m | " in grown and f"| train cpu-100k | {first.timings['train']:.1f} |" in grown

    # A run killed after its step-6 checkpoint resumes from there and ends with the same weights.
    run = out / "runs/cpu-1m"
    final = (run / "checkpoints/step-00000012/model.safetensors").read_bytes()
    shutil.rmtree(run / "checkpoints/step-00000012")
    (run / "eval.json").unlink()
    _, results = run_sweep(tiny_sweep(prepared, out, ["cpu-100k", "cpu-1m"]))
    assert "train" in results[1].seconds and "eval" in results[1].seconds and "samples" not in results[1].seconds
    assert (run / "checkpoints/step-00000012/model.safetensors").read_bytes() == final


def test_sweep_cli_errors(prepared, tmp_path, capsys):
    from gpt2kit.cli import main

    args = ["sweep", "--data", str(prepared / "data"), "--sizes", "cpu-100k", "--tokens", "512", "--out", str(tmp_path)]
    assert main([*args, "--eval-tasks", "lambada", "--eval-data", "ptb=x"]) == 2
    assert "not one of the evaluations" in capsys.readouterr().err
    assert main([*args, "--eval-tasks", "lambada", "--sizes", "no-such-size"]) == 2
    err = capsys.readouterr().err
    assert "no-such-size" in err and err.count("\n") == 1


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_sweep_under_torchrun(prepared, tmp_path):
    """Two gloo ranks train every size together; rank 0 alone evaluates and writes the report."""
    from gpt2kit.study.synth import EVAL_DIR, LAMBADA_FILE

    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2kit"]
    command += ["sweep", "--data", str(prepared / "data"), "--sizes", "cpu-25k,cpu-100k", "--tokens", "2048"]
    command += ["--eval-tasks", "lambada", "--eval-data", f"lambada={prepared / 'web' / EVAL_DIR / LAMBADA_FILE}"]
    command += ["--eval-limit", "3", "--out", str(out), "--set", "micro_batch_size=4", "progress=false"]
    command += [o for o in TINY_RUN if not o.startswith(("micro_batch_size", "progress"))]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1  # printed by rank 0 only
    for size in ("cpu-25k", "cpu-100k"):
        steps = [json.loads(line)["step"] for line in (out / "runs" / size / "metrics.jsonl").open()]
        assert max(steps) == 4 and (out / "runs" / size / "eval.json").exists()
    assert "| cpu-100k |" in (out / "report.md").read_text()
