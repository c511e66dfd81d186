"""Hostile model, tokenizer and JSON files: each is refused in one line naming what and where, before it can
take unbounded memory or time, and without a traceback.

nanoGPT files are the dict nanoGPT's train.py saves (tests/test_formats.py writes them); llm.c files its
header and tensor order. The memory cases run in a subprocess under an address-space limit, so the code
they guard against fails there instead of taking this machine's memory.
"""

import json
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_formats import C, nanogpt_tensors, write_llmc_bin, write_nanogpt_ckpt

import gpt2kit
from gpt2kit.checkpoint import CheckpointError
from gpt2kit.convert import convert
from gpt2kit.errors import GPT2KitError
from gpt2kit.formats import nanogpt
from gpt2kit.io import MAX_JSON_DEPTH
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.tokenizer import MAX_ID_GAPS, MAX_SPECIAL_CHARS, TokenizerError, load_tokenizer

DEEP = "[" * 100_000 + "]" * 100_000
MEMORY_LIMIT = 6 << 30  # bytes of address space: torch's import takes about 3 GiB of it


def limited_cli(*args, timeout=120):
    """`gpt2kit ARGS` in a subprocess whose address space is capped at MEMORY_LIMIT."""

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "gpt2kit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap,
    )


def assert_one_line(stderr: str, *fragments: str) -> None:
    line = stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for fragment in fragments:
        assert fragment in line, line


# -- 5: declared sizes against the tensors present ------------------------------------------------------------


def test_nanogpt_layers_beyond_its_tensors_are_refused_before_building(tmp_path):
    for bias in (True, False):  # bias=False used to loop over every declared layer adding zero biases
        checkpoint = {
            "model": nanogpt_tensors(bias=bias),
            "model_args": dict(n_layer=10**12, n_head=4, n_embd=C, block_size=64, bias=bias, vocab_size=50304),
        }
        torch.save(checkpoint, tmp_path / f"layers-{bias}.pt")
        result = limited_cli("convert", tmp_path / f"layers-{bias}.pt", tmp_path / "out", timeout=60)
        assert result.returncode == 2, result.stderr[-2000:]
        assert_one_line(result.stderr, f"layers-{bias}.pt", "n_layer is 1000000000000, but the weights hold 2 layers")


def test_layer_numbers_must_run_from_zero(tmp_path):
    sd = nanogpt_tensors()
    sd = {k.replace("h.1.", "h.7."): v for k, v in sd.items()}
    write_nanogpt_ckpt(tmp_path / "gap.pt", sd)
    with pytest.raises(CheckpointError, match=r"layers are numbered up to 7, not 0..1"):
        gpt2kit.load(tmp_path / "gap.pt", tokenizer="gpt2")


def test_pytorch_model_bin_sizes_are_checked_before_building(tmp_path, tiny_tokenizer):
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=32, n_layer=1, n_head=2, n_embd=16))
    gpt2kit.save(model, tiny_tokenizer, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    torch.save(load_file(weights), tmp_path / "m" / "pytorch_model.bin")
    weights.unlink()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "n_layer": 10**12}))
    result = limited_cli("info", tmp_path / "m", timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert_one_line(result.stderr, "config.json: n_layer is 1000000000000, but the weights hold 1 layers")


# -- 6 and smaller: what a state dict may hold --------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.update({5: torch.zeros(3)}), "key 5 is not a tensor name"),
        (
            lambda sd: sd.update({"transformer.ln_f.bias": torch.zeros(C).to_sparse()}),
            "tensor 'transformer.ln_f.bias' is not dense",
        ),
        (
            lambda sd: sd.update(
                {"transformer.ln_f.bias": torch.quantize_per_tensor(torch.zeros(C), 0.1, 0, torch.qint8)}
            ),
            "tensor 'transformer.ln_f.bias' is quantized",
        ),
        (
            lambda sd: sd.update({"_orig_mod.transformer.wte.weight": sd["transformer.wte.weight"].clone()}),
            "'_orig_mod.transformer.wte.weight' is given twice",
        ),
    ],
    ids=["int-key", "sparse", "quantized", "duplicate"],
)
def test_nanogpt_state_dict_entries_are_refused_naming_the_key(tmp_path, change, message):
    sd = nanogpt_tensors()
    change(sd)
    write_nanogpt_ckpt(tmp_path / "bad.pt", sd)
    with pytest.raises(CheckpointError, match=message) as caught:
        nanogpt.read(tmp_path / "bad.pt")
    assert "bad.pt" in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn])
