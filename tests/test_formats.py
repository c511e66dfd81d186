"""nanoGPT and llm.c in and out, GGUF out, CTranslate2 reading what we write.

The nanoGPT and llm.c files are written here from the formats those projects document (nanoGPT's
train.py checkpoint dict; llm.c's 256-int32 header and tensor order), not with our writers, and
checked against a plain PyTorch forward of the original tensors.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt2kit
from gpt2kit.checkpoint import CheckpointError
from gpt2kit.convert import convert

GPT2_VOCAB, PADDED_VOCAB = 50257, 50304
C, L, H, T = 32, 2, 4, 64


def nanogpt_tensors(seed=0, bias=True, vocab=PADDED_VOCAB):
    """A nanoGPT GPT's state_dict: `transformer.` names, nn.Linear [out, in], lm_head tied to wte."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"transformer.wte.weight": rand(vocab, C), "transformer.wpe.weight": rand(T, C)}
    for i in range(L):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = 1 + rand(C, scale=0.1)
        sd[p + "attn.c_attn.weight"] = rand(3 * C, C)
        sd[p + "attn.c_proj.weight"] = rand(C, C)
        sd[p + "ln_2.weight"] = 1 + rand(C, scale=0.1)
        sd[p + "mlp.c_fc.weight"] = rand(4 * C, C)
        sd[p + "mlp.c_proj.weight"] = rand(C, 4 * C)
        if bias:
            for name, n in (("ln_1", C), ("attn.c_attn", 3 * C), ("attn.c_proj", C), ("ln_2", C)):
                sd[p + name + ".bias"] = rand(n, scale=0.1)
            sd[p + "mlp.c_fc.bias"] = rand(4 * C, scale=0.1)
            sd[p + "mlp.c_proj.bias"] = rand(C, scale=0.1)
    sd["transformer.ln_f.weight"] = 1 + rand(C, scale=0.1)
    if bias:
        sd["transformer.ln_f.bias"] = rand(C, scale=0.1)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def plain_forward(sd, idx, gelu_approximate):
    """GPT-2's forward pass over raw tensors, as nanoGPT's and llm.c's model code compute it."""

    def get(name):
        return sd.get(name)

    x = get("transformer.wte.weight")[idx] + get("transformer.wpe.weight")[: idx.shape[1]]
    B, S, _ = x.shape
    for i in range(L):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), get(p + "ln_1.weight"), get(p + "ln_1.bias"), 1e-5)
        q, k, v = F.linear(h, get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.view(B, S, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, S, C)
        x = x + F.linear(y, get(p + "attn.c_proj.weight"), get(p + "attn.c_proj.bias"))
        h = F.layer_norm(x, (C,), get(p + "ln_2.weight"), get(p + "ln_2.bias"), 1e-5)
        h = F.gelu(F.linear(h, get(p + "mlp.c_fc.weight"), get(p + "mlp.c_fc.bias")), approximate=gelu_approximate)
        x = x + F.linear(h, get(p + "mlp.c_proj.weight"), get(p + "mlp.c_proj.bias"))
    x = F.layer_norm(x, (C,), get("transformer.ln_f.weight"), get("transformer.ln_f.bias"), 1e-5)
    return F.linear(x, get("lm_head.weight"))


def write_nanogpt_ckpt(path, sd, bias=True, compiled=False):
    """The dict nanoGPT's train.py saves (its `checkpoint = {...}`), optimizer state included."""
    model_args = dict(n_layer=L, n_head=H, n_embd=C, block_size=T, bias=bias, vocab_size=PADDED_VOCAB, dropout=0.0)
    state = {("_orig_mod." + k if compiled else k): v for k, v in sd.items()}
    optimizer = {
        "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "params": [0]}],
    }
    config = {"batch_size": 12, "init_from": "scratch", "compile": compiled, "dataset": "openwebtext"}
    checkpoint = {"model": state, "optimizer": optimizer, "model_args": model_args, "iter_num": 5000,
                  "best_val_loss": torch.tensor(2.85), "config": config}  # fmt: skip
    torch.save(checkpoint, path)


LLMC_ORDER = [
    ("ln_1.weight", None), ("ln_1.bias", None), ("attn.c_attn.weight", None), ("attn.c_attn.bias", None),
    ("attn.c_proj.weight", None), ("attn.c_proj.bias", None), ("ln_2.weight", None), ("ln_2.bias", None),
    ("mlp.c_fc.weight", None), ("mlp.c_fc.bias", None), ("mlp.c_proj.weight", None), ("mlp.c_proj.bias", None),
]  # fmt: skip


def write_llmc_bin(path, sd, version=3):
    """llm.c's train_gpt2.py write_model: header, then wte (padded), wpe, each per-layer tensor stacked, ln_f."""
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, version, T, GPT2_VOCAB, L, H, C, PADDED_VOCAB]
    wte = sd["transformer.wte.weight"].clone()
    wte[GPT2_VOCAB:] = 0  # llm.c pads with zero rows
    tensors = [wte, sd["transformer.wpe.weight"]]
    for name, _ in LLMC_ORDER:
        tensors += [sd[f"transformer.h.{i}.{name}"] for i in range(L)]
    tensors += [sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for t in tensors:
            if version == 3:
                f.write(t.float().numpy().astype("<f4").tobytes())
            else:
                f.write(t.to(torch.bfloat16).view(torch.int16).numpy().tobytes())


def ids(n=40, seed=1):
    return torch.randint(0, GPT2_VOCAB, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bias, compiled", [(True, False), (False, True)])
def test_nanogpt_checkpoint_loads_with_its_own_logits(tmp_path, gpt2_tokenizer, bias, compiled):
    sd = nanogpt_tensors(bias=bias)
    write_nanogpt_ckpt(tmp_path / "ckpt.pt", sd, bias=bias, compiled=compiled)
    loaded = gpt2kit.load(tmp_path / "ckpt.pt")
    assert loaded.tokenizer.vocab_size == GPT2_VOCAB and loaded.model.config.activation_function == "gelu"
    with torch.no_grad():
        expected = plain_forward(sd, ids(), "none")
        got = loaded.model(ids())
    assert (got[..., :GPT2_VOCAB] - expected[..., :GPT2_VOCAB]).abs().max().item() < 1e-4
    assert torch.isneginf(got[..., GPT2_VOCAB:]).all()  # the padding rows are never a token
    if not bias:
        assert any("zero bias" in note for note in loaded.notes)


@pytest.mark.parametrize("version", [3, 5])
def test_llmc_bin_loads_with_its_own_logits(tmp_path, gpt2_tokenizer, version):
    sd = nanogpt_tensors()
    if version == 5:
        sd = {k: v.to(torch.bfloat16).float() for k, v in sd.items()}
    write_llmc_bin(tmp_path / "gpt2_124M.bin", sd, version)
    loaded = gpt2kit.load(tmp_path / "gpt2_124M.bin")
    with torch.no_grad():
        expected = plain_forward(sd, ids(), "tanh")
        got = loaded.model(ids())
    assert (got[..., :GPT2_VOCAB] - expected[..., :GPT2_VOCAB]).abs().max().item() < 1e-4
    assert torch.isneginf(got[..., GPT2_VOCAB:]).all()


def hf_reference(tmp_path, gpt2_tokenizer):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=GPT2_VOCAB, n_positions=T, n_embd=C, n_layer=L, n_head=H)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "hf")
    gpt2_tokenizer.save(tmp_path / "hf")
    return model


