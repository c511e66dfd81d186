"""The inference transforms: the decode layout and int8 weights."""

import pytest
import torch
from helpers import small_train_config

import gpt2kit
from gpt2kit.checkpoint import CheckpointError
from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import GenerationConfig, generate
from gpt2kit.inference import prepare_for_decoding, quantize
from gpt2kit.model import GPT, GPTConfig


@pytest.mark.parametrize("tied", [True, False])
def test_packed_fp32_gives_the_same_logits_and_is_for_inference_only(gpt2_tokenizer, tied, tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=gpt2_tokenizer.vocab_size + 7, n_positions=64, n_layer=2, n_head=2, n_embd=32,
                       tie_word_embeddings=tied)  # fmt: skip
    model = GPT(config).eval()
    idx = torch.randint(0, 1000, (3, 9))
    with torch.no_grad():
        reference = model(idx)
    model.mask_logits(range(gpt2_tokenizer.vocab_size, config.vocab_size))
    prepare_for_decoding(model)
    prepare_for_decoding(model)  # a no-op the second time
    assert model.inference_form == "fp32-packed"
    assert type(model.h[0].attn.c_attn).__name__ == "PackedLinear" and model.output_layer is not None
    with torch.no_grad():
        got = model(idx)
    torch.testing.assert_close(got[..., : gpt2_tokenizer.vocab_size], reference[..., : gpt2_tokenizer.vocab_size],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert torch.isneginf(got[..., gpt2_tokenizer.vocab_size :]).all()
    greedy = generate(model, gpt2_tokenizer, [[1, 2, 3], [4]], GenerationConfig(max_new_tokens=5, temperature=0))
    assert all(len(c.token_ids) for c in greedy)
    with pytest.raises(GPT2KitError, match="prepared for inference \\(fp32-packed\\); train the fp32 model"):
        model(idx, targets=idx)
    with pytest.raises(CheckpointError, match="prepared for inference"):
        gpt2kit.save(model, gpt2_tokenizer, tmp_path / "x")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer):
    """A tiny model trained for a few hundred steps, so its distributions are peaked as real ones are."""
    from textgen import generated_text

    from gpt2kit.data.prepare import prepare
    from gpt2kit.train import Trainer

    root = tmp_path_factory.mktemp("quant")
    (root / "corpus.txt").write_text(generated_text(1500, seed=5))
    prepare([str(root / "corpus.txt")], tiny_tokenizer, root / "data", val_fraction=0.05, workers=1, progress=False,
            split_lines=True)  # fmt: skip
    config = small_train_config(root / "data", root / "run", preset="cpu-100k", context_length=64, max_steps=150,
                                batch_tokens=1024, micro_batch_size=16, log_interval=50, checkpoint_interval=150)  # fmt: skip
    config.optim.lr, config.optim.min_lr, config.optim.warmup_steps = 1e-2, 1e-3, 10
    result = Trainer(config).run()
    return result.checkpoint


def test_int8_agrees_with_fp32_on_a_trained_model(trained, tiny_tokenizer):
    fp32 = gpt2kit.load(trained)
    int8 = gpt2kit.load(trained, quantize="int8")
    assert int8.model.inference_form == "int8" and fp32.model.inference_form is None
    assert (
        type(int8.model.h[0].attn.c_attn).__name__ == "Linear"
        and "quantized" in type(int8.model.h[0].attn.c_attn).__module__
    )
    idx = torch.tensor([tiny_tokenizer.encode("the river sold forty blue lanterns to the old miller and")])
    with torch.no_grad():
        a, b = fp32.model(idx), int8.model(idx)
    # Stated tolerance: int8 logits within 2% of the fp32 logits' spread, and the same argmax almost everywhere.
    assert (a - b).abs().max().item() < 0.02 * (a.max() - a.min()).item()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.9
    # Greedy choices along a held-out text (teacher-forced, so one near-tie does not decide all that follows).
    from textgen import generated_text

    held_out = torch.tensor(tiny_tokenizer.encode(generated_text(60, seed=99))[:128]).view(2, 64)
    with torch.no_grad():
        same = fp32.model(held_out).argmax(-1) == int8.model(held_out).argmax(-1)
    assert same.float().mean().item() >= 0.9, f"{int(same.sum())} of {same.numel()}"
    # Free-running greedy decoding: identical until the first near-tie (a 0.006 logit margin is common here).
    config = GenerationConfig(max_new_tokens=64, temperature=0)
    x, y = (generate(m.model, m.tokenizer, ["the river"], config)[0].token_ids for m in (fp32, int8))
    assert x[:4] == y[:4]


