import logging

import pytest
import torch
from torch import nn

import gpt2kit
from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import Decoder, GenerationConfig, common_prefix_length, generate, stream
from gpt2kit.model import GPT, GPTConfig, KVCache
from gpt2kit.sampling import _sample, _shape_logits
from gpt2kit.sequences import SequenceState, _Text, make_sequences

GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def model(gpt2_tokenizer):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=64, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).eval()


def naive_greedy(model, ids, n):
    """Full recompute at every step, no cache, no batching: the reference."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            if token == 50256:
                break
            out.append(token)
            ids.append(token)
    return out


class BigramModel(nn.Module):
    """A stand-in model that always predicts `successor[current token]`: scripts exact outputs."""

    def __init__(self, vocab_size: int, successor: dict[int, int], n_positions: int = 64):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, n_positions=n_positions, n_layer=1, n_head=1, n_embd=1)
        self.wte = nn.Embedding(1, 1)
        table = torch.full((vocab_size,), 50256, dtype=torch.long)
        for token, following in successor.items():
            table[token] = following
        self.register_buffer("table", table)

    def new_kv_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache(self.config, batch_size, max_length)

    def forward(self, idx, *, kv_cache=None, attention_mask=None, logits_to_keep=0):
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
        logits = torch.zeros(*idx.shape, self.config.vocab_size)
        logits.scatter_(
            -1, self.table[idx][..., None], 100.0
        )  # the rest of the vocabulary gets ~e-100: deterministic even when sampling
        return logits


def scripted(tokenizer, pieces: list[bytes], start: str = "@"):
    """A BigramModel that continues `start` with the byte-level tokens of `pieces`, then `<|endoftext|>`."""
    tokens = [tokenizer.encode(start)[0]]
    for piece in pieces:
        tokens.append(tokenizer.mergeable_ranks[piece])
    assert len(set(tokens)) == len(tokens), "a bigram script needs distinct tokens"
    successor = dict(zip(tokens, tokens[1:] + [tokenizer.eot_token], strict=True))
    return BigramModel(tokenizer.vocab_size, successor)


# -- correctness of the cached, batched decoder ---------------------------------------------


def test_logits_to_keep_computes_only_the_last_positions(model):
    idx = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        full = model(idx)
        assert torch.allclose(model(idx, logits_to_keep=1), full[:, -1:], atol=1e-6)
        assert model(idx, logits_to_keep=3).shape == (2, 3, model.config.vocab_size)


def test_greedy_batched_with_cache_equals_naive_full_recompute(model, gpt2_tokenizer):
    prompts = ["Hello world, this is", "A", "The quick brown fox jumps over the lazy"]
    results = generate(model, gpt2_tokenizer, prompts, GenerationConfig(max_new_tokens=12, **GREEDY))
    for prompt, result in zip(prompts, results, strict=True):
        expected = naive_greedy(model, gpt2_tokenizer.encode(prompt), 12)
        assert result.token_ids == expected
        assert result.text == gpt2_tokenizer.decode(expected)
        assert result.finish_reason == ("length" if len(expected) == 12 else "stop")
        assert result.prompt_token_ids == gpt2_tokenizer.encode(prompt)


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory, gpt2_tokenizer):
    """A transformers GPT-2 and the same model loaded by gpt2kit from its save_pretrained directory."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=48, n_layer=3, n_head=4)
    reference = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # sharper logits than a fresh init, so the argmax is well separated
        reference.transformer.wte.weight.mul_(8)
    directory = tmp_path_factory.mktemp("hf")
    reference.save_pretrained(directory)
    gpt2_tokenizer.save(directory)
    return reference, gpt2kit.load(directory)


def test_greedy_matches_transformers_generate(hf_reference, gpt2_tokenizer):
    reference, loaded = hf_reference
    prompts = ["Once upon a time", "The meaning of life is that the", "Zebras"]
    ours = generate(loaded.model, loaded.tokenizer, prompts, GenerationConfig(max_new_tokens=20, **GREEDY))
    for prompt, result in zip(prompts, ours, strict=True):
        ids = torch.tensor([gpt2_tokenizer.encode(prompt)])
        with torch.no_grad():
            out = reference.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20, pad_token_id=50256
            )
        theirs = out[0, ids.shape[1] :].tolist()
        if 50256 in theirs:
            theirs = theirs[: theirs.index(50256)]
        assert result.token_ids == theirs


