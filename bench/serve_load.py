"""Load test for `gpt2kit serve`, a race against llama.cpp's server, and the gain of shared prompt prefixes.

1. Robustness: 200 requests at concurrency 16, mixed streaming / non-streaming / malformed, against
   `gpt2kit serve` in its own process over a random-weight preset (or --model DIR). Reports p50/p95 latency,
   throughput and status codes, and the batching speed-up against the same requests sent one at a time.
   Passes when every valid request gets 200, every malformed one a 4xx, nothing a 5xx, and /health still answers.
2. The race against llama.cpp's native `llama-server` (bench/llamacpp.py finds the build, or builds it from the
   llama-cpp-python sdist's vendored llama.cpp into ~/.cache/gpt2kit-bench, ~15 min on 2 cores; --llama-cpp DIR
   names an existing bin directory): the same valid load (--race-requests, concurrency 16, half streaming,
   --race-tokens new tokens, end-of-text banned with logit_bias so every server generates every token) against
   `gpt2kit serve` at each of --precisions (fp32, int8, int4; one gpt2kit refuses is left out with a note) and
   `llama-server -m MODEL.gguf -np 16 -c <context x 16> --host 127.0.0.1 -t THREADS` at f32 (`gpt2kit convert`),
   q8_0 and q4_0 (`llama-quantize --pure`), each on its /v1/completions. Generated tokens are what each server
   reports in its usage. Each pair runs back to back, in alternating order, for --race-rounds rounds, and each
   server's best round is kept. Prints each server's row and the generated-tokens/s ratio within each precision
   pair: gpt2kit fp32 / llama.cpp f32, int8 / q8_0, int4 / q4_0.
3. Shared prefixes: 16 concurrent requests that share a 200-token prompt prefix, with --share-prefixes
   true and false.
Usage: python bench/serve_load.py [--preset cpu-6m] [--requests 200] [--concurrency 16] [--max-tokens 32]
       [--race-requests 48 --race-tokens 64 --race-rounds 2] [--precisions fp32 int8 int4] [--threads N] [--llama-cpp BIN_DIR]
       [--skip-robustness] [--skip-race] [--skip-prefix]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets GPT2KIT_GPT2_VOCAB)
import llamacpp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the river merchant sold forty lanterns to every sailor in the old town before winter came".split()

# Each malformed request: (what is wrong, request keyword arguments for httpx).
MALFORMED = [
    ("broken JSON", {"content": b'{"prompt": "x", "max_tokens":', "headers": {"content-type": "application/json"}}),
    ("temperature out of range", {"json": {"prompt": "x", "temperature": 7}}),
    ("max_tokens over the cap", {"json": {"prompt": "x", "max_tokens": 100_000}}),
    ("n over the cap", {"json": {"prompt": "x", "n": 1000}}),
    ("empty prompt list", {"json": {"prompt": []}}),
    ("missing prompt", {"json": {"max_tokens": 4}}),
    ("prompt of the wrong type", {"json": {"prompt": {"text": "x"}}}),
    ("token id outside the vocabulary", {"json": {"prompt": [1, 2, 10**9]}}),
    ("body over the size limit", {"json": {"prompt": "x" * 2_000_000}}),
    ("not UTF-8", {"content": b'{"prompt": "\xff\xfe"}', "headers": {"content-type": "application/json"}}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_model(preset: str, directory: Path) -> Path:
    import torch

    from gpt2kit import GPT, Tokenizer, preset_config, save

    torch.manual_seed(0)
    save(GPT(preset_config(preset)), Tokenizer.gpt2(), directory)
    return directory


def valid_body(rng: random.Random, max_tokens: int, stream: bool) -> dict:
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
    body = {"prompt": prompt, "max_tokens": rng.randint(max_tokens // 2, max_tokens), "stream": stream}
    body.update(rng.choice([{"temperature": 0}, {"temperature": 0.8, "top_k": 40}, {"top_p": 0.9, "seed": 1}]))
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def send(client, url: str, kind: str, kwargs: dict) -> dict:
    """One request; returns its kind, status, latency, tokens, text and any protocol problem."""
    start = time.perf_counter()
    result = {"kind": kind, "status": None, "tokens": 0, "problem": None, "first_byte": None, "text": ""}
    try:
        if kind == "stream":
            async with client.stream("POST", url, **kwargs) as response:
                result["status"] = response.status_code
                events = []
                async for line in response.aiter_lines():
                    if result["first_byte"] is None:
                        result["first_byte"] = time.perf_counter() - start
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                if response.status_code == 200:
                    if not events or events[-1] != "[DONE]":
                        result["problem"] = "stream did not end with [DONE]"
                    else:
                        chunks = [json.loads(e) for e in events[:-1]]
                        usage = [c["usage"] for c in chunks if c.get("usage")]
                        choices = [c["choices"][0] for c in chunks if c.get("choices")]
                        # without a usage chunk: a chunk per token, then a final one
                        per_token = sum(bool(c["text"]) or c.get("finish_reason") is None for c in choices)
                        result["tokens"] = usage[-1]["completion_tokens"] if usage else per_token
                        result["text"] = "".join(c["text"] for c in choices)
        else:
            response = await client.post(url, **kwargs)
            result["status"] = response.status_code
            body = response.json()
            if response.status_code == 200:
                result["tokens"] = body["usage"]["completion_tokens"]
                result["text"] = body["choices"][0]["text"]
            elif "error" not in body or "message" not in body["error"]:
                result["problem"] = "error body is not OpenAI-style"
    except Exception as err:  # a transport failure is a result to report, not a crash
        result["problem"] = f"{type(err).__name__}: {err}"
    result["latency"] = time.perf_counter() - start
    return result


async def run_load(url: str, plan: list[tuple[str, dict]], concurrency: int) -> tuple[list[dict], float]:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency * 2)) as client:

        async def one(kind, kwargs):
            async with limit:
                return await send(client, f"{url}/v1/completions", kind, kwargs)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(kind, kwargs) for kind, kwargs in plan))
        return list(results), time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(command: list[str], ready_url: str, name: str, env: dict | None = None) -> subprocess.Popen:
    """Start a server process and wait until `ready_url` answers 200. Its log goes to a file (a pipe nobody
    reads would fill up and stall a chatty server); RuntimeError, with the log's end, when it does not start."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            log.seek(0)
            raise RuntimeError(f"{name} did not start: {log.read()[-2000:]}")
        time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def gpt2kit_server(
    model: Path, port: int, concurrency: int, max_tokens: int, *extra: str, threads: int | None = None
) -> subprocess.Popen:
    command = [sys.executable, "-m", "gpt2kit", "serve", "--model", str(model), "--port", str(port)]
    command += ["--max-tokens-cap", str(max(64, max_tokens)), "--max-batch-size", str(concurrency), *extra]
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None  # torch's intra-op threads
    return start_server(command, f"http://127.0.0.1:{port}/health", "gpt2kit serve", env)