def test_int4_agrees_with_fp32_on_a_trained_model(trained, tiny_tokenizer):
    from gpt2kit.inference import INT4_GROUP, Int4Linear

    fp32 = gpt2kit.load(trained)
    int4 = gpt2kit.load(trained, quantize="int4")
    assert int4.model.inference_form == "int4" and isinstance(int4.model.h[0].attn.c_attn, Int4Linear)
    from textgen import generated_text

    held_out = torch.tensor(tiny_tokenizer.encode(generated_text(60, seed=99))[:128]).view(2, 64)
    with torch.no_grad():
        a, b = fp32.model(held_out), int4.model(held_out)
    # Stated tolerance: 4-bit logits within 10% of the fp32 logits' spread, the same greedy choice at 80% of
    # positions, and perplexity on the held-out text within 5%.
    assert (a - b).abs().max().item() < 0.10 * (a.max() - a.min()).item()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.8
    nll = lambda logits: torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), held_out[:, 1:].flatten())  # noqa: E731
    assert nll(b).exp().item() == pytest.approx(nll(a).exp().item(), rel=0.05)
    # One layer against its dequantized weights: the kernel computes what the format stores.
    linear = fp32.model.h[0].mlp.c_fc
    packed = Int4Linear(linear.weight, linear.bias)
    groups = linear.weight.detach().reshape(-1, INT4_GROUP)
    low, high = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
    step = (high - low).clamp(min=1e-6) / 15
    dequantized = (groups.sub(low).div(step).round().clamp(0, 15) * step + low).reshape_as(linear.weight)
    x = torch.randn(3, linear.in_features)
    want = x @ dequantized.t() + linear.bias
    assert (packed(x) - want).abs().max().item() < 0.02 * want.abs().max().item()  # bf16 activations and scales