def test_sequences_joining_a_running_batch_get_the_same_tokens(model, gpt2_tokenizer):
    config = GenerationConfig(max_new_tokens=10, **GREEDY)
    first, second = make_sequences(gpt2_tokenizer, ["The river", "A merchant sold forty lanterns to"], config, 64)
    decoder = Decoder(model, gpt2_tokenizer)
    decoder.add([first])
    for _ in range(4):
        decoder.step()
    decoder.add([second])  # joins mid-flight, with a longer prompt than the running row
    assert decoder.active == 2
    while decoder.active:
        decoder.step()
    assert first.tokens == naive_greedy(model, first.prompt_ids, 10)
    assert second.tokens == naive_greedy(model, second.prompt_ids, 10)


def test_finished_rows_leave_the_batch(gpt2_tokenizer):
    model = scripted(gpt2_tokenizer, [b"a", b"b", b"c", b"d", b"e", b"f"])
    short = SequenceState([gpt2_tokenizer.encode("c")[0]], GenerationConfig(max_new_tokens=9), gpt2_tokenizer, 0)
    long = SequenceState([gpt2_tokenizer.encode("@")[0]], GenerationConfig(max_new_tokens=9), gpt2_tokenizer, 1)
    decoder = Decoder(model, gpt2_tokenizer)
    decoder.add([short, long])
    sizes = []
    while decoder.active:
        decoder.step()
        sizes.append(decoder.cache.keys.shape[1] if decoder.cache is not None else 0)
    assert short.text == "def" and long.text == "abcdef"
    assert short.finish_reason == long.finish_reason == "stop"
    assert sizes[:3] == [2, 2, 2] and sizes[3] == 1  # the short row ended at <|endoftext|> and was dropped


def test_long_prompt_is_truncated_with_a_warning(model, gpt2_tokenizer, caplog):
    ids = list(range(1000, 1100))  # 100 tokens, context 64
    with caplog.at_level(logging.WARNING):
        (result,) = generate(model, gpt2_tokenizer, [ids], GenerationConfig(max_new_tokens=3, **GREEDY))
    assert "exceed the context of 64" in caplog.text
    assert result.prompt_token_ids == ids[-64:]
    assert len(result.token_ids) == 3


def test_generation_slides_past_the_context(model, gpt2_tokenizer):
    prompt = gpt2_tokenizer.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z")
    config = GenerationConfig(max_new_tokens=100, **GREEDY)
    (result,) = generate(model, gpt2_tokenizer, [prompt], config)
    assert len(prompt) + 100 > 64
    assert len(result.token_ids) == 100 or result.finish_reason == "stop"
    # Before the window fills, the tokens are plain greedy ones.
    fits = 64 - len(prompt) + 1
    assert result.token_ids[:fits] == naive_greedy(model, prompt, fits)


def test_empty_and_token_prompts(model, gpt2_tokenizer):
    config = GenerationConfig(max_new_tokens=4, **GREEDY)
    empty, as_ids = generate(model, gpt2_tokenizer, ["", gpt2_tokenizer.encode("Hi there")], config)
    assert empty.prompt_token_ids == [gpt2_tokenizer.eot_token]  # unconditional, from <|endoftext|>
    assert as_ids.token_ids == generate(model, gpt2_tokenizer, ["Hi there"], config)[0].token_ids


def test_max_batch_size_refills_and_keeps_order(model, gpt2_tokenizer):
    prompts = [f"Number {i} is" for i in range(7)]
    config = GenerationConfig(max_new_tokens=5, **GREEDY)
    small = generate(model, gpt2_tokenizer, prompts, config, max_batch_size=2)
    large = generate(model, gpt2_tokenizer, prompts, config)
    assert [r.token_ids for r in small] == [r.token_ids for r in large]


# -- sampling -----------------------------------------------------------------------------


def test_same_seed_same_text_and_independent_of_batch(model, gpt2_tokenizer):
    config = GenerationConfig(max_new_tokens=16, temperature=1.0, top_k=50, seed=1234)
    a = generate(model, gpt2_tokenizer, ["Alpha", "Beta gamma"], config)
    b = generate(model, gpt2_tokenizer, ["Alpha", "Beta gamma"], config)
    assert [r.text for r in a] == [r.text for r in b]
    # Prompt i samples with seed + i, whatever else is in the batch.
    alone = generate(model, gpt2_tokenizer, ["Beta gamma"], GenerationConfig(**{**config.__dict__, "seed": 1235}))
    assert alone[0].token_ids == a[1].token_ids
    other = generate(model, gpt2_tokenizer, ["Alpha"], GenerationConfig(**{**config.__dict__, "seed": 99}))
    assert other[0].token_ids != a[0].token_ids


