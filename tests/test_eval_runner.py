"""The evaluation runner and CLI: batch-size independence, results and samples files, data lookup, errors."""

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_file
from eval_doubles import byte_tokenizer
from helpers import tiny_model

from gpt2kit.checkpoint import save
from gpt2kit.cli import main
from gpt2kit.cli_values import parse_tasks
from gpt2kit.errors import GPT2KitError
from gpt2kit.evals import TASKS, EvalOptions, evaluate, markdown_table
from gpt2kit.evals.report import format_metrics, format_value, split_of
from gpt2kit.model import GPTConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = GPTConfig(vocab_size=257, n_positions=48, n_layer=2, n_head=2, n_embd=32)
CBT = "".join(
    f"1 the {w} went home .\n2 it was late , '' he said .\n3 `` the XXXXX sat down .\tcat\t\tcat|dog|{w}\n\n"
    for w in ("fox", "owl", "hen", "pig", "cow")
)


@pytest.fixture(scope="module")
def model():
    return tiny_model(CONFIG.vocab_size, n_positions=CONFIG.n_positions)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    passages = [
        "the cat sat on the mat and then the cat slept",
        "she said it was late",
        "a long passage about boats and rivers and the sea, which was cold and grey that morning in june",
        "x y",
    ]
    (root / "lambada_test.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))
    (root / "wiki.test.tokens").write_text(" = Boats = \n \n The boat , a small one , sailed 1 @,@ 000 km . \n" * 6)
    (root / "cbtest_CN_valid_2000ex.txt").write_text(CBT)
    wino = shared_file("winograd/winogrande_dev_llmfoundry.jsonl").read_text().splitlines()[:12]
    (root / "winogrande.jsonl").write_text("\n".join(wino) + "\n")
    return root


def test_scores_do_not_depend_on_batch_size(model, fixtures):
    tasks = ["lambada", "cbt_cn", "wikitext2", "winogrande"]
    results = {}
    for batch_size in (1, 16):
        options = EvalOptions(batch_size=batch_size, context_length=24, stride=10)
        results[batch_size] = evaluate(model, byte_tokenizer(), tasks, data_dir=fixtures, options=options)
    for task in tasks:
        one, sixteen = results[1][task]["metrics"], results[16][task]["metrics"]
        assert one.keys() == sixteen.keys()
        for key, value in one.items():
            if key.startswith("acc"):
                assert value == sixteen[key], (task, key)
            else:
                assert value == pytest.approx(sixteen[key], rel=1e-6), (task, key)
    assert results[1]["wikitext2"]["counts"]["windows"] > 5  # several windows of 24 tokens, sliding by 10


def test_results_carry_the_contract_fields(model, fixtures):
    results = evaluate(model, byte_tokenizer(), ["lambada", "wikitext2"], data_dir=fixtures, limit=2, model_name="tiny")
    for result in results.values():
        assert {"metrics", "protocol", "n", "data_sha256", "model", "model_params", "runtime_s"} <= result.keys()
        assert all(isinstance(v, float) for v in result["metrics"].values())
        assert result["model"] == "tiny" and result["model_params"] == model.num_parameters()
        assert result["n"] == 2
    lambada = results["lambada"]
    assert lambada["data_sha256"] == hashlib.sha256((fixtures / "lambada_test.jsonl").read_bytes()).hexdigest()
    assert all(0 <= lambada["metrics"][k] <= 1 for k in ("acc_last_token", "acc_last_word"))
    table = markdown_table(results)
    assert "| LAMBADA (ACC) | LAMBADA (PPL) |" in table and "| GPT-2 117M (paper) | 45.99 | 35.13 |" in table
    # our scores are on whatever split the file is; the paper's on the test sets: the table says both
    assert "| split scored here | test | test |" in table
    assert "| paper's split | test | test |" in table


def test_log_lines_are_formatted_and_name_the_job(model, fixtures, caplog):
    caplog.set_level(logging.INFO, logger="gpt2kit")
    evaluate(model, byte_tokenizer(), ["wikitext2"], data_dir=fixtures, limit=2, job_name="heldout")
    assert "heldout (wikitext2): evaluating on" in caplog.text
    line = next(r.getMessage() for r in caplog.records if "(n=2," in r.getMessage())
    assert re.fullmatch(r"heldout \(wikitext2\): .*\bppl [\d,]+\.\d\d\b.*\(n=2, \d+\.\d s\)", line), line
    assert "{" not in line and "'" not in line


def test_metric_and_split_formatting():
    shown = format_metrics({"loss": 9.196905019564017, "ppl": 9866.544990894014, "acc_last_token": 0.01234})
    assert shown == "loss 9.1969, ppl 9,866.54, acc_last_token 1.23%"
    assert split_of("../shared/data/wikitext-2/wiki.valid.tokens") == "validation"
    assert split_of("data/lambada_development_plain_text.txt") == "dev"
    assert split_of("hf:EleutherAI/lambada_openai@test") == "test"
    assert split_of("data/winogrande.jsonl") == "winogrande.jsonl"
    assert format_value(1171736930.03, "ppl") == "1,171,736,930" and format_value(29.4123, "ppl") == "29.41"


def test_task_names(model):
    assert parse_tasks("lambada, ptb,lambada") == ["lambada", "ptb"]
    assert parse_tasks("all") == list(TASKS)
    with pytest.raises(GPT2KitError, match="unknown task 'lambda'"):
        parse_tasks("lambda")


def test_data_errors_name_the_file_and_what_was_expected(model, tmp_path, fixtures):
    tokenizer = byte_tokenizer()
    with pytest.raises(GPT2KitError, match=r"lambada: no data: expected lambada_test.jsonl"):
        evaluate(model, tokenizer, ["lambada"], data_dir=tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b"}\n{"text": \n')
    with pytest.raises(GPT2KitError, match=r"bad.jsonl:2: not valid JSON"):
        evaluate(model, tokenizer, ["lambada"], {"lambada": bad})
    bad.write_text('{"txt": "a b"}\n')
    with pytest.raises(GPT2KitError, match=r"bad.jsonl:1: missing key 'text'"):
        evaluate(model, tokenizer, ["lambada"], {"lambada": bad})
    bad.write_bytes(b'{"text": "a \xff b"}\n')
    with pytest.raises(GPT2KitError, match=r"bad.jsonl:1: not UTF-8 \(byte 12\)"):
        evaluate(model, tokenizer, ["lambada"], {"lambada": bad})
    bad.write_text("\n")
    with pytest.raises(GPT2KitError, match="no LAMBADA passages"):
        evaluate(model, tokenizer, ["lambada"], {"lambada": bad})
    with pytest.raises(GPT2KitError, match="no such file"):
        evaluate(model, tokenizer, ["lambada"], {"lambada": tmp_path / "missing.jsonl"})
    with pytest.raises(GPT2KitError, match="'ptb' is not one of the tasks"):
        evaluate(model, tokenizer, ["lambada"], {"ptb": bad}, data_dir=fixtures)
    cbt = tmp_path / "cbt.txt"
    cbt.write_text("1 a b .\n2 a XXXXX b .\tz\t\tx|y\n")
    with pytest.raises(GPT2KitError, match=r"cbt.txt:2: the answer 'z' is not among the candidates"):
        evaluate(model, tokenizer, ["cbt_ne"], {"cbt_ne": cbt})
    with pytest.raises(GPT2KitError, match="batch_size must be >= 1"):
        EvalOptions(batch_size=0)


def test_options_from_a_config_file(tmp_path):
    path = tmp_path / "eval.toml"
    path.write_text("[eval]\nbatch_size = 4\nshots = 3\n")
    assert EvalOptions.from_file(path) == EvalOptions(batch_size=4, shots=3)
    path = tmp_path / "eval.yaml"
    path.write_text("batch_size: 2\nbatchsize: 3\n")
    with pytest.raises(GPT2KitError, match="unknown field 'batchsize'"):
        EvalOptions.from_file(path)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return save(model, byte_tokenizer(), tmp_path_factory.mktemp("models") / "tiny-bytes")


def test_cli_writes_results_samples_and_a_table(model_dir, fixtures, tmp_path, capsys):
    out, samples = tmp_path / "results.json", tmp_path / "samples.jsonl"
    argv = ["eval", "--model", str(model_dir), "--tasks", "lambada,winogrande", "--data-dir", str(fixtures)]
    argv += ["--data", f"lambada={fixtures / 'lambada_test.jsonl'}", "--limit", "3", "--batch-size", "2"]
    assert main(argv + ["--out", str(out), "--log-samples", str(samples)]) == 0
    printed = capsys.readouterr().out
    assert "| Model | LAMBADA (ACC)" in printed and "WinoGrande (ACC)" in printed and "tiny-bytes" in printed
    results = json.loads(out.read_text())
    assert set(results) == {"lambada", "winogrande"}
    assert results["winogrande"]["n"] == 3 and results["winogrande"]["options"]["batch_size"] == 2
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert {r["task"] for r in records} == {"lambada", "winogrande"} and len(records) == 6


def test_cli_lists_tasks_and_reports_errors_in_one_line(model_dir, tmp_path, capsys):
    assert main(["eval", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in TASKS:
        assert f"\n{name}  [" in "\n" + listing
    assert "lambada_test.jsonl" in listing and "newstest2014-fren-src.en.sgm" in listing
    for argv, message in (
        (["--tasks", "lambada", "--data-dir", str(tmp_path)], "lambada: no data"),
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--tasks", "lambada", "--data", "lambada"], "expected TASK=PATH"),
        (["--tasks", "lambada", "--batch-size", "0", "--data-dir", str(tmp_path)], "batch_size must be >= 1"),
    ):
        assert main(["eval", "--model", str(model_dir), *argv]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    assert main(["eval", "--tasks", "lambada"]) == 2
    assert "--model and --tasks are required" in capsys.readouterr().err


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gpt2kit", "eval", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_hugging_face_datasets_load_by_name_and_fail_clearly_offline(model_dir, tmp_path):
    local = tmp_path / "lambada_hf"
    local.mkdir()
    (local / "test.jsonl").write_text('{"text": "the cat sat"}\n{"text": "a dog ran"}\n')
    out = tmp_path / "r.json"
    done = _cli(
        ["--model", str(model_dir), "--tasks", "lambada", "--data", f"lambada=hf:{local}@test", "--out", str(out)],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["lambada"]
    assert result["n"] == 2 and result["data"] == f"hf:{local}@test"
    done = _cli(["--model", str(model_dir), "--tasks", "lambada", "--data", "lambada=hf"], tmp_path)
    assert done.returncode == 2
    assert "cannot load Hugging Face dataset hf:EleutherAI/lambada_openai:default@test" in done.stderr
    assert "--data lambada=PATH" in done.stderr and "Traceback" not in done.stderr
