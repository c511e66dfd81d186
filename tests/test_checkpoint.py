import json
import subprocess
import sys

import pytest
import torch
from helpers import hf_reference

import gpt2kit
from gpt2kit.checkpoint import CheckpointError
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.outputs import OutputExists

transformers = pytest.importorskip("transformers")


def test_transformers_model_loads_with_identical_logits(tmp_path, gpt2_tokenizer):
    reference = hf_reference()
    reference.save_pretrained(tmp_path)
    gpt2_tokenizer.save(tmp_path)
    loaded = gpt2kit.load(tmp_path)
    idx = torch.randint(0, 50257, (2, 40))
    with torch.no_grad():
        expected = reference(idx).logits
        got = loaded.model(idx)
    assert (got - expected).abs().max().item() < 1e-5
    assert loaded.tokenizer.encode("Hello world") == [15496, 995]


def test_saved_model_loads_in_transformers_with_identical_logits(tmp_path, tiny_tokenizer):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=32, n_layer=2, n_head=2, n_embd=32)).eval()
    gpt2kit.save(model, tiny_tokenizer, tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "generation_config.json",
    }
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    idx = torch.randint(0, tiny_tokenizer.vocab_size, (2, 32))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max().item() < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "the river sold forty lanterns"
    assert hf_tok.encode(text) == tiny_tokenizer.encode(text)
    again = gpt2kit.load(tmp_path / "m")
    assert torch.equal(again.model(idx), model(idx))


def test_pytorch_model_bin_loads(tmp_path, gpt2_tokenizer):
    reference = hf_reference(seed=3)
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    gpt2_tokenizer.save(tmp_path)
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        assert (gpt2kit.load(tmp_path).model(idx) - reference(idx).logits).abs().max() < 1e-5


@pytest.fixture
def saved(tmp_path, tiny_tokenizer):
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=16, n_layer=1, n_head=2, n_embd=16))
    gpt2kit.save(model, tiny_tokenizer, tmp_path / "m")
    return tmp_path / "m"


def test_truncated_safetensors_names_the_file(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        gpt2kit.load(saved)


def test_missing_key_and_shape_mismatch_name_the_key(saved):
    from safetensors.torch import load_file, save_file

    tensors = load_file(saved / "model.safetensors")
    without = {k: v for k, v in tensors.items() if k != "transformer.h.0.ln_2.weight"}
    save_file(without, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="h.0.ln_2.weight"):
        gpt2kit.load(saved)
    tensors["transformer.wpe.weight"] = torch.zeros(3, 3)
    save_file(tensors, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"the weights' wpe.weight is \(3, 3\)"):
        gpt2kit.load(saved)  # caught from the safetensors header, before the model is built


def test_bad_directory_and_config_errors(tmp_path, saved):
    with pytest.raises(CheckpointError, match="not a model directory"):
        gpt2kit.load(tmp_path / "nope")
    config = json.loads((saved / "config.json").read_text())
    config["activation_function"] = "prelu"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="prelu"):
        gpt2kit.load(saved)
    (saved / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json"):
        gpt2kit.load(saved)


def test_offline_hub_id_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="hub download failed"):
        gpt2kit.load("openai-community/gpt2-does-not-exist")


def test_save_is_atomic_and_replaces(saved, tiny_tokenizer):
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(OutputExists, match="already holds a model"):
        gpt2kit.save(model, tiny_tokenizer, saved)
    assert gpt2kit.load(saved).model.config.n_layer == 1
    gpt2kit.save(model, tiny_tokenizer, saved, overwrite=True)
    assert gpt2kit.load(saved).model.config.n_layer == 2
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]


def test_cli_info(saved):
    result = subprocess.run([sys.executable, "-m", "gpt2kit", "info", "gpt2"], capture_output=True, text=True)
    assert result.returncode == 0 and "124,439,808" in result.stdout
    result = subprocess.run([sys.executable, "-m", "gpt2kit", "info", str(saved)], capture_output=True, text=True)
    assert result.returncode == 0 and "layers: 1" in result.stdout


# VmHWM is this process's own peak; ru_maxrss would inherit the (large) peak of pytest across fork+exec.
LOAD_RSS = """
import re, sys, gpt2kit
loaded = gpt2kit.load(sys.argv[1])
print(int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024)
"""


def test_124m_loads_in_under_1gb_rss(tmp_path, gpt2_tokenizer):
    from gpt2kit.model import preset_config

    gpt2kit.save(GPT(preset_config("gpt2")), gpt2_tokenizer, tmp_path / "gpt2")
    result = subprocess.run([sys.executable, "-c", LOAD_RSS, str(tmp_path / "gpt2")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 1024, f"peak RSS {result.stdout.strip()} MB"


def test_info_lists_the_presets_and_an_unknown_name_is_one_line(capsys):
    from gpt2kit.cli import main

    assert main(["info"]) == 0
    table = capsys.readouterr().out
    assert "cpu-6m" in table and "17,670,400" in table and "4,739,072" in table and "124,439,808" in table
    assert main(["info", "--list", "--vocab-size", "8192"]) == 0
    assert "92,133,888" in capsys.readouterr().out  # gpt2 with an 8k vocabulary
    assert main(["info", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "not a preset (the preset table lists them)" in err and err.count("\n") == 1