def rows_for(tokenizer, n, **settings):
    return [SequenceState([0], GenerationConfig(seed=i, **settings), tokenizer, seed=i) for i in range(n)]


@pytest.mark.parametrize("nucleus_guess", [1024, 1])  # 1: the nucleus is not in the guess, so a full sort
def test_sampling_follows_temperature_top_k_and_top_p(tiny_tokenizer, monkeypatch, nucleus_guess):
    monkeypatch.setattr("gpt2kit.sampling.NUCLEUS_GUESS", nucleus_guess)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)

    def frequencies(**settings):
        rows = rows_for(tiny_tokenizer, 4000, **settings)
        return torch.bincount(_sample(logits, rows), minlength=4).float() / 4000

    assert torch.allclose(frequencies(), probs, atol=0.03)
    assert torch.allclose(frequencies(top_k=2), torch.tensor([0.625, 0.375, 0, 0]), atol=0.03)
    # top_p 0.7: 0.5 alone is short of 0.7, 0.5 + 0.3 reaches it; renormalised over those two.
    assert torch.allclose(frequencies(top_p=0.7), torch.tensor([0.625, 0.375, 0, 0]), atol=0.03)
    assert frequencies(top_k=1).tolist() == [1, 0, 0, 0]
    sharp = (probs**2) / (probs**2).sum()  # temperature 0.5 squares the probabilities
    assert torch.allclose(frequencies(temperature=0.5), sharp, atol=0.03)
    top3 = sharp * torch.tensor([1, 1, 1, 0])  # top-k on the raw logits, temperature on the k kept: the same draw
    assert torch.allclose(frequencies(top_k=3, temperature=0.5), top3 / top3.sum(), atol=0.03)
    assert torch.allclose(frequencies(top_k=3, top_p=0.85), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95, atol=0.03)
    mixed = rows_for(tiny_tokenizer, 3, top_k=1) + rows_for(tiny_tokenizer, 3, top_p=0.4) + rows_for(tiny_tokenizer, 3)
    assert _sample(logits[:9], mixed)[:6].tolist() == [0] * 6  # a batch mixing all three kinds of row


def test_top_k_tokens_come_from_the_top_alternatives(model, gpt2_tokenizer):
    config = GenerationConfig(max_new_tokens=12, top_k=3, logprobs=3, seed=5)
    (result,) = generate(model, gpt2_tokenizer, ["Hello"], config)
    assert len(result.top_logprobs) == len(result.token_ids) == len(result.token_logprobs)
    for token, logprob, top in zip(result.token_ids, result.token_logprobs, result.top_logprobs, strict=True):
        assert len(top) == 3
        text = gpt2_tokenizer.token_bytes(token).decode("utf-8", errors="strict") if token < 50256 else None
        assert logprob <= 0
        assert min(top.values()) - 1e-5 <= logprob <= max(top.values()) + 1e-5
        if text is not None and text in top:
            assert top[text] == pytest.approx(logprob, abs=1e-5)


def test_greedy_logprobs_are_the_model_log_softmax(model, gpt2_tokenizer):
    prompt = gpt2_tokenizer.encode("Testing")
    (result,) = generate(model, gpt2_tokenizer, [prompt], GenerationConfig(max_new_tokens=1, logprobs=2, **GREEDY))
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([prompt]))[0, -1], -1)
    assert result.token_logprobs[0] == pytest.approx(expected.max().item(), abs=1e-5)
    assert sorted(result.top_logprobs[0].values(), reverse=True) == pytest.approx(
        expected.topk(2).values.tolist(), abs=1e-5
    )


# -- stop strings and streaming -------------------------------------------------------------


def test_stop_string_cuts_the_text(gpt2_tokenizer):
    model = scripted(
        gpt2_tokenizer, [b"Hello", b",", b" w", b"\xc3", b"\xb6", b"rl", b"d", b"!", b" E", b"ND", b" more"]
    )
    (full,) = generate(model, gpt2_tokenizer, ["@"], GenerationConfig(max_new_tokens=50))
    assert full.text == "Hello, wörld! END more" and full.finish_reason == "stop"  # ended at <|endoftext|>
    (cut,) = generate(model, gpt2_tokenizer, ["@"], GenerationConfig(max_new_tokens=50, stop=("END", "zzz")))
    assert cut.text == "Hello, wörld! " and cut.finish_reason == "stop"
    assert len(cut.token_ids) == 10  # generation stopped at the token that completed "END"
    (spanning,) = generate(model, gpt2_tokenizer, ["@"], GenerationConfig(max_new_tokens=50, stop=("ld! E",)))
    assert spanning.text == "Hello, wör"
    (length,) = generate(model, gpt2_tokenizer, ["@"], GenerationConfig(max_new_tokens=3, stop=("END",)))
    assert length.text == "Hello, w" and length.finish_reason == "length"


