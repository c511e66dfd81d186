"""The scale sheet: measured throughput per core of each data stage here, and what it takes to rebuild WebText.

1. WebText build, one task on one core, over a local web: Gutenberg passages as HTML pages with navigation and
   footer chrome, served from a separate process on 64 loopback hosts (127.0.0.2 ...), so the fetcher keeps many
   hosts in flight as it would on the real web (politeness delay off: this measures our CPU cost per page, not
   the web's). Per step: datatrove's own time for it in the task; per stage: the stage's wall time.
2. Tokenizing (`prepare` as tasks, one task) and inserting 8-grams (`overlap build` with one map and one reduce
   task) on Gutenberg, each against today's one-process path over the same files (the ratio shows what the task
   layout costs).
3. From those rates: core-hours and wall time to rebuild WebText (45M links, 8M pages, 40 GB of text) and to
   tokenize 40 GB, on 64 and 512 cores; the Bloom filter's size and shard count at 1e-8 for WebText and for a
   15T-token corpus.

Usage: python bench/scale.py [--pages 1500] [--mb 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402

HOSTS = 64
WEBTEXT_LINKS = 45e6
WEBTEXT_PAGES = 8e6
WEBTEXT_BYTES = 40e9
WEBTEXT_NGRAMS = 8e9
BIG_CORPUS_TOKENS = 15e12
SHARD_BYTES = 4e9  # a reduce task holds one shard: 4 GB fits a node's memory with room for the chunk it reads
CHROME = (
    "<header><nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/archive'>Archive</a></nav></header>"
)
FOOTER = "<footer><p>Copyright 2017. All rights reserved.</p><p>Privacy policy | Terms of use</p></footer>"


def passages(count: int) -> list[str]:
    """`count` passages of about 500 words, paragraphs of Gutenberg books in order."""
    out, current, words = [], [], 0
    for book in sorted((SHARED / "train" / "gutenberg").glob("*.txt")):
        for paragraph in book.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            paragraph = " ".join(paragraph.split())
            if len(paragraph.split()) < 20:
                continue
            current.append(paragraph)
            words += len(paragraph.split())
            if words >= 500:
                out.append(current)
                current, words = [], 0
                if len(out) == count:
                    return ["".join(f"<p>{p}</p>" for p in page) for page in out]
    return ["".join(f"<p>{p}</p>" for p in page) for page in out]


def serve(pages: list[str], port_queue) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies = {
        f"/page/{i}": f"<html><head><title>Page {i}</title></head><body>{CHROME}<article>{text}</article>{FOOTER}"
        "</body></html>".encode()
        for i, text in enumerate(pages)
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = bodies.get(self.path)
            if self.path == "/robots.txt":
                body, kind = b"User-agent: *\nAllow: /\n", "text/plain"
            else:
                kind = "text/html; charset=utf-8"
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def webtext_rates(pages: int, root: Path) -> dict[str, tuple[float, str]]:
    """Per step and stage: items per second on one core."""
    from gpt2kit.executors import ExecutorConfig, run_stages
    from gpt2kit.webtext import WebTextConfig, finish_build, plan_stages

    texts = passages(pages)
    queue = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(texts, queue), daemon=True)
    server.start()
    port = queue.get(timeout=60)
    root.mkdir(parents=True, exist_ok=True)
    links = root / "links.txt"
    links.write_text("".join(f"http://127.0.0.{2 + i % HOSTS}:{port}/page/{i}\n" for i in range(len(texts))))
    config = WebTextConfig(input_kind="urls", inputs=[str(links)], out=str(root / "webtext"), workers=1)
    config.fetch.per_domain_delay = 0.0
    config.fetch.concurrency = HOSTS
    stage_seconds = {}
    try:
        fetch_cpu, fetch_wall = fetch_rates(links.read_text().split(), root / "fetch-alone")
        for stage in plan_stages(config):
            start = time.perf_counter()
            run_stages([stage], ExecutorConfig(workers=1))
            stage_seconds[stage.name] = time.perf_counter() - start
        report = finish_build(config)
    finally:
        server.terminate()
    work = root / "webtext.work"
    step_seconds: dict[str, float] = defaultdict(float)
    for path in (work / "logs" / "pages" / "stats").glob("*.json"):
        for step in json.loads(path.read_text()):
            timing = step.get("time_stats") or {}
            if isinstance(timing, dict) and timing.get("total"):
                name = step["name"].split(": ", 1)[-1]
                step_seconds[name] += timing["total"]
    rates = {
        "read + normalise + domain rules (collect)": (len(texts) / stage_seconds["collect"], "links/s"),
        "fetch (aiohttp): client CPU": (fetch_cpu, "pages/CPU-s"),
        "fetch: wall, from the local server": (fetch_wall, "pages/s"),
        "extract (trafilatura)": (len(texts) / step_seconds["⛏ Trafilatura"], "pages/s"),
        "filter (English, C4, Gopher, length)": (
            len(texts)
            / sum(
                step_seconds[k] for k in ("English (py3langid)", "⛰ C4 Quality", "🥇 Gopher Quality", "minimum length")
            ),
            "pages/s",
        ),
        "dedup (exact + MinHash, all stages)": (
            report.documents
            / (
                step_seconds["💥 exact-deduplication stage 1"]
                + sum(stage_seconds[s] for s in stage_seconds if s.startswith(("exact-find", "minhash")))
            ),
            "documents/s",
        ),
    }
    rates["whole build, one core"] = (len(texts) / sum(stage_seconds.values()), "links/s")
    return rates


def fetch_rates(urls: list[str], cache: Path) -> tuple[float, float]:
    """(pages per CPU-second of the fetching process, pages per second of wall time), 64 hosts in flight."""
    import asyncio

    from gpt2kit.webtext.config import FetchConfig
    from gpt2kit.webtext.fetch import Fetcher

    fetcher = Fetcher(FetchConfig(per_domain_delay=0.0, concurrency=HOSTS), str(cache), lambda domain: None)
    wall, cpu = time.perf_counter(), time.process_time()
    outcomes = asyncio.run(fetcher._fetch_all(urls))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = sum(1 for outcome in outcomes if outcome.cause)
    if failed:
        raise RuntimeError(f"{failed} of {len(urls)} pages failed to fetch from the local server")
    return len(urls) / cpu, len(urls) / wall


def gutenberg_files(megabytes: float) -> list[Path]:
    files, total = [], 0
    for path in sorted((SHARED / "train" / "gutenberg").glob("*.txt")):
        if total >= megabytes * 1e6:
            break
        files.append(path)
        total += path.stat().st_size
    return files


def text_rates(megabytes: float, root: Path) -> tuple[dict, list[str]]:
    from gpt2kit.data.bloom import build_filter
    from gpt2kit.data.bloom_tasks import build_sharded_filter
    from gpt2kit.data.prepare import prepare

    root.mkdir(parents=True, exist_ok=True)
    files = [str(p) for p in gutenberg_files(megabytes)]
    size = sum(Path(f).stat().st_size for f in files)
    lines = []
    start = time.perf_counter()
    streamed = prepare(files, "gpt2", root / "stream", workers=1, progress=False)
    stream_s = time.perf_counter() - start
    start = time.perf_counter()
    tasked = prepare(files, "gpt2", root / "tasks", tasks=1, workers=1)
    tasks_s = time.perf_counter() - start
    tokens = sum(s.num_tokens for s in tasked.manifest.shards)
    lines.append(
        f"tokenize {size / 1e6:.0f} MB: as 1 task {size / tasks_s / 1e6:.2f} MB/s ({tokens / tasks_s:,.0f} tokens/s), "
        f"today's one-process stream {size / stream_s / 1e6:.2f} MB/s: ratio {stream_s / tasks_s:.2f}x"
        f" ({streamed.tokens_written:,} tokens)"
    )
    start = time.perf_counter()
    plain = build_filter(files, root / "plain.bloom", workers=1)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    sharded = build_sharded_filter(files, root / "sharded.bloom", shards=4, tasks=1)
    sharded_s = time.perf_counter() - start
    lines.append(
        f"8-grams {plain.ngrams:,}: 4-shard map+reduce on 1 core {sharded.ngrams / sharded_s:,.0f} 8-grams/s, "
        f"today's build_filter {plain.ngrams / plain_s:,.0f}/s (count + insert): ratio {plain_s / sharded_s:.2f}x"
    )
    rates = {
        "tokenize (prepare task, tiktoken)": (size / tasks_s, "bytes/s"),
        "8-gram hash + insert (map + reduce)": (sharded.ngrams / sharded_s, "8-grams/s"),
    }
    return rates, lines


def human_hours(hours: float) -> str:
    if hours * 60 < 1:
        return "< 1 min"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1500)
    parser.add_argument("--mb", type=float, default=20)
    args = parser.parse_args()
    from gpt2kit.data.bloom import bloom_params

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rates = webtext_rates(args.pages, root / "web")
        text, lines = text_rates(args.mb, root / "text")
    rates |= text
    print("| stage | per core here | unit |")
    print("|---|---:|---|")
    for name, (rate, unit) in rates.items():
        print(f"| {name} | {rate:,.1f} | {unit} |")
    print()
    for line in lines:
        print(line)
    print()
    fetched = WEBTEXT_LINKS  # upper bound: every link fetched and extracted (URL dedup removes some first)
    work = {
        "read": WEBTEXT_LINKS / rates["read + normalise + domain rules (collect)"][0],
        "fetch (CPU)": fetched / rates["fetch (aiohttp): client CPU"][0],
        "extract": fetched / rates["extract (trafilatura)"][0],
        "filter": fetched / rates["filter (English, C4, Gopher, length)"][0],
        "dedup": WEBTEXT_PAGES / rates["dedup (exact + MinHash, all stages)"][0],
        "tokenize 40 GB": WEBTEXT_BYTES / rates["tokenize (prepare task, tiktoken)"][0],
        "8-gram filter": WEBTEXT_NGRAMS / rates["8-gram hash + insert (map + reduce)"][0],
    }
    print("| WebText stage | core-hours | wall on 64 cores | wall on 512 cores |")
    print("|---|---:|---:|---:|")
    for name, seconds in work.items():
        hours = seconds / 3600
        print(f"| {name} | {hours:,.0f} | {human_hours(hours / 64)} | {human_hours(hours / 512)} |")
    total = sum(work.values()) / 3600
    print(f"| all | {total:,.0f} | {human_hours(total / 64)} | {human_hours(total / 512)} |")
    print()
    print("| corpus | 8-grams | filter at 1e-8 | shards of <= 4 GB |")
    print("|---|---:|---:|---:|")
    for name, ngrams in (("WebText", WEBTEXT_NGRAMS), ("15T tokens (0.75 words/token)", BIG_CORPUS_TOKENS * 0.75)):
        whole = bloom_params(int(ngrams), 1e-8)
        shards = max(1, int(-(-whole.nbytes // SHARD_BYTES)))
        shards = 1 << (shards - 1).bit_length()  # a power of two
        per_shard = bloom_params(int(ngrams / shards * 1.001), 1e-8)
        print(
            f"| {name} | {ngrams:,.0f} | {per_shard.nbytes * shards / 1e9:,.0f} GB | {shards:,} x "
            f"{per_shard.nbytes / 1e9:.1f} GB |"
        )


if __name__ == "__main__":
    main()