def summary(results: list[dict], elapsed: float) -> dict:
    """Requests/s, generated tokens/s (as each server counts them), latency and time to first byte."""
    latencies = [r["latency"] for r in results]
    first = [r["first_byte"] for r in results if r["kind"] == "stream" and r["first_byte"] is not None]
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests/s": len(results) / elapsed,
        "tokens/s": tokens / elapsed,
        "p50 s": percentile(latencies, 50),
        "p95 s": percentile(latencies, 95),
        "first byte p50 s": percentile(first, 50) if first else float("nan"),
        "failed": sum(r["status"] != 200 or r["problem"] is not None for r in results),
    }


def race_one(server: subprocess.Popen, port: int, plan: list[tuple[str, dict]], concurrency: int) -> dict:
    """Run the race's load against one started server, stop it, and summarise."""
    try:
        results, elapsed = asyncio.run(run_load(f"http://127.0.0.1:{port}", plan, concurrency))
        return summary(results, elapsed)
    finally:
        stop_server(server)


def print_rows(rows: dict[str, dict]) -> None:
    keys = list(next(iter(rows.values())))
    print(f"  {'server':34s}" + "".join(f"{k:>17s}" for k in keys))
    for name, row in rows.items():
        print(f"  {name:34s}" + "".join(f"{v:17.2f}" if isinstance(v, float) else f"{v:17d}" for v in row.values()))