def test_stop_strings_never_match_inside_a_multibyte_character():
    text = _Text(stop=("\ufffd", "x"))
    text.add("é".encode()[:1])
    assert text.text == "" and not text.stopped  # half a character is held back, not replaced
    text.add("é".encode()[1:])
    assert text.text == "é" and not text.stopped
    text.add(b"\xff")  # a byte that is invalid UTF-8 whatever follows does become U+FFFD
    assert text.stopped and text.text == "é"


def test_stream_yields_valid_deltas_that_hold_back_stop_prefixes(gpt2_tokenizer):
    model = scripted(gpt2_tokenizer, [b"Hi", b" \xe2", b"\x82", b"\xac", b"5", b" E", b"N", b"D", b"!"])
    deltas = list(stream(model, gpt2_tokenizer, "@", GenerationConfig(max_new_tokens=50)))
    assert "".join(deltas) == "Hi €5 END!"
    assert all("\ufffd" not in d for d in deltas)
    assert "\u20ac" in deltas  # the euro sign arrives whole, once its three bytes are in
    stopped = list(stream(model, gpt2_tokenizer, "@", GenerationConfig(max_new_tokens=50, stop=("END",))))
    assert "".join(stopped) == "Hi €5 "
    assert not any("E" in d for d in stopped)


def test_stream_equals_generate(model, gpt2_tokenizer):
    config = GenerationConfig(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3)
    (result,) = generate(model, gpt2_tokenizer, ["Streaming"], config)
    assert "".join(stream(model, gpt2_tokenizer, "Streaming", config)) == result.text


def test_generate_restores_training_mode(gpt2_tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, n_positions=32, n_layer=1, n_head=2, n_embd=16, dropout=0.5)).train()
    config = GenerationConfig(max_new_tokens=5, **GREEDY)
    first = generate(model, gpt2_tokenizer, ["x"], config)[0].token_ids
    assert model.training
    assert generate(model, gpt2_tokenizer, ["x"], config)[0].token_ids == first  # no dropout while generating


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(stop=("",)), "stop"),
        (dict(logprobs=-1), "logprobs"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(frequency_penalty=-3), "frequency_penalty"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(logit_bias={5: 101}), "logit_bias"),
        (dict(logit_bias={"x": 1}), "logit_bias"),
        (dict(min_tokens=-1), "min_tokens"),
        (dict(best_of=0), "best_of"),
    ],
)
def test_invalid_config_is_a_clear_error(settings, message):
    with pytest.raises(GPT2KitError, match=message):
        GenerationConfig(**settings)


def test_config_from_dict_names_unknown_keys():
    assert GenerationConfig.from_dict({"top_k": 40, "stop": ["\n"]}).stop == ("\n",)
    with pytest.raises(GPT2KitError, match="unknown field 'topk'"):
        GenerationConfig.from_dict({"topk": 40}, where="sample.toml")


def test_bad_prompts_are_clear_errors(model, gpt2_tokenizer):
    config = GenerationConfig(max_new_tokens=2)
    with pytest.raises(GPT2KitError, match="list"):
        generate(model, gpt2_tokenizer, "a bare string", config)
    with pytest.raises(GPT2KitError, match="outside the vocabulary"):
        generate(model, gpt2_tokenizer, [[1, 2, 99999]], config)


def test_zero_new_tokens(model, gpt2_tokenizer):
    (result,) = generate(model, gpt2_tokenizer, ["Hi"], GenerationConfig(max_new_tokens=0))
    assert result.text == "" and result.token_ids == [] and result.finish_reason == "length"


# -- penalties, logit bias, min_tokens, best_of -------------------------------------------------


def test_unused_settings_leave_the_logits_alone(gpt2_tokenizer):
    logits = torch.randn(2, 50257)
    rows = [SequenceState([1, 2], GenerationConfig(**GREEDY), gpt2_tokenizer) for _ in range(2)]
    assert _shape_logits(logits, rows, 50256) is logits  # no copy, no work


