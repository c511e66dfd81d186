"""Every GPT-2 config transformers accepts for GPT2LMHeadModel: loaded with its logits, or refused in one line."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import hf_reference

import gpt2kit
from gpt2kit.checkpoint import CheckpointError
from gpt2kit.generate import GenerationConfig, generate
from gpt2kit.model import ACTIVATIONS

transformers = pytest.importorskip("transformers")


def assert_same_logits(reference, loaded, vocab, rows=None):
    idx = torch.randint(0, vocab, (2, 40))
    with torch.no_grad():
        expected = reference(idx).logits[..., :vocab]
        got = loaded.model(idx)
    assert got.shape[-1] == reference.config.vocab_size
    assert (got[..., :vocab] - expected).abs().max().item() < 1e-4
    return got


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False},
        {"n_inner": 40},
        {"layer_norm_epsilon": 1e-3},
        {"scale_attn_by_inverse_layer_idx": True},
        {"scale_attn_weights": False},
        {"reorder_and_upcast_attn": True},
        {"n_ctx": 32},
        *({"activation_function": name} for name in ACTIVATIONS),
    ],
    ids=lambda overrides: ",".join(f"{k}={v}" for k, v in overrides.items()),
)
def test_config_variant_loads_with_transformers_logits(tmp_path, tiny_tokenizer, overrides):
    reference = hf_reference(tiny_tokenizer.vocab_size, **overrides)
    reference.save_pretrained(tmp_path)
    tiny_tokenizer.save(tmp_path)
    loaded = gpt2kit.load(tmp_path)
    assert_same_logits(reference, loaded, tiny_tokenizer.vocab_size)
    if not overrides.get("tie_word_embeddings", True):
        assert not torch.equal(loaded.model.output_weight, loaded.model.wte.weight)
    # and back out: transformers reads what we save to the same logits
    gpt2kit.save(loaded.model, loaded.tokenizer, tmp_path / "again")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "again").eval()
    idx = torch.randint(0, tiny_tokenizer.vocab_size, (1, 20))
    with torch.no_grad():
        assert (again(idx).logits - reference(idx).logits).abs().max().item() < 1e-4


def test_padded_vocabulary_never_yields_a_padding_id(tmp_path, tiny_tokenizer):
    vocab = tiny_tokenizer.vocab_size
    reference = hf_reference(vocab_size=vocab + 13, tie_word_embeddings=False)
    with torch.no_grad():  # padding rows that would win every argmax if they were not masked
        reference.lm_head.weight[vocab:] = reference.lm_head.weight[:vocab].abs().max() * 50
    reference.save_pretrained(tmp_path)
    tiny_tokenizer.save(tmp_path)
    loaded = gpt2kit.load(tmp_path)
    logits = assert_same_logits(reference, loaded, vocab)
    assert torch.isneginf(logits[..., vocab:]).all()
    for config in (GenerationConfig(max_new_tokens=30, temperature=0), GenerationConfig(max_new_tokens=30, seed=3)):
        ids = generate(loaded.model, loaded.tokenizer, ["the river"], config)[0].token_ids
        assert ids and max(ids) < vocab


def test_weights_from_shards_and_pytorch_bin(tmp_path, tiny_tokenizer):
    reference = hf_reference(tiny_tokenizer.vocab_size, tie_word_embeddings=False)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    tiny_tokenizer.save(tmp_path / "sharded")
    assert_same_logits(reference, gpt2kit.load(tmp_path / "sharded"), tiny_tokenizer.vocab_size)

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    reference.config.save_pretrained(legacy)
    torch.save(reference.state_dict(), legacy / "pytorch_model.bin")  # what transformers 4 and older wrote
    tiny_tokenizer.save(legacy)
    assert_same_logits(reference, gpt2kit.load(legacy), tiny_tokenizer.vocab_size)


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, tiny_tokenizer):
    reference = hf_reference(tiny_tokenizer.vocab_size)
    reference.config.save_pretrained(tmp_path)
    tiny_tokenizer.save(tmp_path)
    marker = tmp_path / "pwned"
    state = dict(reference.state_dict())
    state["transformer.wte.weight"] = Exploit(str(marker))
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused: a pickle that needs more than tensors") as caught:
        gpt2kit.load(tmp_path)
    assert "\n" not in str(caught.value) and "pytorch_model.bin" in str(caught.value)
    assert not marker.exists()
    result = subprocess.run([sys.executable, "-m", "gpt2kit", "info", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"activation_function": "prelu"}, "activation_function"),
        ({"activation_function": "xielu"}, "activation_function"),
        ({"model_type": "llama"}, "model_type"),
        ({"n_layer": "four"}, "n_layer"),
        ({"layer_norm_epsilon": -1}, "layer_norm_epsilon"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ],
)
def test_unsupported_or_invalid_config_is_refused_naming_the_field(tmp_path, tiny_tokenizer, change, field):
    hf_reference(tiny_tokenizer.vocab_size).save_pretrained(tmp_path)
    tiny_tokenizer.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=field) as caught:
        gpt2kit.load(tmp_path)
    assert "\n" not in str(caught.value) and "config.json" in str(caught.value)


@pytest.mark.parametrize("payload", ["[1, 2]", "null", '"text"'])
def test_config_json_that_is_not_an_object(tmp_path, tiny_tokenizer, payload):
    hf_reference(tiny_tokenizer.vocab_size).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(payload)
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        gpt2kit.load(tmp_path)
