"""The inference transforms: the C decoding step, int8 and int4 weights."""

import copy
import math

import pytest
import torch
from helpers import small_train_config

import gpt2kit
from gpt2kit import kernels
from gpt2kit.checkpoint import CheckpointError
from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import GenerationConfig, generate
from gpt2kit.inference import (
    INT4_GROUP,
    DecodeStep,
    KernelLinear,
    QuantizedLinear,
    prepare_for_decoding,
    quantize,
)
from gpt2kit.model import GPT, GPTConfig, KVCache


def _kernels_or_skip():
    if kernels.library() is None:
        pytest.skip(f"C kernels unavailable: {kernels.unavailable()}")


def _padded_model(gpt2_tokenizer, tied: bool) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=gpt2_tokenizer.vocab_size + 7, n_positions=64, n_layer=2, n_head=2, n_embd=64,
                       tie_word_embeddings=tied)  # fmt: skip
    model = GPT(config).eval()
    model.mask_logits(range(gpt2_tokenizer.vocab_size, config.vocab_size))
    return model


@pytest.mark.parametrize("with_kernels", [True, False])
@pytest.mark.parametrize("tied", [True, False])
def test_prepared_fp32_gives_the_same_logits_and_is_for_inference_only(
    gpt2_tokenizer, tied, with_kernels, tmp_path, monkeypatch
):
    if with_kernels:
        _kernels_or_skip()
    else:  # no C compiler: oneDNN-packed linears instead
        monkeypatch.setattr(kernels, "library", lambda: None)
    model = _padded_model(gpt2_tokenizer, tied)
    idx = torch.randint(0, 1000, (3, 9))
    with torch.no_grad():
        reference = model(idx)
    count = model.num_parameters()
    prepare_for_decoding(model)
    prepare_for_decoding(model)  # a no-op the second time
    assert model.num_parameters() == count  # what eval records beside its scores
    form = "fp32-decoding" if with_kernels else "fp32-packed"
    assert model.inference_form == form
    assert (model.decode_step is not None) == with_kernels
    if not with_kernels:
        assert type(model.h[0].attn.c_attn).__name__ == "PackedLinear" and model.output_layer is not None
    with torch.no_grad():
        got = model(idx)
    torch.testing.assert_close(got[..., : gpt2_tokenizer.vocab_size], reference[..., : gpt2_tokenizer.vocab_size],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert torch.isneginf(got[..., gpt2_tokenizer.vocab_size :]).all()
    greedy = generate(model, gpt2_tokenizer, [[1, 2, 3], [4]], GenerationConfig(max_new_tokens=5, temperature=0))
    assert all(len(c.token_ids) for c in greedy)
    with pytest.raises(GPT2KitError, match=f"prepared for inference \\({form}\\); train the fp32 model"):
        model(idx, targets=idx)
    with pytest.raises(CheckpointError, match="prepared for inference"):
        gpt2kit.save(model, gpt2_tokenizer, tmp_path / "x")


def _step_both(reference: GPT, model: GPT, prompts: list[list[int]], steps: int, room: int = 0):
    """Left-pad `prompts`, encode them with `reference` into two caches, then run `steps` single-token steps: the
    reference's forward on one cache, `model.decode_step` on the other. Yields both logits, the caches and the
    attention mask per step."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    padded = bool((mask == 0).any())
    caches = [m.new_kv_cache(len(prompts), width + steps + room) for m in (reference, model)]
    with torch.no_grad():
        for cache in caches:
            logits = reference(ids, kv_cache=cache, attention_mask=mask if padded else None)[:, -1]
        for _ in range(steps):
            tokens = logits.argmax(-1)
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=torch.long)], 1)
            logits = reference(tokens[:, None], kv_cache=caches[0], attention_mask=mask if padded else None)[:, -1]
            got = model.decode_step(tokens, caches[1], mask if padded else None)
            yield logits, got, caches, mask


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize(
    "prompts",
    [[[5, 6, 7, 8]], [[1, 2, 3], [4], [9, 10, 11, 12, 13]], [[1, 2], [3], [4, 5, 6], [7], [8, 9, 10, 11], [12]]],
)
def test_the_c_decoding_step_matches_the_model_in_fp32(gpt2_tokenizer, tied, prompts):
    _kernels_or_skip()
    reference = _padded_model(gpt2_tokenizer, tied)
    model = copy.deepcopy(reference)
    prepare_for_decoding(model)
    vocab = gpt2_tokenizer.vocab_size
    for want, got, (want_cache, got_cache), _ in _step_both(reference, model, prompts, steps=12):
        torch.testing.assert_close(got[:, :vocab], want[:, :vocab], rtol=1e-5, atol=1e-5)
        assert torch.isneginf(got[:, vocab:]).all()  # padded rows stay -inf
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        assert got_cache.length == want_cache.length
        torch.testing.assert_close(got_cache.keys, want_cache.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_cache.values, want_cache.values, rtol=1e-5, atol=1e-6)


def test_the_c_step_follows_the_cache_as_rows_leave_and_padding_is_cut(gpt2_tokenizer):
    """As Decoder._drop_finished does: rows leave (cache.select) and columns of padding every row has are cut off
    (a sliced view of the cache, with its own strides); the step keeps matching the model."""
    _kernels_or_skip()
    reference = _padded_model(gpt2_tokenizer, True)
    model = copy.deepcopy(reference)
    prepare_for_decoding(model)
    vocab = gpt2_tokenizer.vocab_size
    prompts = [[1], [2, 3, 4, 5, 6, 7], [8, 9]]
    *_, last = _step_both(reference, model, prompts, steps=3, room=4)  # the caches and mask after three steps
    _, _, (want_cache, got_cache), mask = last
    # leave row 1 (the long one): what remains has two columns of padding in common
    mask = mask[[0, 2]]
    for cache in (want_cache, got_cache):
        cache.select(torch.tensor([0, 2]))
        cache.keys, cache.values = cache.keys[:, :, :, 2:], cache.values[:, :, :, 2:]
        cache.length -= 2
    mask = mask[:, 2:]
    tokens = torch.tensor([11, 12])
    with torch.no_grad():
        for _ in range(4):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            want = reference(tokens[:, None], kv_cache=want_cache, attention_mask=mask)[:, -1]
            got = model.decode_step(tokens, got_cache, mask)
            torch.testing.assert_close(got[:, :vocab], want[:, :vocab], rtol=1e-5, atol=1e-5)
            tokens = want[:, :vocab].argmax(-1)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_the_quantized_c_step_matches_the_quantized_model(gpt2_tokenizer, kind):
    """The same kernels in the step and in the model's own forward (prompts), so the two agree closely, over six
    left-padded rows (the four-row integer paths and a remainder). Not exactly: a last-bit difference upstream (the
    vector tanh, the attention's summation order) can move an activation across an int8 rounding boundary."""
    _kernels_or_skip()
    reference, model = (quantize(_padded_model(gpt2_tokenizer, True), kind) for _ in range(2))  # the same weights
    prepare_for_decoding(model)
    vocab = gpt2_tokenizer.vocab_size
    prompts = [[1, 2], [3], [4, 5, 6], [7], [8, 9, 10, 11], [12]]
    for want, got, *_ in _step_both(reference, model, prompts, steps=6):
        spread = (want[:, :vocab].max() - want[:, :vocab].min()).item()
        assert (got[:, :vocab] - want[:, :vocab]).abs().max().item() < 1e-2 * spread


@pytest.mark.parametrize("portable", [False, True])
def test_the_c_step_reads_and_writes_fp16_caches(gpt2_tokenizer, portable):
    """The step against the model's forward, both with fp16 caches: the same keys and values are written, and
    the logits agree as closely as with fp32 caches. Also through the portable C path."""
    _kernels_or_skip()
    reference = _padded_model(gpt2_tokenizer, True)
    model = copy.deepcopy(reference)
    prepare_for_decoding(model)
    if portable:
        model.decode_step = DecodeStep(model, kernels.build_library(("-mno-avx512f",)))
    if not model.decode_step.lib.gpt2_half_caches():
        pytest.skip("these kernels were built without F16C")
    reference.kv_cache_dtype = model.kv_cache_dtype = torch.float16
    vocab = gpt2_tokenizer.vocab_size
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    for want, got, (want_cache, got_cache), _ in _step_both(reference, model, prompts, steps=6):
        assert got_cache.keys.dtype == got_cache.values.dtype == torch.float16
        torch.testing.assert_close(got[:, :vocab], want[:, :vocab], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_cache.keys.float(), want_cache.keys.float(), rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(got_cache.values.float(), want_cache.values.float(), rtol=1e-3, atol=1e-4)


def test_the_c_step_refuses_what_it_cannot_read(gpt2_tokenizer):
    _kernels_or_skip()
    model = _padded_model(gpt2_tokenizer, True)
    prepare_for_decoding(model)
    cache = KVCache(model.config, 2, 16)
    with torch.no_grad():
        model(torch.tensor([[1, 2], [3, 4]]), kv_cache=cache)
    with pytest.raises(GPT2KitError, match="attention_mask \\(2, 2\\) does not cover 2 rows and 3 positions"):
        model.decode_step(torch.tensor([1, 2]), cache, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(GPT2KitError, match="token ids must be in 0..50263"):
        model.decode_step(torch.tensor([1, 50264]), cache, None)
    model.wte.weight.data = model.wte.weight.data.clone()  # as `.to()` or load_state_dict(assign=True) would
    with pytest.raises(GPT2KitError, match="weights moved after prepare_for_decoding"):
        model.decode_step(torch.tensor([1, 2]), cache, None)


def test_generation_uses_the_c_step_and_decodes_as_pytorch_does(gpt2_tokenizer, monkeypatch):
    _kernels_or_skip()
    reference = _padded_model(gpt2_tokenizer, True)
    model = copy.deepcopy(reference)
    prepare_for_decoding(model)
    calls = []
    step = model.decode_step
    monkeypatch.setattr(model, "decode_step", lambda *a: calls.append(1) or step(*a))
    config = GenerationConfig(max_new_tokens=20, temperature=0, ignore_eos=True)
    prompts = [[1, 2, 3], [4], [7, 8, 9, 10, 11]]
    want = generate(reference, gpt2_tokenizer, prompts, config)
    got = generate(model, gpt2_tokenizer, prompts, config)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert len(calls) == 19  # every token after the first, which the prompt's encoding gives
    with pytest.raises(GPT2KitError, match="exceeds the context of 64"):
        cache = KVCache(model.config, 1, 80)
        with torch.no_grad():
            model(torch.zeros((1, 64), dtype=torch.long), kv_cache=cache)
        model.decode_step(torch.tensor([1]), cache, None)


def test_the_portable_c_path_computes_the_same(gpt2_tokenizer):
    """The kernels without AVX-512 (plain C the compiler vectorizes), as a CPU without it would build them: every
    linear kind at several row counts, and whole decoding steps."""
    _kernels_or_skip()
    import ctypes

    portable = kernels.build_library(("-mno-avx512f",))
    assert portable.gpt2_integer_dots() == 0
    torch.manual_seed(0)
    for kind in ("fp32", "int8", "int4"):
        weight, bias = torch.randn(70, 96) * 0.02, torch.randn(70)
        linear = KernelLinear(weight, bias) if kind == "fp32" else QuantizedLinear(weight, bias, kind)
        stored = weight if kind == "fp32" else linear.dequantized()
        for rows in (1, 3, 9):
            x = torch.randn(rows, 96)
            y = torch.empty(rows, 70)
            portable.gpt2_linear(ctypes.byref(linear.spec), x.data_ptr(), rows, y.data_ptr())
            torch.testing.assert_close(y, torch.nn.functional.linear(x, stored, bias), rtol=1e-4, atol=1e-5)
    reference = _padded_model(gpt2_tokenizer, True)
    model = copy.deepcopy(reference)
    prepare_for_decoding(model)
    model.decode_step = DecodeStep(model, portable)
    for want, got, *_ in _step_both(reference, model, [[1, 2, 3], [4], [5, 6, 7, 8, 9]], steps=6):
        torch.testing.assert_close(got[:, : gpt2_tokenizer.vocab_size], want[:, : gpt2_tokenizer.vocab_size],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_loading_the_kernels_keeps_subnormal_numbers():
    """Built -ffast-math, they must not link crtfastmath, which sets flush-to-zero for the whole process."""
    _kernels_or_skip()
    import numpy as np

    assert np.float32(1e-40) * np.float32(1.0) != 0
    assert (torch.tensor([1e-40]) * 1.0).item() != 0


def test_kernels_that_cannot_build_leave_pytorch_in_charge(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    kernels.library.cache_clear()
    try:
        broken = tmp_path / "cc"
        broken.write_text("#!/bin/sh\necho 'cc: error: out of cheese' >&2\nexit 1\n")
        broken.chmod(0o755)
        monkeypatch.setenv("CC", str(broken))
        assert kernels.library() is None
        assert "could not build the CPU kernels: cc failed on cpu_decode.c" in kernels.unavailable()
        assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-written is left
    finally:
        kernels.library.cache_clear()
    monkeypatch.setenv("GPT2KIT_CPU_KERNELS", "0")
    try:
        assert kernels.library() is None and "GPT2KIT_CPU_KERNELS=0" in kernels.unavailable()
    finally:
        kernels.library.cache_clear()


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
    assert int8.model.num_parameters() == fp32.model.num_parameters()
    assert isinstance(int8.model.h[0].attn.c_attn, QuantizedLinear) and int8.model.h[0].attn.c_attn.kind == "int8"
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
    fp32 = gpt2kit.load(trained)
    int4 = gpt2kit.load(trained, quantize="int4")
    assert int4.model.inference_form == "int4" and isinstance(int4.model.h[0].attn.c_attn, QuantizedLinear)
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
    # One layer: every stored weight is its group's nearest point of 16 from min to max, give or take bf16's
    # rounding of the scale and offset.
    linear = fp32.model.h[0].mlp.c_fc
    packed = QuantizedLinear(linear.weight, linear.bias, "int4")
    groups = linear.weight.detach().reshape(-1, INT4_GROUP)
    step = (groups.amax(1, keepdim=True) - groups.amin(1, keepdim=True)) / 15
    error = (packed.dequantized().reshape_as(groups) - groups).abs()
    assert (error <= 0.5 * step * 1.1).all()


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("width", [32, 64, 96])  # one group, a pair of groups, an odd last group
@pytest.mark.parametrize("rows", [1, 3, 16, 40])  # one row, a few, and past the fp32 fallback's KERNEL_ROWS
def test_a_quantized_linear_computes_with_the_weights_it_stores(kind, width, rows):
    torch.manual_seed(0)
    weight, bias = torch.randn(70, width) * 0.02, torch.randn(70)
    linear = QuantizedLinear(weight, bias, kind)
    stored = linear.dequantized()
    assert (stored - weight).norm() < (0.01 if kind == "int8" else 0.1) * weight.norm()
    x = torch.randn(rows, width)
    want = torch.nn.functional.linear(x, stored, bias)
    # The kernels quantize each activation row to int8 (where the CPU has VNNI): 2% of the largest product.
    assert (linear(x) - want).abs().max().item() < 0.02 * (want - bias).abs().max().item()
    if kernels.library() is not None:
        with pytest.MonkeyPatch.context() as patch:  # without the kernels: PyTorch unpacks the same bytes
            patch.setattr(kernels, "library", lambda: None)
            assert torch.equal(linear.dequantized(), stored)
            torch.testing.assert_close(linear(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 9])  # one row, and 4 x 4 tiles with edges of rows and outputs
def test_the_fp32_kernel_is_a_linear(rows):
    _kernels_or_skip()
    import ctypes

    torch.manual_seed(0)
    weight, bias, x = torch.randn(70, 100), torch.randn(70), torch.randn(rows, 100)
    spec = kernels.Linear(kernels.KIND_F32, 100, 70, weight.data_ptr(), None, None, bias.data_ptr(), None)
    y = torch.empty(rows, 70)
    kernels.library().gpt2_linear(ctypes.byref(spec), x.data_ptr(), rows, y.data_ptr())
    torch.testing.assert_close(y, torch.nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "bound"), [("int8", 0.01), ("int4", 0.05)])
def test_decoding_a_quantized_model_keeps_its_perplexity(trained, tiny_tokenizer, kind, bound):
    """Teacher-forced through the C step, token by token, as `sample` and `serve` run: perplexity on held-out text
    within issue 27's bounds of fp32's (1% for int8, 5% for int4)."""
    _kernels_or_skip()
    from textgen import generated_text

    held_out = torch.tensor(tiny_tokenizer.encode(generated_text(60, seed=99))[:128]).view(2, 64)
    losses = {}
    for form in ("fp32", kind):
        loaded = gpt2kit.load(trained, quantize=None if form == "fp32" else form)
        prepare_for_decoding(loaded.model)
        cache = loaded.model.new_kv_cache(2, 64)  # fp16 for the quantized models, as `sample` and `serve` make it
        assert cache.keys.dtype == (torch.float32 if form == "fp32" else torch.float16)
        with torch.no_grad():
            logits = loaded.model(held_out[:, :1], kv_cache=cache)[:, -1]
            steps = [logits]
            for t in range(1, 63):
                steps.append(loaded.model.decode_step(held_out[:, t], cache, None))
        logits = torch.stack(steps, 1)
        losses[form] = torch.nn.functional.cross_entropy(logits.flatten(0, 1), held_out[:, 1:].flatten()).item()
    assert math.exp(losses[kind]) == pytest.approx(math.exp(losses["fp32"]), rel=bound)


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
    assert head.dequantized().shape == (vocab + 13, 48) and not hasattr(int8, "lm_head")
    expected = reference.lm_head.weight
    assert (head.dequantized() - expected).abs().max().item() < expected.abs().max().item() / 100
    assert not torch.allclose(head.dequantized(), int8.wte.weight, atol=1e-2)  # not wte: untied
    quantized = [n for n, m in int8.named_modules() if isinstance(m, QuantizedLinear)]
    assert len(quantized) == 2 * 4 + 1  # four linears per block, and the output layer
    idx = torch.randint(0, vocab, (1, 20))
    with torch.no_grad():
        logits = int8(idx)
        want = reference(idx).logits
    assert torch.isneginf(logits[..., vocab:]).all()  # padding rows stay masked
    assert (logits[..., :vocab] - want[..., :vocab]).abs().max().item() < 0.05 * (want.max() - want.min()).item()
    with pytest.raises(GPT2KitError, match="int4 quantization needs widths \\(n_embd, the MLP's\\) divisible by 32"):
        gpt2kit.load(tmp_path, quantize="int4")  # 48 wide
    config.n_embd = 64
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path / "wide")
    tiny_tokenizer.save(tmp_path / "wide")
    want = reference(idx).logits.detach()
    int4 = gpt2kit.load(tmp_path / "wide", quantize="int4").model
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


# -- sampling's passes over the vocabulary ---------------------------------------------------------------------
def _logits_with_ties_and_masks(seed: int, rows: int = 5, width: int = 1000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    padded = torch.randn(rows, width + 37, generator=generator) * 4
    padded[:, 100:300] = float("-inf")  # masked tokens, as logit_bias and min_tokens make them
    padded[1, 17] = padded[1, 950] = padded[1].max() + 1  # a tie for the largest: the earlier index wins
    padded[2, 999] = padded[2].max() + 1  # the largest in the scalar tail
    padded[3] = float("-inf")
    padded[3, 500] = 0.0
    padded[4, : width // 2] = padded[4, width // 2 : width].clone()  # every value twice
    return padded[:, :width]  # rows padded_width apart, as a model with a padded vocabulary returns them


@pytest.mark.parametrize("seed", [0, 1])
def test_argmax_and_logsumexp_kernel_equal_torch(seed):
    _kernels_or_skip()
    logits = _logits_with_ties_and_masks(seed)
    argmax, logsumexp = kernels.argmax_logsumexp(logits)
    assert torch.equal(argmax, logits.argmax(-1))
    assert torch.allclose(logsumexp, torch.logsumexp(logits, -1), rtol=1e-5, atol=1e-5)
    everything_masked = torch.full((1, 40), float("-inf"))
    assert kernels.argmax_logsumexp(everything_masked)[1].item() == float("-inf")
    assert kernels.argmax_logsumexp(logits.double()) is None  # not a case the kernel takes: torch's then


@pytest.mark.parametrize("k", [1, 3, 16, 40, 128])
def test_top_k_kernel_equals_torch(k):
    _kernels_or_skip()
    logits = _logits_with_ties_and_masks(3)
    values, indices = kernels.top_k(logits, k)
    expected_values, _ = logits.topk(k, -1)
    assert torch.equal(values, expected_values)
    assert torch.equal(logits.gather(1, indices), values)
    for row in range(logits.shape[0]):  # ties in the earlier-index-first order
        for position in range(1, k):
            if values[row, position] == values[row, position - 1]:
                assert indices[row, position] > indices[row, position - 1]
    assert kernels.top_k(logits, kernels.TOP_K_LIMIT + 1) is None


def test_sampling_picks_the_same_tokens_with_and_without_the_kernels(gpt2_tokenizer, monkeypatch):
    _kernels_or_skip()  # without them both sides would be torch's
    from gpt2kit.sampling import next_tokens
    from gpt2kit.sequences import make_sequences

    def pick():
        configs = [
            GenerationConfig(temperature=0.0),
            GenerationConfig(temperature=0.8, top_k=40, seed=3),
            GenerationConfig(temperature=0.0, logit_bias={11: 5.0}),
            GenerationConfig(temperature=1.2, top_k=5, top_p=0.9, seed=4),
        ]
        rows = [make_sequences(gpt2_tokenizer, ["a"], config, 1024)[0] for config in configs]
        logits = torch.randn(len(rows), gpt2_tokenizer.vocab_size + 7, generator=torch.Generator().manual_seed(9)) * 3
        return [next_tokens(logits, rows, gpt2_tokenizer) for _ in range(3)]

    with_kernels = pick()
    monkeypatch.setattr(kernels, "argmax_logsumexp", lambda logits: None)
    monkeypatch.setattr(kernels, "top_k", lambda logits, k: None)
    for (tokens, logprobs, _), (expected_tokens, expected_logprobs, _) in zip(with_kernels, pick(), strict=True):
        assert torch.equal(tokens, expected_tokens)
        assert torch.allclose(logprobs, expected_logprobs, atol=1e-5)