def state(path):
    return {k: v for k, v in gpt2kit.load(path).model.state_dict().items()}


@pytest.mark.parametrize("middle", ["model.bin", "ckpt.pt"])
def test_round_trips_through_llmc_and_nanogpt_are_exact(tmp_path, gpt2_tokenizer, middle):
    reference = hf_reference(tmp_path, gpt2_tokenizer)
    convert(tmp_path / "hf", tmp_path / middle)
    convert(tmp_path / middle, tmp_path / "back")
    before, after = state(tmp_path / "hf"), state(tmp_path / "back")
    vocab = before["wte.weight"].shape[0]
    for name, tensor in before.items():
        assert torch.equal(after[name][:vocab] if name == "wte.weight" else after[name], tensor), name
    transformers = pytest.importorskip("transformers")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert (again(ids()).logits[..., :GPT2_VOCAB] - reference(ids()).logits).abs().max().item() < 1e-5


def test_llmc_bf16_output_and_header(tmp_path, gpt2_tokenizer):
    hf_reference(tmp_path, gpt2_tokenizer)
    convert(tmp_path / "hf", tmp_path / "m.bin", dtype="bf16")
    header = np.fromfile(tmp_path / "m.bin", dtype=np.int32, count=8)
    assert header.tolist() == [20240326, 5, T, GPT2_VOCAB, L, H, C, PADDED_VOCAB]
    numel = PADDED_VOCAB * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    assert (tmp_path / "m.bin").stat().st_size == 1024 + 2 * numel
    back = state(tmp_path / "m.bin")
    before = state(tmp_path / "hf")
    assert (back["h.0.mlp.c_fc.weight"] - before["h.0.mlp.c_fc.weight"]).abs().max().item() < 1e-2


