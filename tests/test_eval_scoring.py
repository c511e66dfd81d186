import math

import pytest
import torch
from eval_doubles import LOG_OTHER, LOG_SUCCESSOR, BigramLM, chars
from helpers import tiny_model

from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.scoring import (
    Scorer,
    ScoreRequest,
    score_stream,
)
from gpt2kit.model import GPTConfig
from gpt2kit.windows import rolling_windows

CONFIG = GPTConfig(vocab_size=97, n_positions=32, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def model():
    return tiny_model(CONFIG.vocab_size, n_positions=CONFIG.n_positions, n_embd=CONFIG.n_embd)


def brute_force(model, request):
    """Score from the model's full logits, position by position."""
    inputs = torch.tensor([list(request.context + request.continuation)[:-1]])
    logprobs = torch.log_softmax(model(inputs)[0].double(), -1)
    start = len(request.context) - 1
    values = [logprobs[start + j, t].item() for j, t in enumerate(request.continuation)]
    greedy = [logprobs[start + j].argmax().item() == t for j, t in enumerate(request.continuation)]
    return values, greedy


def random_requests(n_groups=12, seed=1):
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        return tuple(torch.randint(0, 97, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist())

    requests = []
    for group in range(n_groups):
        context = ids(1, 14)
        for _ in range(3):
            requests.append(ScoreRequest(context, ids(1, 5), group=group if group % 2 else None))
    return requests


def test_hidden_states_give_the_models_logits(model):
    idx = torch.randint(0, 97, (2, 9))
    assert torch.allclose(model.head(model.hidden(idx)), model(idx), atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_scores_match_brute_force_with_and_without_shared_prefixes(model, batch_size):
    requests = random_requests()
    for request, score in zip(requests, Scorer(model, batch_size).score(requests), strict=True):
        values, greedy = brute_force(model, request)
        assert score.token_logprobs == pytest.approx(values, abs=1e-5)
        assert score.token_greedy == greedy
        assert score.logprob == pytest.approx(math.fsum(values), abs=1e-5)
        assert score.is_greedy == all(greedy)


def test_shared_prefix_covers_a_context_that_is_the_whole_prefix(model):
    # Contexts identical, continuations of one token: the suffix is empty, the prefix's last state predicts.
    requests = [ScoreRequest((5, 6, 7), (t,), group="g") for t in (1, 2, 3)]
    for request, score in zip(requests, Scorer(model, 2).score(requests), strict=True):
        assert score.token_logprobs == pytest.approx(brute_force(model, request)[0], abs=1e-5)


def test_groups_without_a_common_prefix_are_scored_independently(model):
    requests = [ScoreRequest((1, 2), (3,), group=0), ScoreRequest((4, 2), (3,), group=0)]
    for request, score in zip(requests, Scorer(model, 4).score(requests), strict=True):
        assert score.token_logprobs == pytest.approx(brute_force(model, request)[0], abs=1e-5)


def test_long_contexts_are_truncated_from_the_left(model):
    long = ScoreRequest(tuple(range(1, 60)), (7, 8))
    kept = ScoreRequest(tuple(range(1, 60))[-31:], (7, 8))  # 31 + 2 - 1 = 32 input tokens, the model's context
    assert Scorer(model).score([long])[0].token_logprobs == pytest.approx(brute_force(model, kept)[0], abs=1e-5)


def test_a_continuation_longer_than_the_context_is_scored_in_pieces(model):
    request = ScoreRequest((1, 2, 3), tuple(range(10, 80)))  # 70 tokens; the context is 32
    score = Scorer(model, 4).score([request])[0]
    assert score.n_tokens == 70
    full = request.context + request.continuation
    # Pieces of 16 tokens from index 3, each after as much as fits: the third, full[35:51], sees full[18:35].
    third = ScoreRequest(full[18:35], full[35:51])
    assert score.token_logprobs[32:48] == pytest.approx(brute_force(model, third)[0], abs=1e-5)
    bigram = BigramLM(chars({"a": "b", "b": "a"}), n_positions=8)
    text = tuple(ord(c) for c in "abababab" * 3)
    assert Scorer(bigram).score([ScoreRequest((ord("b"),), text)])[0].logprob == pytest.approx(24 * LOG_SUCCESSOR)


def test_bad_requests_and_settings_fail_clearly(model):
    with pytest.raises(GPT2KitError, match="context is empty"):
        Scorer(model).score([ScoreRequest((), (1,))])
    with pytest.raises(GPT2KitError, match="batch size"):
        Scorer(model, 0)
    with pytest.raises(GPT2KitError, match="context length"):
        Scorer(model, 1, max_length=33)


def test_rolling_windows_score_every_token_once():
    for n, length, stride in [(10, 4, None), (10, 4, 2), (9, 4, 4), (2, 4, None), (100, 16, 5)]:
        covered = []
        for w in rolling_windows(n, length, stride):
            assert w.end - w.start <= length
            covered += range(w.end + 1 - w.n_scored, w.end + 1)
        assert covered == list(range(1, n))
    assert [(w.start, w.end, w.n_scored) for w in rolling_windows(10, 4)] == [(0, 4, 4), (4, 8, 4), (8, 9, 1)]
    # With stride 2 each later window keeps 2 tokens of context and scores 2 new ones.
    assert [(w.start, w.n_scored) for w in rolling_windows(10, 4, 2)] == [(0, 4), (2, 2), (4, 2), (6, 1)]
    with pytest.raises(GPT2KitError, match="stride"):
        rolling_windows(10, 4, 5)


def test_stream_log_likelihood_by_hand():
    # Bigram model: "a" -> "b" -> "c" -> "a"; <eot> leads to <eot>. Stream: <eot> a b c a c.
    model = BigramLM(chars({"a": "b", "b": "c", "c": "a"}), n_positions=4)
    tokens = [256] + [ord(c) for c in "abcac"]
    expected = [LOG_OTHER, LOG_SUCCESSOR, LOG_SUCCESSOR, LOG_SUCCESSOR, LOG_OTHER]
    for stride in (None, 1, 3):
        windows = score_stream(Scorer(model, 2), tokens, stride)
        assert [lp for window in windows for lp in window] == pytest.approx(expected)
