import json
import re
import threading
import time

import pytest
import torch

from gpt2kit.generate import GenerationConfig, generate
from gpt2kit.model import GPT, GPTConfig

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from serving import BackgroundServer  # noqa: E402

from gpt2kit.serve import ServerConfig, create_app  # noqa: E402

LIMITS = dict(
    max_tokens_cap=64, max_n=4, max_choices=6, max_prompt_tokens=40, max_body_bytes=20_000, request_timeout_s=30
)


class SlowModel(torch.nn.Module):
    """A GPT whose every forward pass also sleeps: makes generation slow enough to observe mid-flight."""

    def __init__(self, model: GPT, delay: float):
        super().__init__()
        self.inner, self.delay, self.config, self.wte = model, delay, model.config, model.wte
        self.new_kv_cache = model.new_kv_cache
        self.batch_sizes: list[int] = []

    def forward(self, idx, **kwargs):
        self.batch_sizes.append(idx.shape[0])
        time.sleep(self.delay)
        return self.inner(idx, **kwargs)


@pytest.fixture(scope="module")
def model(gpt2_tokenizer):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=64, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def server(model, gpt2_tokenizer):
    app = create_app(model, gpt2_tokenizer, ServerConfig(**LIMITS), model_name="tiny-gpt2")
    with BackgroundServer(app) as url:
        yield url


@pytest.fixture(scope="module")
def slow(model, gpt2_tokenizer):
    """A server over a model slowed to ~20 ms a step, with a 2 s request timeout."""
    slow_model = SlowModel(model, 0.02)
    config = ServerConfig(max_tokens_cap=2000, request_timeout_s=2.0, max_batch_size=8)
    with BackgroundServer(create_app(slow_model, gpt2_tokenizer, config, model_name="slow")) as url:
        yield url, slow_model


def post(url, body, timeout=30, **kwargs):
    return httpx.post(f"{url}/v1/completions", json=body, timeout=timeout, **kwargs)


def greedy(model, tokenizer, prompt, n):
    return generate(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=n, temperature=0))[0]


def sse_events(response) -> list[str]:
    """The `data:` payloads of a server-sent event stream, checking its framing on the way."""
    text = response.text
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    return [event.removeprefix("data: ") for event in events]


# -- the API ------------------------------------------------------------------------------


