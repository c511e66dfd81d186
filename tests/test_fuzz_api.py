"""Fuzz the HTTP API, against a tiny model on 127.0.0.1.

From its own OpenAPI schema with schemathesis: every generated request, valid or not, must get an answer the
schema documents (no 5xx; the documented status, content type and body shape), and invalid ones a 4xx. Then
requests that are valid and within the server's caps, drawn with hypothesis, must all succeed, so that the
generation paths (echo, logprobs, streaming, n, best_of, stop, penalties) are fuzzed too. The server must stay
responsive throughout. The default run is bounded; `slow` runs more.
"""

import json
import time

import pytest
import torch

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from serving import BackgroundServer  # noqa: E402

from gpt2kit.model import GPT, GPTConfig  # noqa: E402
from gpt2kit.serve import (  # noqa: E402
    ServerConfig,
    build_app,  # noqa: E402
    create_app,
)
from gpt2kit.serve.protocol import CompletionResponse  # noqa: E402

# Small caps keep each generated request quick; the schema does not depend on them or on the model.
CONFIG = ServerConfig(max_tokens_cap=16, max_n=2, max_choices=4, request_timeout_s=20)
schema = schemathesis.openapi.from_dict(build_app(lambda: None, CONFIG).openapi())
# Not checked: that every schema-valid request is accepted. The caps of the server's config (max_tokens, n,
# prompt tokens, prompts x n) and the rules between fields (best_of >= n, min_tokens <= max_tokens, token ids in
# the vocabulary) are not in the static schema, and a request over them rightly gets a 400.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]
QUIET = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)
FEW = settings(max_examples=25, derandomize=True, **QUIET)  # the default run: the same examples every time
MANY = settings(max_examples=300, **QUIET)


@pytest.fixture(scope="module")
def url(gpt2_tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=64, n_layer=1, n_head=2, n_embd=16))
    with BackgroundServer(create_app(model.eval(), gpt2_tokenizer, CONFIG, model_name="fuzz")) as address:
        yield address
        start = time.monotonic()
        health = httpx.get(f"{address}/health", timeout=5).json()
        assert health["status"] == "ok" and health["active_sequences"] == 0 and health["queued_requests"] == 0
        assert time.monotonic() - start < 2  # still responsive after everything the fuzzers sent


@schema.parametrize()
@FEW
def test_every_route_answers_as_documented(case, url):
    case.call_and_validate(base_url=url, excluded_checks=EXCLUDED, timeout=30)


@pytest.mark.slow
@schema.parametrize()
@MANY
def test_every_route_answers_as_documented_at_length(case, url):
    case.call_and_validate(base_url=url, excluded_checks=EXCLUDED, timeout=30)


# -- valid requests within the caps --------------------------------------------------------

token_ids = st.integers(0, 50256)
texts = st.text(max_size=10)
prompts = st.one_of(
    texts,
    st.lists(texts, min_size=1, max_size=2),
    st.lists(token_ids, min_size=1, max_size=10),
    st.lists(st.lists(token_ids, min_size=1, max_size=5), min_size=1, max_size=2),
)
options = {
    "model": st.none() | st.text(max_size=8),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1),
    "top_k": st.integers(0, 100),
    "n": st.integers(1, 2),
    "stream": st.booleans(),
    "stop": st.none() | st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3), max_size=4),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "echo": st.booleans(),
    "logprobs": st.none() | st.integers(0, 5),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "logit_bias": st.dictionaries(token_ids.map(str), st.floats(-100, 100), max_size=3),
    "repetition_penalty": st.floats(0.01, 10),
    "ignore_eos": st.booleans(),
    "user": st.text(max_size=5),
}


@st.composite
def valid_requests(draw) -> dict:
    body = draw(st.fixed_dictionaries({"prompt": prompts, "max_tokens": st.integers(0, 16)}, optional=options))
    body["min_tokens"] = draw(st.integers(0, body["max_tokens"]))
    if body.get("stream"):
        if body.get("echo"):
            body.pop("logprobs", None)  # refused together when streaming
        body["stream_options"] = draw(
            st.fixed_dictionaries(
                {}, optional={"include_usage": st.booleans(), "continuous_usage_stats": st.booleans()}
            )
        )
    else:
        body["best_of"] = draw(st.integers(body.get("n", 1), 2))
    return body


def choices_of(body: dict) -> int:
    prompt = body["prompt"]
    many = isinstance(prompt, list) and not all(isinstance(t, int) for t in prompt)
    return (len(prompt) if many else 1) * body.get("n", 1)


def check_completion(url: str, body: dict) -> None:
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, (body, response.text)
    if not body.get("stream"):
        result = CompletionResponse.model_validate(response.json())
        assert len(result.choices) == choices_of(body)
        assert all(len(c.logprobs.tokens) == len(c.logprobs.top_logprobs) for c in result.choices if c.logprobs)
        return
    events = response.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]", response.text
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all("error" not in chunk for chunk in chunks), chunks
    finished = [c for chunk in chunks for c in chunk["choices"] if c["finish_reason"] is not None]
    assert len(finished) == choices_of(body)


@given(body=valid_requests())
@FEW
def test_valid_requests_within_the_caps_succeed(url, body):
    check_completion(url, body)


@pytest.mark.slow
@given(body=valid_requests())
@MANY
def test_valid_requests_within_the_caps_succeed_at_length(url, body):
    check_completion(url, body)


def test_a_405_names_the_allowed_methods(url):
    # schemathesis' first finding: a 405 lost its Allow header (RFC 9110 requires it)
    response = httpx.request("TRACE", f"{url}/health")
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.json()["error"]["type"] == "invalid_request_error"
