"""Hostile settings at run time: sampling at the edges of its ranges, settings that reach native code, user regexes."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpt2kit
from gpt2kit.cli import main
from gpt2kit.config import PER_CPU_LIMIT, ConfigError
from gpt2kit.data.demonstrations import find_demonstrations
from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import Decoder, GenerationConfig, generate
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.sampling import _sample, _shape_logits
from gpt2kit.sequences import SequenceState
from gpt2kit.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = 5e-324  # the smallest positive float: the hardest valid temperature and top_p
TINY = [SMALLEST, 1e-300, 1e-46]  # all below float32's smallest number, where they round to 0


@pytest.fixture(scope="module")
def sharp_model(tiny_tokenizer):
    """A small model with well-separated logits, so that its greedy tokens are not a near tie."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=64, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        model.wte.weight.mul_(8)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sharp_model, tiny_tokenizer):
    directory = tmp_path_factory.mktemp("model") / "sharp"
    gpt2kit.save(sharp_model, tiny_tokenizer, directory)
    return directory


PROMPTS = ["the cat", "a", "one two three"]


def greedy_ids(model, tokenizer, n=12):
    return [c.token_ids for c in generate(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=n, temperature=0))]


# -- temperature and top-p at their smallest values (items 14, 15) ------------------------------------------------


@pytest.mark.parametrize("tiny", TINY)
def test_the_smallest_temperatures_give_the_greedy_tokens_in_a_batch(sharp_model, tiny_tokenizer, tiny):
    expected = greedy_ids(sharp_model, tiny_tokenizer)
    assert all(expected)  # not an empty completion: a real comparison
    for top_k in (0, 40):
        config = GenerationConfig(max_new_tokens=12, temperature=tiny, top_k=top_k, seed=7)
        assert [c.token_ids for c in generate(sharp_model, tiny_tokenizer, PROMPTS, config)] == expected


@pytest.mark.parametrize("tiny", TINY)
def test_the_smallest_top_p_keeps_the_top_token_for_every_seed(sharp_model, tiny_tokenizer, tiny):
    expected = greedy_ids(sharp_model, tiny_tokenizer)
    for seed in range(3):
        for top_k in (0, 40):
            config = GenerationConfig(max_new_tokens=12, top_p=tiny, top_k=top_k, seed=seed)
            assert [c.token_ids for c in generate(sharp_model, tiny_tokenizer, PROMPTS, config)] == expected


def test_rows_with_different_settings_in_one_decoder_batch(sharp_model, tiny_tokenizer):
    """Greedy, tiny-temperature, tiny-top-p and ordinary sampling rows decode together; the tiny ones are greedy."""
    expected = greedy_ids(sharp_model, tiny_tokenizer)[0]
    ids = tiny_tokenizer.encode(PROMPTS[0])
    kinds = [dict(temperature=0), dict(temperature=SMALLEST), dict(top_p=SMALLEST), dict(), dict(temperature=1e-300)]
    rows = [SequenceState(list(ids), GenerationConfig(max_new_tokens=12, **k), tiny_tokenizer, seed=i)
            for i, k in enumerate(kinds)]  # fmt: skip
    decoder = Decoder(sharp_model, tiny_tokenizer)
    decoder.add(rows)
    while decoder.active:
        decoder.step()
    assert [rows[i].tokens for i in (0, 1, 2, 4)] == [expected] * 4