def test_completion_matches_the_library_and_counts_usage(server, model, gpt2_tokenizer):
    response = post(server, {"model": "tiny-gpt2", "prompt": "Hello world", "max_tokens": 10, "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    expected = greedy(model, gpt2_tokenizer, "Hello world", 10)
    assert body["object"] == "text_completion" and body["model"] == "tiny-gpt2" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["text"] == expected.text and choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == expected.finish_reason
    assert body["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": len(expected.token_ids),
        "total_tokens": 2 + len(expected.token_ids),
    }


def test_prompt_lists_n_seed_echo_and_logprobs(server, model, gpt2_tokenizer):
    body = {"prompt": ["One", "The dog"], "max_tokens": 5, "n": 2, "seed": 7, "temperature": 1.0}
    first, again = post(server, body).json(), post(server, body).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]  # seeded
    assert first["usage"]["prompt_tokens"] == 1 + 2  # each prompt counted once, not once per choice
    echoed = post(server, {"prompt": "Hi there", "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 2})
    (choice,) = echoed.json()["choices"]
    completion = greedy(model, gpt2_tokenizer, "Hi there", 3)
    assert choice["text"] == "Hi there" + completion.text
    logprobs = choice["logprobs"]
    assert logprobs["tokens"][:2] == ["Hi", " there"] and logprobs["token_logprobs"][0] is None
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 5
    assert logprobs["text_offset"][:3] == [0, 2, 8]
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([[17250, 612]]))[0, 0], -1)[612].item()
    assert logprobs["token_logprobs"][1] == pytest.approx(expected, abs=1e-4)
    # the top 2 and the chosen token: 2 entries where it is among the top 2, else 3
    for token, top in zip(logprobs["tokens"][1:], logprobs["top_logprobs"][1:], strict=True):
        assert token in top and 2 <= len(top) <= 3
    # Scoring a prompt without generating (how lm-eval asks for loglikelihoods): max_tokens 0, echo, logprobs.
    scored = post(server, {"prompt": "Hi there", "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    (choice,) = scored["choices"]
    assert choice["text"] == "Hi there" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"][1] == pytest.approx(expected, abs=1e-4)
    assert choice["logprobs"]["top_logprobs"] == [None, {" there": pytest.approx(expected, abs=1e-4)}]
    assert scored["usage"]["completion_tokens"] == 0


def test_penalties_bias_and_best_of_over_http(server, model, gpt2_tokenizer):
    body = {"prompt": "Hi", "max_tokens": 20, "temperature": 0, "frequency_penalty": 2, "ignore_eos": True}
    tokens = post(server, body | {"logprobs": 0}).json()["choices"][0]["logprobs"]["tokens"]
    assert len(tokens) == 20 and len(set(tokens)) == 20  # no token repeats
    forced = post(server, {"prompt": "Hi", "max_tokens": 5, "logit_bias": {"995": 100}, "seed": 1}).json()
    assert forced["choices"][0]["text"] == " world" * 5
    held = post(server, {"prompt": "Hi", "max_tokens": 9, "logit_bias": {"50256": 100}, "min_tokens": 3}).json()
    assert held["usage"]["completion_tokens"] == 3 and held["choices"][0]["finish_reason"] == "stop"
    # best_of 3, n 2: the two of the three seeded candidates with the highest mean logprob, best first
    sampling = dict(max_new_tokens=8, temperature=1.0, top_k=50)
    best = post(server, {"prompt": "Hi", "max_tokens": 8, "top_k": 50, "seed": 5, "best_of": 3, "n": 2}).json()
    candidates = [
        generate(model, gpt2_tokenizer, ["Hi"], GenerationConfig(seed=5 + j, **sampling))[0] for j in range(3)
    ]
    ranked = sorted(candidates, key=lambda c: -c.mean_logprob)[:2]
    assert [c["text"] for c in best["choices"]] == [c.text for c in ranked]
    assert [c["index"] for c in best["choices"]] == [0, 1]
    assert best["usage"]["completion_tokens"] == sum(len(c.token_ids) for c in candidates)


def test_stop_strings_over_http(server, model, gpt2_tokenizer):
    full = greedy(model, gpt2_tokenizer, "Stop here", 12).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    body = post(server, {"prompt": "Stop here", "max_tokens": 12, "temperature": 0, "stop": stop}).json()
    assert body["choices"][0]["text"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_streaming_format(server, model, gpt2_tokenizer):
    body = {"prompt": "Stream me", "max_tokens": 8, "temperature": 0, "stream": True, "n": 2}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=30) as response:
        response.read()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    texts, finishes = {0: "", 1: ""}, {}
    for chunk in chunks:
        assert chunk["object"] == "text_completion" and chunk["model"] == "tiny-gpt2"
        assert len({c["id"] for c in chunks}) == 1
        for choice in chunk["choices"]:
            assert choice["index"] not in finishes  # nothing after a choice's finish_reason
            texts[choice["index"]] += choice["text"]
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    expected = greedy(model, gpt2_tokenizer, "Stream me", 8)
    assert texts == {0: expected.text, 1: expected.text}
    assert set(finishes) == {0, 1}


def test_models_health_playground_and_unknown_routes(server):
    models = httpx.get(f"{server}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-gpt2"
    assert httpx.get(f"{server}/v1/models/tiny-gpt2").json()["id"] == "tiny-gpt2"
    missing = httpx.get(f"{server}/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in page.text and 'id="generate"' in page.text
    nowhere = httpx.get(f"{server}/v2/nothing")
    assert nowhere.status_code == 404 and "error" in nowhere.json()


# -- limits and malformed requests ---------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "max_tokens": 65}, "max_tokens"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": ["a", "b", "c", "d"], "n": 2}, "n"),
        ({"prompt": "word " * 50}, "prompt"),
        ({"prompt": [[1, 2], [99999]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "frequency_penalty": 2.5}, "frequency_penalty"),
        ({"prompt": "x", "presence_penalty": -3}, "presence_penalty"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "x", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"5": "up"}}, "logit_bias"),
        ({"prompt": "x", "best_of": 0}, "best_of"),
        ({"prompt": "x", "best_of": 1, "n": 2}, "best_of"),
        ({"prompt": "x", "best_of": 5}, "best_of"),
        ({"prompt": ["a", "b"], "best_of": 4}, "best_of"),
        ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"prompt": "x", "min_tokens": -1}, "min_tokens"),
        ({"prompt": "x", "min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"prompt": "x", "ignore_eos": "maybe"}, "ignore_eos"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
        ({"prompt": "x", "n": "many"}, "n"),
        ({"prompt": {"text": "x"}}, "prompt"),
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": "x", "seed": 2**63}, "seed"),
        ({"prompt": "x", "seed": -(2**63) - 1}, "seed"),
    ],
)
def test_invalid_requests_get_openai_style_errors(server, body, param):
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_seed_at_the_int64_edges_keeps_the_connection(server):
    with httpx.Client() as client:  # one keep-alive connection for all three
        for seed in (2**63 - 1, -(2**63), 2**64):
            response = client.post(
                f"{server}/v1/completions", json={"prompt": "x", "max_tokens": 1, "n": 2, "seed": seed}
            )
            assert response.status_code == (200 if seed < 2**63 else 400), response.text
        assert client.get(f"{server}/health").status_code == 200


def test_malformed_and_oversized_bodies(server):
    broken = httpx.post(
        f"{server}/v1/completions", content=b'{"prompt": "x",', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "json_invalid"
    not_utf8 = httpx.post(f"{server}/v1/completions", content=b'{"prompt": "\xff"}')
    assert not_utf8.status_code == 400
    big = post(server, {"prompt": "x" * 30_000})
    assert big.status_code == 400 and big.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b" " * 1000

    streamed = httpx.post(f"{server}/v1/completions", content=chunks())
    assert streamed.status_code == 400
    assert httpx.get(f"{server}/health").status_code == 200


def test_timeout_is_a_400_and_stops_the_work(slow):
    url, _ = slow
    start = time.monotonic()
    response = post(url, {"prompt": "slow", "max_tokens": 1000})
    assert response.status_code == 400 and response.json()["error"]["code"] == "timeout"
    assert time.monotonic() - start < 5
    streamed = post(url, {"prompt": "slow", "max_tokens": 1000, "stream": True})
    events = sse_events(streamed)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
    wait_until_idle(url)


def wait_until_idle(url, within=3.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        health = httpx.get(f"{url}/health").json()
        if health["active_sequences"] == 0 and health["queued_requests"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server is still generating: {health}")


def test_disconnect_stops_generation(slow):
    url, _ = slow
    with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1000, "stream": True}) as r:
        lines = r.iter_lines()  # keep the iterator: dropping it closes the response
        first = next(lines)
        assert first.startswith("data: ")
        assert httpx.get(f"{url}/health").json()["active_sequences"] == 1, first
    # 1000 tokens would take 20 s; the closed stream must cancel them at once.
    wait_until_idle(url)
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
        post(url, {"prompt": "x", "max_tokens": 1000}, timeout=0.3)
    wait_until_idle(url)


def test_concurrent_requests_are_batched_and_the_loop_stays_free(slow, model, gpt2_tokenizer):
    url, slow_model = slow
    prompts = [f"Request number {i}" for i in range(6)]
    results: dict[int, str] = {}

    def ask(i):
        body = {"prompt": prompts[i], "max_tokens": 20, "temperature": 0}
        results[i] = post(url, body).json()["choices"][0]["text"]

    slow_model.batch_sizes.clear()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    start = time.monotonic()
    assert httpx.get(f"{url}/health").status_code == 200
    assert time.monotonic() - start < 0.5  # answered while the model is busy
    for thread in threads:
        thread.join()
    assert max(slow_model.batch_sizes) > 1  # requests shared forward passes
    for i, prompt in enumerate(prompts):
        assert results[i] == greedy(model, gpt2_tokenizer, prompt, 20).text


def test_api_key(model, gpt2_tokenizer):
    openai = pytest.importorskip("openai")
    app = create_app(model, gpt2_tokenizer, ServerConfig(api_key="sekrit"), model_name="keyed")
    with BackgroundServer(app) as url:
        assert post(url, {"prompt": "x"}).status_code == 401
        wrong = post(url, {"prompt": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200
        # The key is checked before the body: a malformed or oversized body without the key is still a 401.
        for content in (b'{"prompt": ', b"x" * 2_000_000):
            keyless = httpx.post(f"{url}/v1/completions", content=content)
            assert keyless.status_code == 401, keyless.text
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sekrit", max_retries=0)
        assert client.completions.create(model="keyed", prompt="x", max_tokens=2).choices[0].text is not None
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.post(f"{url}/tokenize", json={"prompt": "x"}).status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 200


# -- the official client ------------------------------------------------------------------


def test_openai_client_works_unchanged(server, model, gpt2_tokenizer):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny-gpt2"]
    expected = greedy(model, gpt2_tokenizer, "The client", 12)
    result = client.completions.create(model="tiny-gpt2", prompt="The client", max_tokens=12, temperature=0)
    assert result.choices[0].text == expected.text
    assert result.usage.completion_tokens == len(expected.token_ids)
    stream = client.completions.create(
        model="tiny-gpt2", prompt="The client", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == expected.text
    sampled = client.completions.create(
        model="tiny-gpt2", prompt=["a", "b"], max_tokens=4, n=2, seed=3, logprobs=1, stop=["\n"]
    )
    assert len(sampled.choices) == 4 and len(sampled.choices[0].logprobs.tokens) >= 1
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-gpt2", prompt="x", max_tokens=1000)
    assert "max_tokens" in str(caught.value)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-gpt2", prompt="x", temperature=9)


# -- operator endpoints -------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus text output (0 when absent)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_as_requests_arrive(server):
    before = httpx.get(f"{server}/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    text = before.text
    for name in ("gpt2kit_time_to_first_token_seconds", "gpt2kit_time_per_output_token_seconds",
                 "gpt2kit_batch_size", "gpt2kit_queue_length", "gpt2kit_active_sequences"):  # fmt: skip
        assert f"# TYPE {name} " in text
    ok = metric(text, "gpt2kit_requests_total", path="/v1/completions", status="200")
    generated = metric(text, "gpt2kit_generation_tokens_total")
    prompt = metric(text, "gpt2kit_prompt_tokens_total")
    first = metric(text, "gpt2kit_time_to_first_token_seconds_count")
    steps = metric(text, "gpt2kit_batch_size_count")
    body = post(server, {"prompt": "one two three", "max_tokens": 7, "temperature": 0, "ignore_eos": True}).json()
    streamed = post(server, {"prompt": "four", "max_tokens": 3, "stream": True, "ignore_eos": True})
    assert streamed.status_code == 200
    assert post(server, {"prompt": "x", "max_tokens": 10_000}).status_code == 400
    after = httpx.get(f"{server}/metrics").text
    assert metric(after, "gpt2kit_requests_total", path="/v1/completions", status="200") == ok + 2
    assert metric(after, "gpt2kit_requests_total", path="/v1/completions", status="400") >= 1
    assert metric(after, "gpt2kit_generation_tokens_total") == generated + 7 + 3
    assert metric(after, "gpt2kit_prompt_tokens_total") == prompt + body["usage"]["prompt_tokens"] + 1
    assert metric(after, "gpt2kit_time_to_first_token_seconds_count") == first + 2
    assert metric(after, "gpt2kit_batch_size_count") >= steps + 7


def test_tokenize_and_detokenize_as_vllm_shapes_them(server, gpt2_tokenizer):
    import subprocess
    import sys

    text = "Hello world, the café"
    tokenized = httpx.post(f"{server}/tokenize", json={"model": "tiny-gpt2", "prompt": text}).json()
    cli = subprocess.run(
        [sys.executable, "-m", "gpt2kit", "tokenizer", "encode", "--tokenizer", "gpt2"],
        input=text + "\n", capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert tokenized["tokens"] == [int(t) for t in cli.stdout.split()]
    assert tokenized["count"] == len(tokenized["tokens"]) and tokenized["max_model_len"] == 64
    back = httpx.post(f"{server}/detokenize", json={"tokens": tokenized["tokens"]}).json()
    assert back == {"prompt": text}
    bad = httpx.post(f"{server}/detokenize", json={"tokens": [1, 99999]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(f"{server}/tokenize", json={"text": "x"}).status_code == 400


def test_health_is_503_until_the_model_is_loaded_and_warm(model, gpt2_tokenizer):
    from gpt2kit.serve import build_app

    release = threading.Event()

    def slow_load():
        release.wait(30)
        return model, gpt2_tokenizer

    with BackgroundServer(build_app(slow_load, ServerConfig(), "late")) as url:
        loading = httpx.get(f"{url}/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = post(url, {"prompt": "x", "max_tokens": 2})
        assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
        release.set()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert post(url, {"prompt": "x", "max_tokens": 2}).status_code == 200

    failures = []

    def broken_load():
        raise OSError("disk on fire")

    with BackgroundServer(build_app(broken_load, ServerConfig(), "broken", on_load_error=failures.append)) as url:
        deadline = time.monotonic() + 30
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        failed = httpx.get(f"{url}/health")
        assert failed.status_code == 503 and "disk on fire" in failed.json()["message"]


def test_a_model_that_cannot_load_stops_serve_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "gpt2kit", "serve", "--model", str(tmp_path / "nowhere"), "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "nowhere" in done.stderr and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("gpt2kit serve: error:")]


def test_access_log_lines_in_text_and_json(model, gpt2_tokenizer, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="gpt2kit.access")
    with BackgroundServer(create_app(model, gpt2_tokenizer, ServerConfig(), model_name="t")) as url:
        post(url, {"prompt": "one two", "max_tokens": 4, "ignore_eos": True})
        httpx.get(f"{url}/nowhere")
    lines = [r.getMessage() for r in caplog.records if r.name == "gpt2kit.access"]
    assert any(
        re.fullmatch(r"POST /v1/completions 200 prompt_tokens=2 completion_tokens=4 [\d.]+ ms", x) for x in lines
    )
    assert any(x.startswith("GET /nowhere 404 ") for x in lines), lines

    captured: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            captured.append(self.format(record))

    config = ServerConfig(log_format="json")
    app = create_app(model, gpt2_tokenizer, config, model_name="t")
    keep = Keep()
    logging.getLogger("gpt2kit.access").addHandler(keep)
    try:
        with BackgroundServer(app) as url:
            post(url, {"prompt": "one two", "max_tokens": 3, "ignore_eos": True, "stream": True})
    finally:
        logging.getLogger("gpt2kit.access").removeHandler(keep)
    record = json.loads(captured[-1])
    assert record["method"] == "POST" and record["path"] == "/v1/completions" and record["status"] == 200
    assert record["prompt_tokens"] == 2 and record["completion_tokens"] == 3 and record["ms"] > 0
