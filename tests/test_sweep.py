import json

import pytest

from gpt2kit.errors import GPT2KitError
from gpt2kit.sweep import EvalJob, SweepConfig, _check_settings, parse_eval_jobs


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
        ("", [], "empty"),
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
        ({"sizes": ["a", "a"]}, "twice"),
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
