"""Contexts made only of whitespace, as lm-eval's HF backend scores the same text conditioned on <|endoftext|>."""

import pytest
from helpers import hf_reference

import gpt2kit

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from gpt2kit.evals.lm_eval_adapter import GPT2KitLM  # noqa: E402

PAIRS = [(" ", "the cat"), ("\n", "The end."), ("  \t ", "x y"), ("Hello", " world"), ("A dog ", "ran")]


def requests(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt2_tokenizer):
    directory = tmp_path_factory.mktemp("ws") / "m"
    hf_reference(gpt2_tokenizer.vocab_size, seed=4).save_pretrained(directory)
    gpt2_tokenizer.save(directory)
    return directory


def test_whitespace_contexts_score_as_lm_eval_scores_them_on_endoftext(model_dir):
    ours = GPT2KitLM(model=gpt2kit.load(model_dir).model, tokenizer=gpt2kit.load(model_dir).tokenizer, batch_size=4)
    theirs = HFLM(pretrained=str(model_dir), device="cpu", batch_size=4, dtype="float32")
    got = ours.loglikelihood(requests(PAIRS))
    # lm-eval 0.4.13's own backend fails on these contexts, as the adapter did: its fixed behaviour is the
    # empty-context path, conditioning on <|endoftext|>, with the whitespace kept in the continuation.
    equivalent = [("", c + x) if not c.strip() else (c, x) for c, x in PAIRS]
    expected = theirs.loglikelihood(requests(equivalent))
    for (logprob, greedy), (their_logprob, their_greedy) in zip(got, expected, strict=True):
        assert logprob == pytest.approx(their_logprob, abs=1e-4) and greedy == their_greedy
