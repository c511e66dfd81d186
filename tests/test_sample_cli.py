import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gpt2kit
from gpt2kit.generate import GenerationConfig, generate
from gpt2kit.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """A freshly initialised model with a small trained BPE, saved as training would save it (loads fast)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=64, n_layer=2, n_head=2, n_embd=32))
    directory = tmp_path_factory.mktemp("model") / "fresh"
    gpt2kit.save(model, tiny_tokenizer, directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gpt2_tokenizer):
    """A model directory written by transformers' save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=48, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(8)  # sharper logits: a well-separated argmax
    directory = tmp_path_factory.mktemp("hf") / "hf-model"
    model.save_pretrained(directory)
    gpt2_tokenizer.save(directory)
    return directory, model


def test_greedy_sample_prints_prompt_and_the_transformers_greedy_tokens(hf_dir, gpt2_tokenizer, capsys, run_cli):
    directory, reference = hf_dir
    prompt = "The history of the"
    code, out, _ = run_cli(
        *["sample", "--model", str(directory), "--prompt", prompt, "--max-new-tokens", "15", "--temperature", "0"]
    )
    assert code == 0
    ids = torch.tensor([gpt2_tokenizer.encode(prompt)])
    with torch.no_grad():
        out_ids = reference.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=15, pad_token_id=50256
        )
    new = out_ids[0, ids.shape[1] :].tolist()
    new = new[: new.index(50256)] if 50256 in new else new
    assert out == prompt + gpt2_tokenizer.decode(new) + "\n"


def test_samples_with_seed_stream_and_separators(model_dir, capsys, run_cli):
    base = ["sample", "--model", str(model_dir), "--prompt", "Hi", "--max-new-tokens", "6", "--seed", "4"]
    code, out, _ = run_cli(*base + ["--num-samples", "2"])
    assert code == 0
    assert out.count("SAMPLE 1") == 1 and out.count("SAMPLE 2") == 1
    again = run_cli(*base + ["--num-samples", "2"])[1]
    streamed = run_cli(*base + ["--num-samples", "2", "--stream"])[1]
    assert out == again == streamed  # seeded; streaming prints the same samples


def test_unconditional_and_stop(model_dir, capsys, run_cli):
    loaded = gpt2kit.load(model_dir)
    config = GenerationConfig(max_new_tokens=8, top_k=40, seed=0)
    expected = generate(loaded.model, loaded.tokenizer, [""], config)[0].text
    code, out, _ = run_cli(
        *["sample", "--model", str(model_dir), "--unconditional", "--max-new-tokens", "8", "--seed", "0"]
    )
    assert code == 0 and out == expected + "\n"  # starts from <|endoftext|>, which is not printed
    greedy = generate(loaded.model, loaded.tokenizer, ["Go"], GenerationConfig(max_new_tokens=10, temperature=0))
    stop = greedy[0].text[3:6]
    code, out, _ = run_cli(
        *["sample", "--model", str(model_dir), "--prompt", "Go", "--max-new-tokens", "10", "--temperature", "0"]
        + ["--stop", stop]
    )
    assert out == "Go" + greedy[0].text[: greedy[0].text.index(stop)] + "\n"


def test_interactive_loop(model_dir, capsys, monkeypatch, run_cli):
    args = ["sample", "--model", str(model_dir), "--interactive", "--max-new-tokens", "4", "--temperature", "0"]
    code, out, _ = run_cli(*args, stdin="First\n\nSecond\n")
    assert code == 0
    assert out.count("Model prompt >>> ") == 4  # First, the empty line, Second, then end of input
    assert out.count("Prompt should not be empty!") == 1
    assert "First" in out and "Second" in out


def test_config_file_and_flags_override_it(model_dir, tmp_path, capsys, run_cli):
    config = tmp_path / "sample.toml"
    config.write_text("[generation]\nmax_new_tokens = 3\ntemperature = 0\n")
    code, with_file, _ = run_cli(*["sample", "--model", str(model_dir), "--prompt", "A", "--config", str(config)])
    flags = ["sample", "--model", str(model_dir), "--prompt", "A", "--max-new-tokens", "3", "--temperature", "0"]
    assert code == 0 and with_file == run_cli(*flags)[1]
    longer = run_cli(*flags[:5] + ["--config", str(config), "--max-new-tokens", "12"])[1]
    assert len(longer) > len(with_file)
    yaml_config = tmp_path / "sample.yaml"
    yaml_config.write_text("max_new_tokens: 3\ntemperature: 0\n")
    assert run_cli(*["sample", "--model", str(model_dir), "--prompt", "A", "--config", str(yaml_config)])[1] == (
        with_file
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "x", "--unconditional"], "exactly one of"),
        ([], "exactly one of"),
        (["--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--prompt", "x", "--top-p", "0"], "top_p"),
        (["--prompt", "x", "--num-samples", "0"], "num-samples"),
    ],
)
def test_bad_arguments_are_one_line_errors(model_dir, capsys, extra, message, run_cli):
    code, out, err = run_cli(*["sample", "--model", str(model_dir)] + extra)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_files_are_one_line_errors(model_dir, tmp_path, capsys, run_cli):
    bad_prompt = tmp_path / "prompt.txt"
    bad_prompt.write_bytes(b"caf\xe9")
    code, _, err = run_cli(*["sample", "--model", str(model_dir), "--prompt-file", str(bad_prompt)])
    assert code == 2 and "not UTF-8" in err and err.count("\n") == 1
    bad_config = tmp_path / "c.toml"
    bad_config.write_text("topk = 4\n")
    code, _, err = run_cli(*["sample", "--model", str(model_dir), "--prompt", "x", "--config", str(bad_config)])
    assert code == 2 and "unknown field 'topk'" in err
    code, _, err = run_cli(*["sample", "--model", str(tmp_path / "nothing"), "--prompt", "x"])
    assert code == 2 and "not a model directory" in err and err.count("\n") == 1


def test_prompt_file(model_dir, tmp_path, capsys, run_cli):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Über the river\n")
    flags = ["--max-new-tokens", "3", "--temperature", "0"]
    from_file = run_cli(*["sample", "--model", str(model_dir), "--prompt-file", str(prompt)] + flags)[1]
    assert from_file == run_cli(*["sample", "--model", str(model_dir), "--prompt", "Über the river\n"] + flags)[1]
    assert from_file.startswith("Über the river\n")


def wait_for_health(url: str, process: subprocess.Popen, within: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not come up")


@pytest.mark.parametrize("which", ["fresh", "transformers"])
def test_serve_command_with_fresh_and_transformers_models(which, model_dir, hf_dir):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    directory = model_dir if which == "fresh" else hf_dir[0]
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", "serve", "--model", str(directory), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, process)
        models = httpx.get(url + "/v1/models").json()
        assert models["data"][0]["id"] == directory.name
        body = {"model": directory.name, "prompt": "Hello", "max_tokens": 5, "temperature": 0}
        response = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_rejects_bad_settings(model_dir, capsys, run_cli):
    code, _, err = run_cli(*["serve", "--model", str(model_dir), "--max-n", "0"])
    assert code == 2 and "max_n must be >= 1" in err
    code, _, err = run_cli(*["serve"])
    assert code == 2 and "--model" in err