def test_gguf_has_every_tensor_and_the_vocabulary(tmp_path, gpt2_tokenizer):
    gguf = pytest.importorskip("gguf")
    hf_reference(tmp_path, gpt2_tokenizer)
    convert(tmp_path / "hf", tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight"}
    for i in range(L):
        for part in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"):
            expected |= {f"blk.{i}.{part}.weight", f"blk.{i}.{part}.bias"}
    assert set(tensors) == expected
    original = state(tmp_path / "hf")
    qkv = np.asarray(tensors["blk.1.attn_qkv.weight"].data, dtype=np.float32).reshape(3 * C, C)
    assert np.abs(qkv - original["h.1.attn.c_attn.weight"].numpy()).max() < 1e-3
    assert tensors["blk.1.attn_qkv.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.1.attn_qkv.bias"].tensor_type == gguf.GGMLQuantizationType.F32

    def field(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode() for i in f.data] if len(f.data) > 1 else f.parts[f.data[0]]

    assert bytes(field("general.architecture")).decode() == "gpt2"
    assert bytes(field("tokenizer.ggml.model")).decode() == "gpt2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == GPT2_VOCAB and tokens[15496] == "Hello" and tokens[50256] == "<|endoftext|>"
    merges = field("tokenizer.ggml.merges")
    assert merges[:3] == ["Ġ t", "Ġ a", "h e"] and len(merges) == GPT2_VOCAB - 257
    assert int(field("gpt2.block_count")[0]) == L and int(field("tokenizer.ggml.eos_token_id")[0]) == 50256


def test_ctranslate2_reads_our_model_and_agrees_greedily(tmp_path, tiny_tokenizer):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from gpt2kit.generate import GenerationConfig, generate
    from gpt2kit.model import GPT, GPTConfig

    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=64, n_layer=2, n_head=2, n_embd=32)).eval()
    gpt2kit.save(model, tiny_tokenizer, tmp_path / "m")
    converter = [sys.executable, "-m", "ctranslate2.converters.transformers"]
    result = subprocess.run(
        [*converter, "--model", str(tmp_path / "m"), "--output_dir", str(tmp_path / "ct2")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    generator = ctranslate2.Generator(str(tmp_path / "ct2"), device="cpu")
    prompt = tiny_tokenizer.encode("the river sold")
    tokens = [tiny_tokenizer.token_bytes(i) for i in prompt]
    from gpt2kit.tokenizer import token_to_str

    out = generator.generate_tokens([token_to_str(t) for t in tokens], max_length=20, sampling_topk=1)
    theirs = [step.token_id for step in out]
    ours = generate(model, tiny_tokenizer, [prompt], GenerationConfig(max_new_tokens=20, temperature=0))[0]
    assert theirs[: len(ours.token_ids)] == ours.token_ids[: len(theirs)] and len(theirs) >= 10


def test_cli_convert_and_sample_from_an_llmc_file(tmp_path, gpt2_tokenizer, run_cli):
    write_llmc_bin(tmp_path / "model.bin", nanogpt_tensors())
    result = run_cli("convert", str(tmp_path / "model.bin"), str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert "GPT-2's vocabulary is assumed" in result.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()
    }
    for model in (tmp_path / "model.bin", tmp_path / "hf"):
        result = run_cli(
            "sample", "--model", str(model), "--prompt", "Hello", "--max-new-tokens", "5", "--temperature", "0"
        )
        assert result.returncode == 0, result.stderr


def corrupt_cases(tmp_path):
    sd = nanogpt_tensors()
    write_llmc_bin(tmp_path / "good.bin", sd)
    good = (tmp_path / "good.bin").read_bytes()
    (tmp_path / "truncated.bin").write_bytes(good[: len(good) // 2])
    (tmp_path / "magic.bin").write_bytes(b"\x00" * 4 + good[4:])
    version = bytearray(good)
    version[4:8] = (7).to_bytes(4, "little")
    (tmp_path / "version.bin").write_bytes(bytes(version))
    write_nanogpt_ckpt(tmp_path / "good.pt", sd)
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:5000])
    torch.save({"weights": 1}, tmp_path / "notnano.pt")
    wrong = dict(sd)
    wrong["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(3 * C, C)
    write_nanogpt_ckpt(tmp_path / "mismatch.pt", wrong)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"model": {"type": "Unigram", "vocab": []}}')
    return {
        "truncated.bin": "truncated",
        "magic.bin": "not an llm.c model file",  # a .bin without the magic is not taken for llm.c
        "version.bin": "llm.c version 7 is not supported",
        "truncated.pt": "unreadable nanoGPT checkpoint",
        "notnano.pt": "not a nanoGPT checkpoint",
        "mismatch.pt": "'h.0.mlp.c_fc.weight' has shape [96, 32], expected [128, 32]",
    }


def test_bad_inputs_get_one_line_and_leave_nothing(tmp_path, gpt2_tokenizer, run_cli):
    cases = corrupt_cases(tmp_path)
    for name, message in cases.items():
        target = tmp_path / f"out-{name}"
        result = run_cli(
            "convert", str(tmp_path / name), str(target), *(["--from", "llmc"] if name == "magic.bin" else [])
        )
        assert result.returncode == 2, (name, result.stderr)
        line = result.stderr.strip()
        assert "\n" not in line and "Traceback" not in line and name in line, (name, line)
        assert message in line, (name, line)
        assert not target.exists() and not list(tmp_path.glob(f".out-{name}*")), name
    result = run_cli("convert", str(tmp_path / "good.bin"), str(tmp_path / "x"), "--tokenizer", str(tmp_path / "tok"))
    assert result.returncode == 2 and "model type 'Unigram' is not supported" in result.stderr
    assert not (tmp_path / "x").exists()
    result = run_cli("convert", str(tmp_path / "good.bin"), str(tmp_path / "good.pt"), "--to", "llmc", "--dtype", "f16")
    assert result.returncode == 2 and "f32 or bf16" in result.stderr


def test_formats_refuse_what_they_cannot_hold(tmp_path, tiny_tokenizer):
    from gpt2kit.model import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=32, n_layer=1, n_head=2, n_embd=16,
                          tie_word_embeddings=False))  # fmt: skip
    gpt2kit.save(model, tiny_tokenizer, tmp_path / "untied")
    with pytest.raises(CheckpointError, match="llm.c cannot hold tie_word_embeddings=False"):
        convert(tmp_path / "untied", tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()


def test_llama_cpp_runs_our_gguf_without_its_converter(tmp_path, gpt2_tokenizer):
    """Where llama-cpp-python is installed (it builds llama.cpp from source): same tokens, same greedy output."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from gpt2kit.generate import GenerationConfig, generate
    from gpt2kit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=GPT2_VOCAB, n_positions=128, n_layer=2, n_head=4, n_embd=64)).eval()
    gpt2kit.save(model, gpt2_tokenizer, tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=128, verbose=False)
    try:
        text = "Hello world, this is a test of the naïve café"
        prompt = llm.tokenize(text.encode(), add_bos=False)
        assert prompt == gpt2_tokenizer.encode(text)
        theirs = []
        for token in llm.generate(prompt, temp=0.0, top_k=1):
            theirs.append(token)
            if len(theirs) == 20:
                break
    finally:
        llm.close()
    ours = generate(model, gpt2_tokenizer, [prompt], GenerationConfig(max_new_tokens=20, temperature=0))[0]
    assert theirs == ours.token_ids