def test_penalties_by_their_definitions(gpt2_tokenizer):
    """OpenAI: logit - count * frequency - (count > 0) * presence, on the completion's tokens only.
    transformers: over prompt and completion, a positive logit is divided by the penalty, a negative one multiplied."""
    config = GenerationConfig(presence_penalty=0.5, frequency_penalty=0.25, **GREEDY)
    row = SequenceState([7], config, gpt2_tokenizer)
    row.tokens = [3, 3, 5]
    shaped = _shape_logits(torch.zeros(1, 50257), [row], 50256)[0]
    assert shaped[3] == -(2 * 0.25 + 0.5) and shaped[5] == -(0.25 + 0.5) and shaped[7] == 0 and shaped[4] == 0
    row = SequenceState([7], GenerationConfig(repetition_penalty=2.0, **GREEDY), gpt2_tokenizer)
    row.tokens = [3]
    logits = torch.zeros(1, 50257)
    logits[0, 3], logits[0, 7], logits[0, 9] = 4.0, -4.0, 4.0
    shaped = _shape_logits(logits, [row], 50256)[0]
    assert (shaped[3], shaped[7], shaped[9]) == (2.0, -8.0, 4.0)


def test_a_large_frequency_penalty_leaves_no_repeated_token(model, gpt2_tokenizer):
    plain = generate(model, gpt2_tokenizer, ["Hi"], GenerationConfig(max_new_tokens=24, **GREEDY))[0]
    assert len(set(plain.token_ids)) < len(plain.token_ids)  # this model repeats itself when greedy
    config = GenerationConfig(max_new_tokens=24, frequency_penalty=2.0, ignore_eos=True, **GREEDY)
    penalised = generate(model, gpt2_tokenizer, ["Hi"], config)[0]
    assert len(penalised.token_ids) == 24 and len(set(penalised.token_ids)) == 24


def test_logit_bias_bans_and_forces_a_token(model, gpt2_tokenizer):
    plain = generate(model, gpt2_tokenizer, ["Hi"], GenerationConfig(max_new_tokens=8, **GREEDY))[0]
    banned = plain.token_ids[0]
    config = GenerationConfig(max_new_tokens=8, logit_bias={banned: -100}, **GREEDY)
    assert banned not in generate(model, gpt2_tokenizer, ["Hi"], config)[0].token_ids
    forced = GenerationConfig(max_new_tokens=8, logit_bias={995: 100}, temperature=1.0, seed=3)
    assert generate(model, gpt2_tokenizer, ["Hi"], forced)[0].token_ids == [995] * 8
    with pytest.raises(GPT2KitError, match="logit_bias: token id 50300 is out of vocabulary"):
        generate(model, gpt2_tokenizer, ["Hi"], GenerationConfig(logit_bias={50300: 1}))


def test_min_tokens_holds_back_the_end_of_text(model, gpt2_tokenizer):
    ending = GenerationConfig(max_new_tokens=20, logit_bias={50256: 100}, **GREEDY)
    assert generate(model, gpt2_tokenizer, ["Hi"], ending)[0].token_ids == []
    held = GenerationConfig(max_new_tokens=20, logit_bias={50256: 100}, min_tokens=5, **GREEDY)
    result = generate(model, gpt2_tokenizer, ["Hi"], held)[0]
    assert len(result.token_ids) == 5 and result.finish_reason == "stop"


def test_repetition_penalty_matches_transformers(hf_reference, gpt2_tokenizer):
    reference, loaded = hf_reference
    ids = torch.tensor([gpt2_tokenizer.encode("Once upon a time there was")])
    settings = GenerationConfig(max_new_tokens=20, repetition_penalty=1.5, ignore_eos=True, **GREEDY)
    ours = generate(loaded.model, loaded.tokenizer, [ids[0].tolist()], settings)[0].token_ids
    plain = generate(loaded.model, loaded.tokenizer, [ids[0].tolist()], GenerationConfig(max_new_tokens=20, **GREEDY))
    with torch.no_grad():
        out = reference.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20, pad_token_id=50256,
            repetition_penalty=1.5, min_new_tokens=20,
        )  # fmt: skip
    assert ours == out[0, ids.shape[1] :].tolist() and ours != plain[0].token_ids