def test_cli_sample_at_the_smallest_temperature_and_top_p_prints_the_greedy_text(model_dir, capsys):
    base = ["sample", "--model", str(model_dir), "--prompt", "the cat", "--max-new-tokens", "12"]
    assert main([*base, "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    for extra in (["--temperature", "1e-300"], ["--top-p", "1e-300", "--top-k", "0"], ["--top-p", "5e-324"]):
        for seed in ("1", "2"):
            assert main([*base, *extra, "--seed", seed, "--num-samples", "2"]) == 0  # two samples: a batch of two
            out = capsys.readouterr().out
            assert out.count(greedy.strip()) == 2, (extra, out)


def test_server_at_the_smallest_temperature_and_top_p_returns_the_greedy_text(sharp_model, tiny_tokenizer):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from serving import BackgroundServer

    from gpt2kit.serve import ServerConfig, create_app

    app = create_app(sharp_model, tiny_tokenizer, ServerConfig(), model_name="sharp")
    with BackgroundServer(app) as url:

        def choices(**settings):
            body = {"prompt": ["the cat", "a"], "max_tokens": 10, **settings}
            response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            assert response.status_code == 200, response.text
            return [(c["text"], c["finish_reason"]) for c in response.json()["choices"]]

        greedy = choices(temperature=0, n=1)
        assert all(text for text, _ in greedy)
        for settings_ in (dict(temperature=1e-300), dict(top_p=1e-300), dict(temperature=SMALLEST, top_k=40)):
            got = choices(n=2, seed=3, **settings_)
            assert got == [greedy[0], greedy[0], greedy[1], greedy[1]], settings_


def test_masked_tokens_are_never_sampled_even_with_a_bias(tiny_tokenizer):
    """Output rows the model masks (-inf: padding, gaps in the ids) stay impossible at any temperature and bias."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size + 16, n_positions=32, n_layer=1, n_head=1, n_embd=8))
    allowed = set(range(0, 200, 7))
    model.mask_logits(sorted(set(range(model.config.vocab_size)) - allowed))
    for temperature in (SMALLEST, 1.0, 1e30):
        for top_k, top_p in ((0, 1.0), (0, 1e-300), (5, 0.5)):
            config = GenerationConfig(
                max_new_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p, seed=2, logit_bias={201: 100}
            )
            for completion in generate(model.eval(), tiny_tokenizer, ["a", "b c"], config):
                assert set(completion.token_ids) <= allowed, (temperature, top_k, top_p, completion.token_ids)


# -- property: every draw has probability, and the smallest settings are the argmax -----------------------------

finite = st.floats(width=32, allow_nan=False, allow_infinity=False)  # float32 from its smallest to its largest
logit = st.one_of(finite, finite, finite, st.just(-math.inf))
temperature = st.one_of(st.sampled_from(TINY), st.floats(SMALLEST, 1e-40), st.floats(1e-40, 1e30))
top_p = st.one_of(st.sampled_from([SMALLEST, 1e-300, 1.0]), st.floats(SMALLEST, 1.0, exclude_min=False))


@st.composite
def batches(draw):
    vocab = draw(st.integers(1, 48))
    rows = draw(st.integers(1, 4))
    logits = []
    for _ in range(rows):
        row = draw(st.lists(logit, min_size=vocab, max_size=vocab))
        row[draw(st.integers(0, vocab - 1))] = draw(finite)  # a real distribution has a finite logit
        logits.append(row)
    settings_ = [
        dict(
            temperature=draw(temperature),
            top_k=draw(st.integers(0, vocab + 2)),
            top_p=draw(top_p),
            logit_bias=draw(st.dictionaries(st.integers(0, vocab - 1), st.floats(-100, 100), max_size=3)),
        )
        for _ in range(rows)
    ]
    return torch.tensor(logits, dtype=torch.float32), settings_


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.integers(0, 2**32))
def test_every_draw_has_probability_and_the_smallest_settings_give_the_argmax(tiny_tokenizer, batch, seed):
    check_draws(tiny_tokenizer, batch, seed)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.integers(0, 2**32))
def test_every_draw_has_probability_many_examples(tiny_tokenizer, batch, seed):
    check_draws(tiny_tokenizer, batch, seed)


def check_draws(tiny_tokenizer, batch, seed: int) -> None:
    logits, settings_ = batch
    vocab = logits.shape[-1]
    rows = [SequenceState([0], GenerationConfig(**s), tiny_tokenizer, seed=seed + i) for i, s in enumerate(settings_)]
    shaped = _shape_logits(logits, rows, tiny_tokenizer.eot_token)
    tokens = _sample(shaped, rows).tolist()
    for row, values, original, token in zip(rows, shaped, logits, tokens, strict=True):
        config = row.config
        assert 0 <= token < vocab
        assert original[token] > -math.inf  # a -inf logit (a padded or banned token) stays impossible, bias or not

        chosen = float(values[token])
        if config.top_k:
            assert at_least(chosen, float(values.topk(min(config.top_k, vocab)).values[-1]), config.temperature)
        # A temperature below float32's smallest number is 0 there: the limit, the argmax exactly. A top_p below
        # 1 / (2 x vocab) is under the top token's probability, which is at least 1 / vocab.
        if config.temperature < 1e-45:
            assert chosen == values.max()
        if config.top_p < 1 / (2 * vocab):
            assert at_least(chosen, float(values.max()), config.temperature)


def at_least(logit: float, bound: float, temperature: float) -> bool:
    """`logit` >= `bound`, or so close that float32 cannot tell them apart at this temperature."""
    return logit >= bound or (bound - logit) / temperature < 1e-6


# -- settings that reach native code are bounded before use (items 18, 19) --------------------------------------


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail if training gets as far as setting torch's threads or building a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("reached native code before the config was checked")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    monkeypatch.setattr("gpt2kit.train.GPT", refuse)


@pytest.mark.parametrize(
    "override, field",
    [
        (f"num_threads={PER_CPU_LIMIT * (os.cpu_count() or 1) + 1}", "num_threads"),
        ("num_threads=100000", "num_threads"),
        ("num_threads=-1", "num_threads"),
        ("context_length=100000000", "context_length"),
        ("context_length=257", "context_length"),  # cpu-1m's n_positions is 256
    ],
)
def test_train_refuses_settings_for_native_code_before_using_them(tmp_path, capsys, no_allocation, override, field):
    start = time.monotonic()
    argv = ["train", "--config", "cpu-smoke", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", override]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"config: {field} must be" in err, err
    assert time.monotonic() - start < 10


def test_train_config_bounds_name_the_limits():
    limit = PER_CPU_LIMIT * (os.cpu_count() or 1)
    assert TrainConfig(data="d", out="o", num_threads=limit).problems() == []
    assert TrainConfig(data="d", out="o", preset="cpu-6m", context_length=256).problems() == []
    assert TrainConfig(data="d", out="o", preset="gpt2", context_length=1024).problems() == []
    (line,) = TrainConfig(data="d", out="o", preset="gpt2", context_length=1025).problems()
    assert "context_length must be in 1..1024 (the gpt2 preset's n_positions)" in line
    # A model to start from brings its own n_positions, checked once its config is read.
    assert TrainConfig(data="d", out="o", init_from="m", context_length=4096).problems() == []
    with pytest.raises(ConfigError, match=f"num_threads must be in 0..{limit}"):
        TrainConfig(data="d", out="o", num_threads=limit + 1).check()


def test_demonstrations_workers_are_bounded(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Q: why?\nA: because.\n")
    with pytest.raises(GPT2KitError, match="workers must be in 1.."):
        find_demonstrations([corpus], None, workers=1_000_000)


# -- user regexes are bounded in time (item 20) ------------------------------------------------------------------

SCAN = """
import json, sys
from gpt2kit.data.demonstrations import find_demonstrations
from gpt2kit.errors import GPT2KitError
try:
    result, _ = find_demonstrations([sys.argv[1]], None, patterns=sys.argv[2], workers=int(sys.argv[3]))
    print(json.dumps({"found": result.kinds["slow"].occurrences if "slow" in result.kinds else 0}))
except GPT2KitError as err:
    print(json.dumps({"error": str(err)}))
"""


def scan_in_a_child(tmp_path, regex: str, text: str, workers: int = 1) -> dict:
    """Scan with one user pattern in a child process that a runaway regex cannot hang (the test fails instead)."""
    for i in range(workers):
        (tmp_path / f"doc{i}.txt").write_text(text)
    patterns = tmp_path / "patterns.yaml"
    patterns.write_text(f"- name: slow\n  regexes: [{json.dumps(regex)}]\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCAN, str(tmp_path), str(patterns), str(workers)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 30
    return json.loads(done.stdout)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_backtracking_pattern_runs_out_of_time_in_one_line(tmp_path, workers):
    result = scan_in_a_child(tmp_path, "(a|aa)+$", "a" * 60 + "b\n", workers)
    message = result.get("error", "")
    assert "pattern 'slow'" in message and "'(a|aa)+$'" in message and "ran out of time" in message, result
    assert "\n" not in message


def test_the_issues_pattern_finishes(tmp_path):
    assert scan_in_a_child(tmp_path, "(x+x+)+y", "x" * 60 + "\n") == {"found": 0}


@pytest.mark.parametrize(
    "regex, message",
    [
        ("(", "bad regex '(' (missing )"),
        ("(?:a{1000}){1000}", "unrolls to 1,000,000 positions (at most 100,000)"),
        ("(?:(?:a{100}){100}){100}", "unrolls to 1,000,000 positions"),
        ("(?:ab|cd){100000}", "unrolls to 400,000 positions"),
        ("(" * 2000 + "a" + ")" * 2000, "nests too deeply"),
    ],
)
def test_invalid_and_unrolling_patterns_are_refused_in_one_line(tmp_path, regex, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("aaa\n")
    patterns = tmp_path / "p.yaml"
    patterns.write_text(f"- name: r\n  regexes: [{json.dumps(regex)}]\n")
    start = time.monotonic()
    with pytest.raises(GPT2KitError, match="pattern 1 \\(r\\): ") as caught:
        find_demonstrations([corpus], None, patterns=patterns)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert time.monotonic() - start < 5


def test_ordinary_patterns_still_match(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Recipe: one\nrecipe two\n" + "x" * 100 + "\n")
    patterns = tmp_path / "p.yaml"
    patterns.write_text("- name: r\n  regexes: ['^[Rr]ecipe\\b', 'x{100}', '[^\\n]{0,300}?two']\n")
    result, _ = find_demonstrations([corpus], None, patterns=patterns)
    assert result.kinds["r"].occurrences == 4