def race(model: Path, work: Path, args) -> None:
    """The same valid load against gpt2kit serve at each precision and llama.cpp's native llama-server at each
    peer type."""
    rng = random.Random(1)
    plan = []
    for i in range(args.race_requests):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        body = {"prompt": prompt, "max_tokens": args.race_tokens, "temperature": 0.8, "top_k": 40, "seed": i}
        body["logit_bias"] = {"50256": -100}  # no early end-of-text: every request generates all its tokens
        stream = i % 2 == 0
        if stream:
            body["stream_options"] = {"include_usage": True}
        plan.append(("stream" if stream else "plain", {"json": body | {"stream": stream}}))
    threads = args.threads or os.cpu_count() or 2
    tools = llamacpp.find_tools(args.llama_cpp)
    gguf = {}
    if tools:
        gguf = llamacpp.make_models(tools, model, work, [llamacpp.PEER[p] for p in args.precisions])
    context = json.loads((model / "config.json").read_text())["n_positions"]  # per llama-server slot

    def start_ours(precision: str, port: int) -> subprocess.Popen:
        extra = ["--quantize", precision] if precision != "fp32" else []
        return gpt2kit_server(model, port, args.concurrency, args.race_tokens, *extra, threads=args.threads)

    def start_peer(kind: str, port: int) -> subprocess.Popen:
        command = llamacpp.server_command(tools, gguf[kind], port, args.concurrency, context, threads)
        return start_server(command, f"http://127.0.0.1:{port}/health", "llama-server")

    # Each pair runs back to back, in alternating order, for --race-rounds rounds: the machine's speed drifts
    # within minutes, so only servers raced side by side are compared. Each server's best round is kept.
    pairs = []
    for precision in args.precisions:
        kind = llamacpp.PEER[precision]
        pair = [(f"gpt2kit serve ({precision})", lambda port, p=precision: start_ours(p, port))]
        if kind in gguf:
            pair.append((f"llama-server ({kind})", lambda port, k=kind: start_peer(k, port)))
        pairs.append(pair)
    rows: dict[str, dict] = {}
    left_out: set[str] = set()
    for round_ in range(args.race_rounds):
        for pair in pairs:
            for name, launch in pair if round_ % 2 == 0 else pair[::-1]:
                if name in left_out:
                    continue
                port = free_port()
                try:
                    server = launch(port)
                except RuntimeError as err:
                    reason = [line for line in str(err).splitlines() if line.strip()][-1:] or ["it did not start"]
                    print(f"  {name}: left out, {reason[0].strip().removeprefix('gpt2kit serve did not start: ')}")
                    left_out.add(name)
                    continue
                result = race_one(server, port, plan, args.concurrency)
                if name not in rows or result["tokens/s"] > rows[name]["tokens/s"]:
                    rows[name] = result
    print(
        f"race: {len(plan)} requests at concurrency {args.concurrency}, {args.race_tokens} new tokens, half "
        f"streaming, llama-server on {threads} threads, best of {args.race_rounds} interleaved rounds"
    )
    if not rows:
        return
    print_rows(rows)
    for precision, kind in llamacpp.PAIRS:
        ours, peer = rows.get(f"gpt2kit serve ({precision})"), rows.get(f"llama-server ({kind})")
        if ours and peer:
            print(
                f"  generated tokens/s, gpt2kit {precision} / llama.cpp {kind}: {ours['tokens/s'] / peer['tokens/s']:.2f}x"
            )


def shared_prefixes(model: Path, args, tokenizer) -> None:
    """16 concurrent requests sharing a 200-token prompt prefix, with prefix sharing on and off."""
    prefix_ids = tokenizer.encode(" ".join(random.Random(2).choice(WORDS) for _ in range(400)))[:200]
    prefix = tokenizer.decode(prefix_ids)
    plan = [
        ("plain", {"json": {"prompt": f"{prefix} question {i}: what did the {WORDS[i % len(WORDS)]} do?",
                            "max_tokens": 16, "temperature": 0, "logit_bias": {"50256": -100}}})
        for i in range(16)
    ]  # fmt: skip
    rows = {}
    for share in ("false", "true"):
        port = free_port()
        server = gpt2kit_server(model, port, 16, 16, "--share-prefixes", share)
        try:
            asyncio.run(run_load(f"http://127.0.0.1:{port}", plan[:2], 2))  # warm
            best = None
            for _ in range(3):
                results, elapsed = asyncio.run(run_load(f"http://127.0.0.1:{port}", plan, 16))
                best = min(best or elapsed, elapsed)
            texts = [r["text"] for r in results]
            rows[f"--share-prefixes {share}"] = {"seconds": best, "failed": sum(r["status"] != 200 for r in results)}
            rows[f"--share-prefixes {share}"]["texts"] = texts
        finally:
            stop_server(server)
    same = rows["--share-prefixes true"].pop("texts") == rows["--share-prefixes false"].pop("texts")
    print("shared prefix: 16 concurrent requests, a 200-token common prompt prefix, 16 new tokens each (best of 3)")
    print_rows(rows)
    gain = rows["--share-prefixes false"]["seconds"] / rows["--share-prefixes true"]["seconds"]
    print(f"  speed-up from sharing: {gain:.2f}x; identical completions: {same}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="a model directory (default: random weights of --preset)")
    parser.add_argument("--preset", default="cpu-6m")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--malformed-share", type=float, default=0.2)
    parser.add_argument("--baseline-requests", type=int, default=16, help="sent one at a time, then all at once")
    parser.add_argument("--race-requests", type=int, default=200)
    parser.add_argument("--race-tokens", type=int, default=64)
    parser.add_argument("--race-rounds", type=int, default=2, help="interleaved rounds; each server's best is kept")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=[p for p, _ in llamacpp.PAIRS],
        choices=list(llamacpp.PEER),
        help="gpt2kit serve precisions to race, each against its llama.cpp peer",
    )
    parser.add_argument("--threads", type=int, help="threads of every server (default: all cores)")
    parser.add_argument("--llama-cpp", metavar="DIR", help="bin directory of a native llama.cpp build")
    parser.add_argument("--skip-robustness", action="store_true")
    parser.add_argument("--skip-race", action="store_true")
    parser.add_argument("--skip-prefix", action="store_true")
    args = parser.parse_args()
    from gpt2kit import Tokenizer

    tokenizer = Tokenizer.gpt2()
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_model(args.preset, Path(tmp) / args.preset)
        if not args.skip_robustness:
            status = robustness(model, args)
        if not args.skip_race:
            race(model, Path(tmp), args)
        if not args.skip_prefix:
            shared_prefixes(model, args, tokenizer)
    return status