def test_int8_quantizes_the_right_matrices_of_untied_and_padded_models(tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    vocab = tiny_tokenizer.vocab_size
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab + 13, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                     tie_word_embeddings=False)  # fmt: skip
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path)
    tiny_tokenizer.save(tmp_path)
    int8 = gpt2kit.load(tmp_path, quantize="int8").model
    head = int8.output_layer
    assert head.weight().shape == (vocab + 13, 48) and not hasattr(int8, "lm_head")
    expected = reference.lm_head.weight
    assert (head.weight().dequantize() - expected).abs().max().item() < expected.abs().max().item() / 100
    assert not torch.allclose(head.weight().dequantize(), int8.wte.weight, atol=1e-2)  # not wte: untied
    quantized = [n for n, m in int8.named_modules() if "quantized" in type(m).__module__ and hasattr(m, "weight")]
    assert len(quantized) == 2 * 4 + 1  # four linears per block, and the output layer
    idx = torch.randint(0, vocab, (1, 20))
    with torch.no_grad():
        logits = int8(idx)
        want = reference(idx).logits
    assert torch.isneginf(logits[..., vocab:]).all()  # padding rows stay masked
    assert (logits[..., :vocab] - want[..., :vocab]).abs().max().item() < 0.05 * (want.max() - want.min()).item()
    with pytest.raises(GPT2KitError, match="int4 quantization needs a width \\(n_embd\\) divisible by 32"):
        gpt2kit.load(tmp_path, quantize="int4")  # 48 wide
    config.n_embd = 64
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path / "wide")
    tiny_tokenizer.save(tmp_path / "wide")
    want = reference(idx).logits.detach()
    int4 = gpt2kit.load(tmp_path / "wide", quantize="int4").model  # vocab + 13 rows: padded to 16s inside
    assert not hasattr(int4, "lm_head")
    with torch.no_grad():
        logits = int4(idx)
    assert logits.shape == want.shape and torch.isneginf(logits[..., vocab:]).all()
    assert (logits[..., :vocab] - want[..., :vocab]).abs().max().item() < 0.15 * (want.max() - want.min()).item()


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_quantized_model_refuses_training_and_saving(trained, tmp_path, kind):
    quantized = gpt2kit.load(trained, quantize=kind)
    idx = torch.zeros((1, 8), dtype=torch.long)
    with pytest.raises(GPT2KitError, match=f"prepared for inference \\({kind}\\); train the fp32 model"):
        quantized.model(idx, targets=idx)
    with pytest.raises(CheckpointError, match="prepared for inference"):
        gpt2kit.save(quantized.model, quantized.tokenizer, tmp_path / "x")
    with pytest.raises(GPT2KitError, match="already prepared for inference"):
        quantize(quantized.model, "int8")
    with pytest.raises(GPT2KitError, match="'int2' is not supported"):
        quantize(gpt2kit.load(trained).model, "int2")


def test_sample_and_eval_take_quantize(trained, tmp_path, capsys):
    from gpt2kit.cli import main

    args = ["sample", "--model", str(trained), "--prompt", "the river", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(args + ["--quantize", "int8", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(args + ["--quantize", "int4", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main(args + ["--quantize", "int2"])
    text = tmp_path / "held_out.txt"
    text.write_text("the river sold forty blue lanterns to the old miller.\n" * 20)
    results = tmp_path / "results.json"
    evaluate = [
        "eval",
        "--model",
        str(trained),
        "--tasks",
        "wikitext2",
        "--data",
        f"wikitext2={text}",
        "--device",
        "cpu",
    ]
    assert main(evaluate + ["--quantize", "int8", "--out", str(results)]) == 0
    import json

    ppl = json.loads(results.read_text())["wikitext2"]["metrics"]["ppl"]
    assert main(evaluate + ["--out", str(tmp_path / "fp32.json")]) == 0
    fp32_ppl = json.loads((tmp_path / "fp32.json").read_text())["wikitext2"]["metrics"]["ppl"]
    assert ppl == pytest.approx(fp32_ppl, rel=0.02)
    assert main(evaluate + ["--quantize", "int4", "--out", str(tmp_path / "int4.json")]) == 0
    int4_ppl = json.loads((tmp_path / "int4.json").read_text())["wikitext2"]["metrics"]["ppl"]
    assert int4_ppl == pytest.approx(fp32_ppl, rel=0.05)  # issue 27's bound for 4 bits on a trained model


def test_serve_with_int8_weights(trained):
    httpx = pytest.importorskip("httpx")
    from gpt2kit.serve import ServerConfig, create_app
    from tests.serving import BackgroundServer

    int8 = gpt2kit.load(trained, quantize="int8")
    prepare_for_decoding(int8.model)
    with BackgroundServer(create_app(int8.model, int8.tokenizer, ServerConfig(), model_name="q")) as url:
        body = {"prompt": ["the river", "a boat"], "max_tokens": 6, "n": 2, "logprobs": 2, "seed": 1}
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        choices = response.json()["choices"]
        assert len(choices) == 4 and all(c["logprobs"]["top_logprobs"] for c in choices)
        with httpx.stream(
            "POST", f"{url}/v1/completions", json={"prompt": "the", "max_tokens": 4, "stream": True}
        ) as r:
            assert r.status_code == 200 and "data: [DONE]" in r.read().decode()
