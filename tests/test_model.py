import math

import pytest
import torch
from helpers import tiny_model

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT, PRESETS, GPTConfig, KVCache, preset_config

SMALL = GPTConfig(vocab_size=97, n_positions=64, n_layer=3, n_head=4, n_embd=32)


@pytest.fixture
def model():
    return tiny_model(SMALL.vocab_size, n_layer=SMALL.n_layer, n_head=SMALL.n_head)


def test_official_sizes_have_the_published_parameter_counts():
    expected = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    for name, count in expected.items():
        with torch.device("meta"):
            assert GPT(preset_config(name)).num_parameters() == count, name


def test_cpu_presets_exist_and_scale():
    counts = []
    for name in ("cpu-1m", "cpu-6m", "cpu-25m"):
        assert name in PRESETS
        with torch.device("meta"):
            counts.append(GPT(preset_config(name)).num_parameters(non_embedding=True))
    assert counts[0] < 1.5e6 and 4e6 < counts[1] < 8e6 and 20e6 < counts[2] < 30e6


def test_parameter_names_follow_gpt2(model):
    names = set(dict(model.named_parameters()))
    for name in ("wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight", "h.0.attn.c_proj.bias"):
        assert name in names
    for name in ("h.2.ln_2.bias", "h.2.mlp.c_fc.weight", "h.2.mlp.c_proj.weight", "ln_f.weight"):
        assert name in names
    assert not any(name.startswith("lm_head") for name in names)  # output layer tied to wte


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=1000, n_positions=64, n_layer=8, n_head=4, n_embd=256)
    model = GPT(config)
    residual = torch.cat([torch.cat([b.attn.c_proj.weight.flatten(), b.mlp.c_proj.weight.flatten()]) for b in model.h])
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.03)
    assert model.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert torch.all(model.h[0].mlp.c_fc.bias == 0)


def test_logits_shape_and_causality(model):
    idx = torch.randint(0, 97, (2, 10))
    logits = model(idx)
    assert logits.shape == (2, 10, 97)
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 97
    assert torch.allclose(model(changed)[:, :6], logits[:, :6], atol=1e-6)


def test_cached_steps_equal_full_forward(model):
    idx = torch.randint(0, 97, (2, 20))
    full = model(idx)
    cache = KVCache(SMALL, batch_size=2, max_length=32)
    pieces = [model(idx[:, :7], kv_cache=cache)]
    pieces += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(7, 12)]
    pieces.append(model(idx[:, 12:], kv_cache=cache))  # several tokens after a prefix
    assert cache.length == 20
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_left_padding_with_mask_matches_unpadded(model):
    short = torch.randint(0, 97, (1, 5))
    longer = torch.randint(0, 97, (1, 8))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1), longer])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    logits = model(batch, attention_mask=mask)
    assert torch.allclose(logits[0, 3:], model(short)[0], atol=1e-5)
    assert torch.allclose(logits[1], model(longer)[0], atol=1e-5)
    # and incrementally, with the cache
    cache = KVCache(SMALL, batch_size=2, max_length=16)
    model(batch, kv_cache=cache, attention_mask=mask)
    step = torch.tensor([[11], [12]])
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    cached = model(step, kv_cache=cache, attention_mask=mask)[:, -1]
    assert torch.allclose(cached[0], model(torch.cat([short, step[:1]], 1))[0, -1], atol=1e-5)
    assert torch.allclose(cached[1], model(torch.cat([longer, step[1:]], 1))[0, -1], atol=1e-5)


def test_greedy_decoding_with_cache_equals_without(model):
    prompt = torch.randint(0, 97, (1, 6))
    plain = prompt.clone()
    for _ in range(20):
        plain = torch.cat([plain, model(plain)[:, -1].argmax(-1, keepdim=True)], dim=1)
    cache = KVCache(SMALL, batch_size=1, max_length=64)
    cached, logits = prompt.clone(), model(prompt, kv_cache=cache)
    for _ in range(20):
        token = logits[:, -1].argmax(-1, keepdim=True)
        cached = torch.cat([cached, token], dim=1)
        logits = model(token, kv_cache=cache)
    assert torch.equal(plain, cached)


def test_context_overflow_and_bad_config_are_clear(model):
    # GPT2KitError: a user's mistake, which the CLI shows as one line rather than a traceback
    with pytest.raises(GPT2KitError, match="exceeds the context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(GPT2KitError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(GPT2KitError, match="unknown preset"):
        preset_config("gpt5")