def test_best_of_returns_the_best_of_the_same_seeded_samples(model, gpt2_tokenizer):
    sampling = dict(max_new_tokens=10, temperature=1.0, top_k=40)
    best = generate(model, gpt2_tokenizer, ["Hi"], GenerationConfig(best_of=4, seed=11, **sampling))[0]
    alone = [generate(model, gpt2_tokenizer, ["Hi"], GenerationConfig(seed=11 + j, **sampling))[0] for j in range(4)]
    assert len({tuple(c.token_ids) for c in alone}) > 1
    assert best.token_ids == max(alone, key=lambda c: c.mean_logprob).token_ids
    for candidate in alone:  # the mean covers the tokens and a final <|endoftext|>
        scored = candidate.token_logprobs + ([] if candidate.finish_reason == "length" else [None])
        if None not in scored:
            assert candidate.mean_logprob == pytest.approx(sum(scored) / len(scored))
    with pytest.raises(GPT2KitError, match="best_of cannot stream"):
        list(stream(model, gpt2_tokenizer, "Hi", GenerationConfig(best_of=2)))


def test_per_sequence_settings_in_one_batch_equal_each_alone(model, gpt2_tokenizer):
    settings = [
        GenerationConfig(max_new_tokens=12, frequency_penalty=1.5, presence_penalty=0.5, seed=1),
        GenerationConfig(max_new_tokens=12, repetition_penalty=1.8, logit_bias={262: 5}, seed=2, top_k=20),
        GenerationConfig(max_new_tokens=12, seed=3),
    ]
    prompts = [gpt2_tokenizer.encode(p) for p in ("Hi there", "The river", "A")]
    rows = [SequenceState(list(p), c, gpt2_tokenizer, seed=c.seed) for p, c in zip(prompts, settings, strict=True)]
    decoder = Decoder(model, gpt2_tokenizer)
    decoder.add(rows)
    while decoder.active:
        decoder.step()
    for prompt, config, row in zip(prompts, settings, rows, strict=True):
        assert row.tokens == generate(model, gpt2_tokenizer, [prompt], config)[0].token_ids


# -- shared prompt prefixes ---------------------------------------------------------------------


class CountingModel(nn.Module):
    """A GPT that records the shape of every forward pass."""

    def __init__(self, model: GPT):
        super().__init__()
        self.inner, self.config, self.wte = model, model.config, model.wte
        self.new_kv_cache = model.new_kv_cache
        self.shapes: list[tuple[int, int]] = []

    def forward(self, idx, **kwargs):
        self.shapes.append(tuple(idx.shape))
        return self.inner(idx, **kwargs)


def run(decoder: Decoder, groups: list[list[SequenceState]]) -> None:
    for group in groups:
        decoder.add(group)
    while decoder.active:
        decoder.step()


def test_a_shared_prompt_prefix_is_encoded_once_with_the_same_tokens(model, gpt2_tokenizer):
    prefix = gpt2_tokenizer.encode(" ".join(["Q: what is the river called? A: the long river."] * 4))[:40]
    suffixes = [gpt2_tokenizer.encode(f" Q: question {i}{' more' * (i % 3)}? A:") for i in range(16)]
    config = GenerationConfig(max_new_tokens=6, **GREEDY)

    def rows(suffix_list):
        return [SequenceState(prefix + s, config, gpt2_tokenizer) for s in suffix_list]

    counting = CountingModel(model)
    shared_rows, plain_rows = rows(suffixes), rows(suffixes)
    run(Decoder(counting, gpt2_tokenizer), [shared_rows])
    run(Decoder(model, gpt2_tokenizer, share_prefixes=False), [plain_rows])
    assert [r.tokens for r in shared_rows] == [r.tokens for r in plain_rows]
    contexts = [prefix + s for s in suffixes]
    shared = common_prefix_length(contexts)
    assert shared >= 40
    width = max(map(len, contexts)) - shared
    assert counting.shapes[:2] == [(1, shared), (16, width)]  # the prefix once, then only what differs
    # a later request with the same prefix reuses the cached keys and values: no pass over the prefix
    decoder = Decoder(counting, gpt2_tokenizer)
    run(decoder, [rows(suffixes[:2])])
    counting.shapes.clear()
    late, alone = rows(suffixes[5:6]), rows(suffixes[5:6])
    run(decoder, [late])
    run(Decoder(model, gpt2_tokenizer, share_prefixes=False), [alone])
    assert counting.shapes[0] == (1, len(prefix + suffixes[5]) - shared) and late[0].tokens == alone[0].tokens
    # prefixes shorter than MIN_SHARED_PREFIX are not worth a separate pass
    counting.shapes.clear()
    run(Decoder(counting, gpt2_tokenizer), [[SequenceState(prefix[:8] + s, config, gpt2_tokenizer) for s in suffixes]])
    assert counting.shapes[0][0] == 16