def test_non_float_weights_are_refused_naming_the_tensor(tmp_path, dtype):
    sd = nanogpt_tensors()
    sd["transformer.h.1.ln_2.bias"] = torch.zeros(C).to(dtype)
    write_nanogpt_ckpt(tmp_path / "typed.pt", sd)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"tensor 'h.1.ln_2.bias' is {name}; weights must be"):
        gpt2kit.load(tmp_path / "typed.pt", tokenizer="gpt2")


def test_llmc_size_message_counts_in_python_ints(tmp_path):
    header = np.zeros(256, dtype="<i4")
    width = 2**31 - 1  # the largest int32: mlp.c_fc alone is 4 * width**2 floats, past int64
    header[:8] = [20240326, 3, 1, 128, 1, 1, width, 128]
    (tmp_path / "huge.bin").write_bytes(header.tobytes())
    per_layer = 2 * width + 3 * width * width + 3 * width + width * width + width + 2 * width
    per_layer += 4 * width * width + 4 * width + 4 * width * width + width
    expected = 1024 + 4 * (128 * width + width + per_layer + 2 * width)
    assert expected > 2**63
    with pytest.raises(CheckpointError, match=rf"huge.bin: 1024 bytes, but its header describes {expected} "):
        gpt2kit.load(tmp_path / "huge.bin", tokenizer="gpt2")


# -- 7 and 8: ties and finite weights -------------------------------------------------------------------


def test_nan_in_a_tied_wte_keeps_the_model_tied(tmp_path):
    sd = nanogpt_tensors()
    sd["transformer.wte.weight"][3, 3] = float("nan")  # lm_head is the same tensor, as nanoGPT saves it
    write_nanogpt_ckpt(tmp_path / "nan.pt", sd)
    assert nanogpt.read(tmp_path / "nan.pt").config.tie_word_embeddings
    separate = dict(sd, **{"lm_head.weight": sd["transformer.wte.weight"].clone()})  # equal, NaN included
    write_nanogpt_ckpt(tmp_path / "copy.pt", separate)
    assert nanogpt.read(tmp_path / "copy.pt").config.tie_word_embeddings
    separate["lm_head.weight"][0, 0] += 1
    write_nanogpt_ckpt(tmp_path / "untied.pt", separate)
    assert not nanogpt.read(tmp_path / "untied.pt").config.tie_word_embeddings
    with pytest.raises(CheckpointError, match=r"nan.pt: tensor 'wte.weight' holds NaN or infinite values"):
        convert(tmp_path / "nan.pt", tmp_path / "out.bin")