def robustness(model: Path, args) -> int:
    import httpx

    rng = random.Random(0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = gpt2kit_server(model, port, args.concurrency, args.max_tokens)
    try:
        plan: list[tuple[str, dict]] = []
        for i in range(args.requests):
            if rng.random() < args.malformed_share:
                plan.append(("malformed", MALFORMED[i % len(MALFORMED)][1]))
            else:
                stream = rng.random() < 0.5
                plan.append(("stream" if stream else "plain", {"json": valid_body(rng, args.max_tokens, stream)}))
        results, elapsed = asyncio.run(run_load(url, plan, args.concurrency))

        # The peer: the same valid requests one at a time, against all at once.
        baseline = [("plain", {"json": valid_body(rng, args.max_tokens, False)}) for _ in range(args.baseline_requests)]
        for body in baseline:
            body[1]["json"].update(temperature=0, max_tokens=args.max_tokens)
        sequential, sequential_time = asyncio.run(run_load(url, baseline, 1))
        batched, batched_time = asyncio.run(run_load(url, baseline, args.concurrency))
        health = httpx.get(f"{url}/health", timeout=10)
    finally:
        stop_server(server)

    print(
        f"{len(plan)} requests at concurrency {args.concurrency} against {model.name} "
        f"(max_tokens <= {args.max_tokens}), {elapsed:.1f} s"
    )
    by_kind: dict[str, Counter] = {}
    for result in results:
        by_kind.setdefault(result["kind"], Counter())[result["status"]] += 1
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind:9s} status codes: {dict(sorted(counts.items(), key=lambda kv: str(kv[0])))}")
    valid = [r for r in results if r["kind"] != "malformed"]
    latencies = [r["latency"] for r in valid]
    first_bytes = [r["first_byte"] for r in valid if r["kind"] == "stream" and r["first_byte"] is not None]
    tokens = sum(r["tokens"] for r in valid)
    print(f"  latency of valid requests: p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s")
    if first_bytes:
        print(f"  streaming time to first byte: p50 {percentile(first_bytes, 50):.2f} s")
    print(f"  throughput: {len(plan) / elapsed:.1f} requests/s, {tokens / elapsed:.1f} generated tokens/s")
    seq_tokens = sum(r["tokens"] for r in sequential) / sequential_time
    bat_tokens = sum(r["tokens"] for r in batched) / batched_time
    print(
        f"  {args.baseline_requests} greedy requests one at a time: {seq_tokens:.1f} tokens/s; "
        f"all at once: {bat_tokens:.1f} tokens/s; ratio batched / sequential: {bat_tokens / seq_tokens:.2f}x"
    )
    problems = [r["problem"] for r in results + sequential + batched if r["problem"]]
    failures = []
    if any(r["status"] != 200 for r in valid + sequential + batched):
        failures.append("a valid request did not get 200")
    if any(not (r["status"] and 400 <= r["status"] < 500) for r in results if r["kind"] == "malformed"):
        failures.append("a malformed request did not get a 4xx")
    if any(r["status"] and r["status"] >= 500 for r in results):
        failures.append("a request got a 5xx")
    if health.status_code != 200:
        failures.append("/health did not answer afterwards")
    failures += sorted(set(problems))
    print(f"  /health afterwards: {health.status_code} {health.json()}")
    print("  PASS: all targets met" if not failures else "  FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
