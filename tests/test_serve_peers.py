"""The server against its peers' own tests: the requests vLLM's and llama.cpp's server tests send, with their
assertions, plus the contract those tests imply (a 400 naming the field for every invalid request, unsupported
fields refused by name) and the server's own bounds (metrics labels, the queue, the host).

vLLM: tests/entrypoints/openai/completion/test_completion.py, tests/entrypoints/serve/tokenize/test_tokenization.py,
tests/entrypoints/llm/test_prompt_validation.py. llama.cpp: tools/server/tests/unit/test_basic.py,
test_security.py, test_completion.py (its OpenAI-client cases).
"""

import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch
from helpers import PacedModel

from gpt2kit.model import GPT, GPTConfig

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
from serving import BackgroundServer  # noqa: E402

from gpt2kit.errors import GPT2KitError  # noqa: E402
from gpt2kit.serve import ServerConfig, create_app  # noqa: E402
from gpt2kit.serve.listen import bind  # noqa: E402

MODEL = "tiny-peer"
WORDS = " the cat sat on a mat and ran far away"


@pytest.fixture(scope="module")
def peer_model(gpt2_tokenizer):
    """A tiny GPT whose next-token distribution is the same at every position: ten words, and <|endoftext|>
    about one time in ten. Greedy runs to max_tokens; sampled choices end at different lengths, as a real model's
    do (vLLM's parallel-sampling tests rely on that)."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=128, n_layer=1, n_head=2, n_embd=32)
    model = GPT(config).eval()
    words = gpt2_tokenizer.encode(WORDS)
    with torch.no_grad():
        model.ln_f.weight.zero_()  # every position's final hidden state is ln_f's bias: e_0
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.wte.weight[:, 0] = -30.0  # so a token's logit is its (tied) embedding's first component
        model.wte.weight[words, 0] = torch.linspace(2.0, 0.0, len(words))
        model.wte.weight[gpt2_tokenizer.eot_token, 0] = 1.3
    return model


@pytest.fixture(scope="module")
def server(peer_model, gpt2_tokenizer):
    app = create_app(peer_model, gpt2_tokenizer, ServerConfig(), model_name=MODEL)
    with BackgroundServer(app) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


# -- vLLM: tests/entrypoints/openai/completion/test_completion.py ---------------------------


def test_single_completion(client, gpt2_tokenizer):
    completion = client.completions.create(model=MODEL, prompt="Hello, my name is", max_tokens=5, temperature=0.0)
    assert completion.id is not None
    assert completion.choices is not None and len(completion.choices) == 1
    choice = completion.choices[0]
    assert len(choice.text) >= 5
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == len(gpt2_tokenizer.encode("Hello, my name is"))  # OPT's 6 has a BOS
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    completion = client.completions.create(model=MODEL, prompt=[0, 0, 0, 0, 0], max_tokens=5, temperature=0.0)
    assert len(completion.choices[0].text) >= 1


def test_no_zero_and_some_logprobs(client):
    kwargs = dict(model=MODEL, prompt=[0, 0, 0, 0, 0], max_tokens=5, temperature=0.0)
    assert client.completions.create(**kwargs, logprobs=None).choices[0].logprobs is None
    zero = client.completions.create(**kwargs, logprobs=0).choices[0].logprobs
    assert zero is not None and zero.token_logprobs is not None and zero.top_logprobs is not None
    assert len(zero.top_logprobs[0]) == 1
    assert zero.top_logprobs[0] == {zero.tokens[0]: zero.token_logprobs[0]}  # the sampled token itself
    some = client.completions.create(**kwargs, logprobs=5).choices[0].logprobs
    assert some is not None and some.token_logprobs is not None and some.top_logprobs is not None
    assert 5 <= len(some.top_logprobs[0]) <= 6


def test_too_many_completion_logprobs(client):
    kwargs = dict(model=MODEL, prompt=[0, 0, 0, 0, 0], max_tokens=5, temperature=0.0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(**kwargs, logprobs=21)
    with pytest.raises(openai.BadRequestError):
        for _ in client.completions.create(**kwargs, logprobs=30, stream=True):
            pass
    assert client.completions.create(**kwargs).choices[0].finish_reason in ("stop", "length")  # still serving


@pytest.mark.parametrize("prompt_logprobs", [-1, 0, 1])
def test_prompt_logprobs_is_refused_by_name(client, prompt_logprobs):
    # vLLM's test_prompt_logprobs_completion: -1 is a BadRequestError there too; 0 and 1 are vLLM's extension,
    # which this server does not implement, so it refuses them rather than ignore them.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model=MODEL, prompt=["A robot may not injure another robot", "My name is"],
            extra_body={"prompt_logprobs": prompt_logprobs},
        )  # fmt: skip
    assert caught.value.body["param"] == "prompt_logprobs"


def test_completion_streaming(client):
    prompt = "What is an LLM?"
    single = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0.0).choices[0].text
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0.0, stream=True)
    chunks, finish_reason_count = [], 0
    for chunk in stream:
        chunks.append(chunk.choices[0].text)
        if chunk.choices[0].finish_reason is not None:
            finish_reason_count += 1
    assert finish_reason_count == 1
    assert chunk.choices[0].finish_reason == "length"
    assert chunk.choices[0].text
    assert "".join(chunks) == single


def test_parallel_no_streaming(client):
    n, max_tokens = 3, 50
    completion = client.completions.create(
        model=MODEL, prompt="What is an LLM?", max_tokens=max_tokens, n=n, temperature=1.0, stream=False,
        logprobs=0, seed=42,
    )  # fmt: skip
    assert len(completion.choices) == n
    texts, lengths = set(), set()
    for index, choice in enumerate(completion.choices):
        assert choice.index == index
        assert choice.finish_reason is not None
        texts.add(choice.text)
        lengths.add(len(choice.logprobs.tokens))
    assert len(lengths) > 1  # the choices finished at different times
    assert len(texts) == n


def test_parallel_streaming(client):
    n, max_tokens = 3, 50
    stream = client.completions.create(
        model=MODEL, prompt="What is an LLM?", max_tokens=max_tokens, n=n, temperature=1.0, stream=True, seed=42
    )
    chunks: list[list[str]] = [[] for _ in range(n)]
    finish_reason_count = 0
    for chunk in stream:
        chunks[chunk.choices[0].index].append(chunk.choices[0].text)
        if chunk.choices[0].finish_reason is not None:
            finish_reason_count += 1
    assert finish_reason_count == n
    assert all(len(c) <= max_tokens for c in chunks)
    assert len({len(c) for c in chunks}) > 1
    assert len({"".join(c) for c in chunks}) == n


def test_completion_stream_options(client):
    kwargs = dict(model=MODEL, prompt="What is the capital of France?", max_tokens=5, temperature=0.0)
    for options in ({"include_usage": False, "continuous_usage_stats": False},
                    {"include_usage": False, "continuous_usage_stats": True}, {}):  # fmt: skip
        for chunk in client.completions.create(**kwargs, stream=True, stream_options=options):
            assert chunk.usage is None

    def check_usage(usage):
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    stream = client.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": False}
    )
    finals = 0
    for chunk in stream:
        assert chunk.usage is None
        if chunk.choices[0].finish_reason is not None:
            final = next(stream)
            check_usage(final.usage)
            assert final.choices == []
            finals += 1
    assert finals == 1
    stream = client.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}
    )
    counts = []
    for chunk in stream:
        check_usage(chunk.usage)
        counts.append(chunk.usage.completion_tokens)
        if chunk.choices[0].finish_reason is not None:
            final = next(stream)
            check_usage(final.usage)
            assert final.choices == []
    assert counts == sorted(counts) and counts[-1] == 5  # the usage so far, growing
    for options in ({"include_usage": None}, {"include_usage": True},
                    {"continuous_usage_stats": None}, {"continuous_usage_stats": True}):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(**kwargs, stream=False, stream_options=options)
        assert caught.value.body["param"] == "stream_options"


def test_batch_completions(client):
    for prompts in (["Hello, my name is"] * 2, [[0, 0, 0, 0, 0]] * 2):
        batch = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0.0)
        assert len(batch.choices) == 2
        assert batch.choices[0].text == batch.choices[1].text
        # vLLM's n=2 case asks for use_beam_search, which this server does not implement: refused by name.
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(
                model=MODEL, prompt=prompts, n=2, max_tokens=5, temperature=0.0, extra_body={"use_beam_search": True}
            )
        assert caught.value.body["param"] == "use_beam_search"
        texts = [""] * 2
        for chunk in client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0, stream=True):
            assert len(chunk.choices) == 1
            texts[chunk.choices[0].index] += chunk.choices[0].text
        assert texts[0] == texts[1]


@pytest.mark.parametrize("logprobs_arg", [1, 0])
def test_echo_logprob_completion(client, gpt2_tokenizer, logprobs_arg):
    for prompt in ("Hello, my name is", [0, 0, 0, 0, 0]):
        completion = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=5, temperature=0.0, echo=True, logprobs=logprobs_arg
        )
        prompt_text = gpt2_tokenizer.decode(prompt) if isinstance(prompt, list) else prompt
        assert re.search(r"^" + re.escape(prompt_text), completion.choices[0].text)
        logprobs = completion.choices[0].logprobs
        assert logprobs is not None
        assert len(logprobs.text_offset) > 5
        assert len(logprobs.token_logprobs) > 5 and logprobs.token_logprobs[0] is None
        assert len(logprobs.top_logprobs) > 5 and logprobs.top_logprobs[0] is None
        for top_logprobs in logprobs.top_logprobs[1:]:
            assert max(logprobs_arg, 1) <= len(top_logprobs) <= logprobs_arg + 1
        assert len(logprobs.tokens) > 5


@pytest.mark.parametrize(
    "structured",
    [{"json": {"type": "object", "properties": {"foo": "bar"}}}, {"regex": r"[.*"}, {"grammar": "root ::= x"}],
)
def test_structured_outputs_are_refused(client, structured):
    # vLLM's test_invalid_json_schema, test_invalid_regex, test_invalid_grammar expect a BadRequestError; here
    # any structured_outputs gets one, as the server does not constrain decoding.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Generate", extra_body={"structured_outputs": structured})
    assert caught.value.body["param"] == "structured_outputs"


# -- vLLM: tests/entrypoints/llm/test_prompt_validation.py ----------------------------------


def test_out_of_vocab_token(client):
    with pytest.raises(openai.BadRequestError, match="out of vocabulary") as caught:
        client.completions.create(model=MODEL, prompt=[999999])
    assert "999999" in caught.value.body["message"] and caught.value.body["param"] == "prompt"


# -- vLLM: tests/entrypoints/serve/tokenize/test_tokenization.py ----------------------------


def test_tokenize_completions(server, gpt2_tokenizer):
    prompt = "vllm1 This is a test prompt."
    for add_special in (False, True):  # GPT-2 adds no special tokens either way
        response = httpx.post(
            f"{server}/tokenize", json={"add_special_tokens": add_special, "model": MODEL, "prompt": prompt}
        )
        response.raise_for_status()
        result = response.json()
        assert result["tokens"] == gpt2_tokenizer.encode(prompt)
        assert result["count"] == len(result["tokens"])
        assert result["max_model_len"] == 128
        assert result["token_strs"] is None


def test_tokenize_with_return_token_strs(server, gpt2_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    gpt2_tokenizer.save(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    prompt = "This is a token_strs test prompt! vllm1 café <|endoftext|>"
    response = httpx.post(f"{server}/tokenize", json={"prompt": prompt, "model": MODEL, "return_token_strs": True})
    response.raise_for_status()
    result = response.json()
    assert result["tokens"] == gpt2_tokenizer.encode(prompt)
    assert result["token_strs"] == reference.convert_ids_to_tokens(result["tokens"])
    assert "Ġtest" in result["token_strs"]


def test_detokenize(server, gpt2_tokenizer):
    prompt = "This is a test prompt. vllm1"
    response = httpx.post(f"{server}/detokenize", json={"model": MODEL, "tokens": gpt2_tokenizer.encode(prompt)})
    response.raise_for_status()
    assert response.json() == {"prompt": prompt}


def test_tokenize_chat_is_refused_by_name(server):
    # vLLM's test_tokenize_chat sends chat messages; this server has no chat template, so it says so.
    messages = [{"role": "user", "content": "Hi there!"}]
    response = httpx.post(f"{server}/tokenize", json={"messages": messages, "model": MODEL})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


# -- llama.cpp: tools/server/tests/unit (the cases of the OpenAI-compatible routes) ---------


def test_llama_cpp_routes_without_v1(server, client):
    assert httpx.get(f"{server}/health").status_code == 200
    models = httpx.get(f"{server}/models")
    assert models.status_code == 200 and len(models.json()["data"]) == 1 and models.json()["data"][0]["id"] == MODEL
    assert httpx.get(f"{server}/models/{MODEL}").json()["id"] == MODEL
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "<!doctype html>" in page.text
    plain = httpx.post(f"{server}/completions", json={"prompt": "I believe the meaning of life is", "max_tokens": 8})
    assert plain.status_code == 200 and plain.json()["choices"][0]["finish_reason"] in ("length", "stop")
    # llama.cpp's test_completion_with_openai_library, greedy: this model ends a sampled text early one time in ten
    root = openai.OpenAI(base_url=server, api_key="dummy", max_retries=0)  # a client configured without /v1
    prompt = "I believe the meaning of life is"
    result = root.completions.create(model="davinci-002", prompt=prompt, max_tokens=8, temperature=0)
    assert result.choices[0].finish_reason == "length" and result.choices[0].text is not None
    text = ""
    stream = client.completions.create(model="davinci-002", prompt=prompt, max_tokens=8, stream=True, temperature=0)
    for data in stream:  # greedy, as above: a sampled stream may end at once
        if data.choices[0].finish_reason is None:
            assert data.choices[0].text is not None
            text += data.choices[0].text
    assert text


def test_llama_cpp_api_key_cases(peer_model, gpt2_tokenizer):
    key = "sk-this-is-the-secret-key"
    app = create_app(peer_model, gpt2_tokenizer, ServerConfig(api_key=key), model_name=MODEL)
    body = {"prompt": "I believe the meaning of life is", "max_tokens": 4}
    with BackgroundServer(app) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer invalid-key"}):
            refused = httpx.post(f"{url}/completions", json=body, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        # /models is guarded as /v1/models is (llama.cpp leaves it open): the key guards every model route.
        assert httpx.get(f"{url}/models").status_code == 401
        accepted = httpx.post(f"{url}/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert accepted.status_code == 200 and "error" not in accepted.json()


# -- the contract: a 400 naming the field, unsupported fields refused by name ---------------


UNSUPPORTED = ["structured_outputs", "use_beam_search", "prompt_logprobs", "guided_json", "guided_regex", "suffix",
               "response_format", "truncate_prompt_tokens", "return_token_ids", "min_p", "stop_token_ids"]  # fmt: skip


@pytest.mark.parametrize("field", UNSUPPORTED)
def test_each_unsupported_field_is_refused_by_name(client, field):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, extra_body={field: 1})
    error = caught.value.body
    assert error["param"] == field and error["code"] == "unsupported_field" and field in error["message"]


def test_invalid_requests_are_400_in_openai_shape(server, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", temperature=9)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "temperature"
    for body in ({"prompt": "x", "max_tokens": "5"}, {"prompt": "x", "echo": 1}, [1, 2], {"prompt": "x", "n": 1.5}):
        response = httpx.post(f"{server}/v1/completions", json=body)
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    nested = httpx.post(f"{server}/v1/completions", json={"prompt": "x", "stream": True, "stream_options": {"a": 1}})
    assert nested.status_code == 400 and nested.json()["error"]["param"] == "stream_options.a"
    # a body that fails thousands of ways gets one short message
    many = httpx.post(f"{server}/v1/completions", json={"prompt": [[1, "x"]] * 3000})
    assert many.status_code == 400 and len(many.text) < 1000 and "more)" in many.json()["error"]["message"]


# -- the server's own state is bounded -----------------------------------------------------


def test_metrics_label_routes_not_raw_paths(server):
    def series() -> list[str]:
        text = httpx.get(f"{server}/metrics").text
        return [line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("gpt2kit_requests_total")]

    with httpx.Client() as session:
        for _ in range(2):
            session.get(f"{server}/no/such/{uuid.uuid4().hex}")
        session.get(f"{server}/v1/models/{uuid.uuid4().hex}")
        series()  # so that /metrics itself has its series
        before = series()
        for _ in range(60):
            session.get(f"{server}/no/such/{uuid.uuid4().hex}")
            session.get(f"{server}/v1/models/{uuid.uuid4().hex}")
    after = series()
    assert after == before  # 120 new paths, no new series
    assert 'gpt2kit_requests_total{path="unmatched",status="404"}' in after
    assert 'gpt2kit_requests_total{path="/v1/models/{name:path}",status="404"}' in after
    assert not any("no/such" in line for line in after)


def test_a_full_queue_answers_503(peer_model, gpt2_tokenizer):
    config = ServerConfig(max_batch_size=1, max_queued_requests=1, request_timeout_s=30)
    app = create_app(PacedModel(peer_model, 0.01), gpt2_tokenizer, config, model_name=MODEL)
    body = {"prompt": "x", "max_tokens": 100, "ignore_eos": True}
    with BackgroundServer(app) as url:

        def until(key: str, value: int) -> None:
            deadline = time.monotonic() + 20
            while httpx.get(f"{url}/health").json()[key] != value:
                assert time.monotonic() < deadline, key
                time.sleep(0.01)

        answers = []
        ask = lambda: answers.append(httpx.post(f"{url}/v1/completions", json=body, timeout=60))  # noqa: E731
        running = threading.Thread(target=ask)
        running.start()
        until("active_sequences", 1)
        waiting = threading.Thread(target=ask)
        waiting.start()
        until("queued_requests", 1)
        refused = httpx.post(f"{url}/v1/completions", json=body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_overloaded"
        assert refused.headers["retry-after"] == "1"
        running.join()
        waiting.join()
        assert [a.status_code for a in answers] == [200, 200]


# -- serve --host ---------------------------------------------------------------------------


def run_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gpt2kit", "serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("host", ["no-such-host.invalid", "127.0.0.1,no-such-host.invalid", "127.0.0.1,,::1"])
def test_an_unusable_host_is_one_line(tmp_path, host):
    done = run_serve("--model", str(tmp_path / "nowhere"), "--host", host, "--port", "0")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2kit serve: error:"), done.stderr
    assert "reachable from other machines" not in done.stderr
    assert "no-such-host.invalid" in lines[0] or "empty" in lines[0]


def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GPT2KitError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            bind("127.0.0.1", port)
    with pytest.raises(GPT2KitError, match="not a valid host name"):
        bind("a" * 300, 0)


def free_port(*hosts: str) -> int:
    """A port free on every one of `hosts`."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for sock in bind(",".join(hosts), port):
                sock.close()
            return port
        except GPT2KitError:
            continue
    raise AssertionError("no free port")


def test_serve_listens_on_a_list_of_addresses(tmp_path, gpt2_tokenizer):
    from gpt2kit import save

    torch.manual_seed(0)
    save(GPT(GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=32, n_layer=1, n_head=2, n_embd=16)),
         gpt2_tokenizer, tmp_path / "model")  # fmt: skip
    hosts = ("127.0.0.1", "127.0.0.2")
    port = free_port(*hosts)
    command = [sys.executable, "-m", "gpt2kit", "serve", "--model", str(tmp_path / "model"),
               "--host", ",".join(hosts), "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for host in hosts:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, process.communicate()[1]
                try:
                    if httpx.get(f"http://{host}:{port}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "reachable from other machines" not in stderr  # both are loopback addresses


def test_a_text_access_log_line_cannot_be_forged(server, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="gpt2kit.access")
    httpx.get(f"{server}/x%0AGET%20/v1/completions%20200")  # a percent-decoded newline in the path
    deadline = time.monotonic() + 5  # the access log is written once the answer has gone out
    while not (lines := [r.getMessage() for r in caplog.records if r.name == "gpt2kit.access"]):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.05)
    assert any(line.startswith("GET /x\\nGET /v1/completions 200 404 ") for line in lines), lines
    assert not any("\n" in line for line in lines)