def hf_model_dir(path, tokenizer):
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_positions=32, n_layer=2, n_head=2, n_embd=16))
    gpt2kit.save(model, tokenizer, path)
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_by_every_reader(tmp_path, tiny_tokenizer, value):
    directory = hf_model_dir(tmp_path / "hf", tiny_tokenizer)
    weights = load_file(directory / "model.safetensors")
    weights["transformer.h.1.mlp.c_fc.weight"][2, 5] = value
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'transformer.h.1.mlp.c_fc.weight' holds NaN"):
        gpt2kit.load(directory)
    torch.save(weights, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: tensor 'transformer.h.1.mlp.c_fc.weight' holds"):
        gpt2kit.load(directory)

    sd = nanogpt_tensors()
    sd["transformer.h.0.attn.c_proj.bias"][1] = value
    write_nanogpt_ckpt(tmp_path / "bad.pt", sd)
    with pytest.raises(CheckpointError, match=r"bad.pt: tensor 'h.0.attn.c_proj.bias' holds NaN or infinite"):
        gpt2kit.load(tmp_path / "bad.pt", tokenizer=tiny_tokenizer)
    sd = nanogpt_tensors()
    sd["transformer.wpe.weight"][0, 0] = value
    write_llmc_bin(tmp_path / "bad.bin", sd)
    with pytest.raises(CheckpointError, match=r"bad.bin: tensor 'wpe.weight' holds NaN or infinite"):
        gpt2kit.load(tmp_path / "bad.bin", tokenizer=tiny_tokenizer)


def test_sample_and_eval_refuse_a_nan_model_in_one_line(tmp_path, tiny_tokenizer, run_cli):
    directory = hf_model_dir(tmp_path / "hf", tiny_tokenizer)
    weights = load_file(directory / "model.safetensors")
    weights["transformer.ln_f.weight"][0] = float("nan")
    save_file(weights, directory / "model.safetensors")
    code, _, err = run_cli("sample", "--model", directory, "--prompt", "a", "--max-new-tokens", "2")
    assert code == 2
    assert_one_line(err, "tensor 'transformer.ln_f.weight' holds NaN or infinite values")
    (tmp_path / "corpus.txt").write_text("some words here\n")
    code, _, err = run_cli(
        "eval", "--model", directory, "--tasks", "wikitext2", "--data", f"wikitext2={tmp_path / 'corpus.txt'}"
    )
    assert code == 2
    assert_one_line(err, "holds NaN or infinite values")


# -- 9 to 12: tokenizer files ----------------------------------------------------------------------------


@pytest.fixture
def tokenizer_dir(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tok")
    return tmp_path / "tok"


def edit_json(path, change):
    values = json.loads(path.read_text(encoding="utf-8"))
    change(values)
    path.write_text(json.dumps(values), encoding="utf-8")


def set_key(key, value):
    return lambda config: config.update({key: value})


def first_added(key, value):
    return lambda config: config["added_tokens"][0].update({key: value})


@pytest.mark.parametrize(
    "change, message",
    [
        (set_key("normalizer", "x"), "normalizer must be an object or null, got a string"),
        (set_key("pre_tokenizer", [{"type": "ByteLevel"}]), "pre_tokenizer must be an object or null, got a list"),
        (
            set_key("pre_tokenizer", {"type": "Sequence", "pretokenizers": {"type": "ByteLevel"}}),
            "pre_tokenizer.pretokenizers must be a list or null, got an object",
        ),
        (
            set_key("pre_tokenizer", {"type": "Sequence", "pretokenizers": ["ByteLevel"]}),
            r"pre_tokenizer.pretokenizers\[0\] must be an object, got a string",
        ),
        (first_added("content", ["<|endoftext|>"]), r"added_tokens\[0\].content must be a string, got a list"),
        (first_added("content", 7), r"added_tokens\[0\].content must be a string, got an integer"),
        (first_added("id", "3"), r"added_tokens\[0\].id must be an integer, got a string"),
        (set_key("added_tokens", 5), "added_tokens must be a list or null, got an integer"),
        (set_key("added_tokens", [5]), r"added_tokens\[0\] must be an object, got an integer"),
        (lambda c: c["model"].update(type=5), "model.type must be a string, got an integer"),
        (lambda c: c["model"].update(vocab=[]), "model.vocab must be an object, got a list"),
        (lambda c: c["model"].update(byte_fallback="no"), "model.byte_fallback must be true or false or null"),
    ],
)
def test_tokenizer_json_fields_are_type_checked(tokenizer_dir, change, message):
    edit_json(tokenizer_dir / "tokenizer.json", change)
    with pytest.raises(TokenizerError, match=message) as caught:
        load_tokenizer(tokenizer_dir)
    assert str(tokenizer_dir / "tokenizer.json") in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (set_key("added_tokens_decoder", [{"content": "x"}]), "added_tokens_decoder must be an object or null"),
        (set_key("added_tokens_decoder", {"5": "x"}), r"added_tokens_decoder\['5'\] must be an object, got a string"),
        (
            set_key("added_tokens_decoder", {"5": {"content": 5}}),
            r"added_tokens_decoder\['5'\].content must be a string",
        ),
        (set_key("eos_token", ["x"]), "eos_token must be a string or an object or null, got a list"),
        (set_key("bos_token", {"content": None}), "bos_token.content must be a string, got null"),
    ],
)
def test_tokenizer_config_fields_are_type_checked(tokenizer_dir, change, message):
    (tokenizer_dir / "tokenizer.json").unlink()  # vocab.json + merges.txt read tokenizer_config.json's specials
    edit_json(tokenizer_dir / "tokenizer_config.json", change)
    with pytest.raises(TokenizerError, match=message) as caught:
        load_tokenizer(tokenizer_dir)
    assert "tokenizer_config.json" in str(caught.value)


@pytest.mark.parametrize("token_id", [10**12, 2**70, "too-far"])
def test_token_ids_must_fit_the_vocabulary(tokenizer_dir, tiny_tokenizer, token_id):
    if token_id == "too-far":  # loads today, but sizes every id table by it: past the allowed gaps
        token_id = tiny_tokenizer.vocab_size + 1 + MAX_ID_GAPS  # with the new entry, V + 1 ids
    edit_json(tokenizer_dir / "vocab.json", lambda vocab: vocab.update({"<|far|>": token_id}))
    (tokenizer_dir / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match=rf"vocab.json: token id {token_id} is too large"):
        load_tokenizer(tokenizer_dir)


def test_infinite_token_ids_are_refused(tokenizer_dir):
    text = (tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")
    config = json.loads(text)
    config["added_tokens"][0]["id"] = "INF"
    (tokenizer_dir / "tokenizer.json").write_text(json.dumps(config).replace('"INF"', "Infinity"), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"added_tokens\[0\].id must be an integer, got a number"):
        load_tokenizer(tokenizer_dir)
    (tokenizer_dir / "tokenizer.json").unlink()
    edit_json(tokenizer_dir / "vocab.json", lambda vocab: vocab.update({"<|x|>": "INF"}))
    path = tokenizer_dir / "vocab.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"INF"', "Infinity"), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"'<\|x\|>' has id inf, not an integer"):
        load_tokenizer(tokenizer_dir)


def test_special_tokens_have_a_bounded_length(tokenizer_dir, tiny_tokenizer):
    long = "<|" + "x" * MAX_SPECIAL_CHARS + "|>"
    edit_json(tokenizer_dir / "tokenizer.json", first_added("content", long))
    with pytest.raises(TokenizerError, match=rf"is {len(long)} characters long \(at most {MAX_SPECIAL_CHARS}\)"):
        load_tokenizer(tokenizer_dir)
    many = [
        {"id": tiny_tokenizer.vocab_size + i, "content": f"<|{i:04d}" + "y" * 900 + "|>", "special": True}
        for i in range(100)
    ]  # each allowed, together 90,000 characters
    edit_json(tokenizer_dir / "tokenizer.json", lambda config: config.update(added_tokens=many))
    with pytest.raises(TokenizerError, match=r"the special and added tokens hold 9\d{4} characters in all"):
        load_tokenizer(tokenizer_dir)


def test_a_ten_megabyte_special_token_is_refused_within_bounded_memory(tokenizer_dir):
    edit_json(tokenizer_dir / "tokenizer.json", first_added("content", "<|" + "z" * 10_000_000 + "|>"))
    result = limited_cli("tokenizer", "encode", "--tokenizer", tokenizer_dir, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert_one_line(result.stderr, "tokenizer.json", "is 10000004 characters long")


@pytest.mark.parametrize("special", [False, True])
def test_empty_added_tokens_are_refused(tokenizer_dir, tiny_tokenizer, special):
    entry = {"id": tiny_tokenizer.vocab_size, "content": "", "special": special}
    edit_json(tokenizer_dir / "tokenizer.json", lambda config: config["added_tokens"].append(entry))
    with pytest.raises(TokenizerError, match=rf"token id {tiny_tokenizer.vocab_size} is an empty special or added"):
        load_tokenizer(tokenizer_dir)


# -- 13: JSON nesting ---------------------------------------------------------------------------------------


def test_deep_json_is_refused_in_one_line_by_every_reader(tmp_path, tokenizer_dir, run_cli):
    from gpt2kit.data.overlap import load_samples
    from gpt2kit.evals.data import file_source
    from gpt2kit.evals.qa import load_questions

    deep_line = '{"text": ' + DEEP + "}\n"
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text('{"text": "fine", "question": "q", "answer": "a"}\n' + deep_line)
    message = rf"deep.jsonl:2: JSON nested more than {MAX_JSON_DEPTH} levels deep"
    with pytest.raises(GPT2KitError, match=message):
        load_samples(jsonl)
    with pytest.raises(GPT2KitError, match=message):
        load_questions(file_source(jsonl))
    code, _, err = run_cli("prepare", "--input", jsonl, "--out", tmp_path / "data", "--tokenizer", tokenizer_dir,
                        "--workers", "1", "--quiet")  # fmt: skip
    assert code == 2
    assert_one_line(err, message.replace("\\", ""))
    (tokenizer_dir / "tokenizer.json").write_text(DEEP)
    with pytest.raises(TokenizerError, match=r"tokenizer.json: JSON nested more than"):
        load_tokenizer(tokenizer_dir)


def test_nesting_within_the_bound_still_parses(tmp_path):
    from gpt2kit.io import parse_json

    inside = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(inside, "x") == json.loads(inside)
    assert parse_json('{"a": "' + "[" * 5000 + '"}', "x") == {"a": "[" * 5000}  # brackets in strings do not count
    with pytest.raises(GPT2KitError, match="nested more than"):
        parse_json("[" + inside + "]", "x")


def test_model_config_json_depth_is_bounded(tmp_path, tiny_tokenizer):
    directory = hf_model_dir(tmp_path / "hf", tiny_tokenizer)
    (directory / "config.json").write_text('{"n_layer": ' + DEEP + "}")
    with pytest.raises(CheckpointError, match=r"config.json: JSON nested more than"):
        gpt2kit.load(directory)


# -- found by tests/test_fuzz_parsers.py ----------------------------------------------------------------------


def test_a_projection_weight_of_the_wrong_rank_is_a_shape_error(tmp_path, tiny_tokenizer):
    directory = hf_model_dir(tmp_path / "hf", tiny_tokenizer)
    weights = load_file(directory / "model.safetensors")
    weights["transformer.h.0.attn.c_attn.weight"] = torch.zeros(2, 2, 2)  # Conv1D weights are transposed: 2-D only
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'transformer.h.0.attn.c_attn.weight' has shape \[2, 2, 2\]"):
        gpt2kit.load(directory)


def test_a_scalar_weight_in_a_bias_free_nanogpt_file_is_a_shape_error(tmp_path):
    sd = nanogpt_tensors(bias=False)
    sd["transformer.h.0.ln_1.weight"] = torch.tensor(1.0)  # zero biases are sized by the weight's rows
    write_nanogpt_ckpt(tmp_path / "scalar.pt", sd, bias=False)
    with pytest.raises(CheckpointError, match=r"'h.0.ln_1.weight' has shape \[\], expected \[32\]"):
        gpt2kit.load(tmp_path / "scalar.pt", tokenizer="gpt2")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(dtype=None), "dtype must be uint16 or uint32, got None"),
        (lambda m: m.update(tokenizer="<|endoftext|>"), "tokenizer must be an object, got '<|endoftext|>'"),
        (lambda m: m["tokenizer"].pop("sha256"), "tokenizer.sha256 must be a string, got None"),
        (lambda m: m.update(input_stats=[1]), r"input_stats must be an object, got \[1\]"),
        (lambda m: m["shards"][0].update(num_bytes=None), r"shards\[0\].num_bytes must be a non-negative integer"),
        (lambda m: m["shards"][0].update(file=None), r"shards\[0\].file must be a string, got None"),
        (lambda m: m["shards"][0].update(file="../x.bin"), r"shards\[0\].file must name a file in the data directory"),
        (lambda m: m["groups"].append(5), r"groups\[1\] must be an object, got 5"),
    ],
)
def test_shard_manifest_fields_are_type_checked(tmp_path, change, message):
    from gpt2kit.data.shards import GroupInfo, Manifest, ShardError, ShardInfo

    tokenizer = {"name": "t", "sha256": "0" * 64, "vocab_size": 400, "eot_token": 399}
    shards = [ShardInfo("train-000000.bin", "train", 0, 3, 100, 400, "0" * 64)]
    Manifest(tokenizer, "uint16", {}, shards, [GroupInfo(0, 0, 1, "0" * 64)], complete=True).save(tmp_path)
    edit_json(tmp_path / "manifest.json", change)
    with pytest.raises(ShardError, match=rf"manifest.json: malformed manifest \({message}"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(
    "story, message",
    [
        ({"questions": {}}, r"'questions' must hold an 'input_text' list of strings"),
        ({"additional_answers": [1]}, r"'additional_answers' must be an object"),
        ({"questions": [{"turn_id": 1}]}, r"'questions' must be a list of entries with an 'input_text' string"),
        ({"story": 5}, r"'story' must be a string, got int"),
    ],
)
def test_coqa_stories_are_type_checked(tmp_path, story, message):
    from gpt2kit.evals.coqa import load_stories
    from gpt2kit.evals.data import EvalDataError, file_source

    turns = [{"turn_id": 1, "input_text": "Who?"}]
    record = {"id": "s", "story": "A story.", "questions": turns, "answers": turns, **story}
    (tmp_path / "coqa.json").write_text(json.dumps({"data": [record]}))
    with pytest.raises(EvalDataError, match=rf"coqa.json: data\[0\]: {message}"):
        load_stories(file_source(tmp_path / "coqa.json"))
