"""The README's command blocks, run as written from the repository root, scaled down, so the README cannot drift.

Every command in a ```bash block of README.md runs here, in README order, in a sandbox laid out like a checkout
(`../shared/data` holds small slices of the shared data), unless SKIPPED gives the reason it cannot run on this
machine. SCALE rewrites sizes and durations (the rewritten command is otherwise the README's own), and each rule
must still match the README. A `# -> TEXT` comment is checked against what the command printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import zstandard
from conftest import shared_file
from webtext_site import Site, article_text, page

README = Path(__file__).resolve().parents[1] / "README.md"

# (pattern in the command, why it does not run here)
SKIPPED = (
    (r"^make ", "the Makefile targets themselves: CI runs make test, and make demo has its own test"),
    (r"^torchrun ", "needs GPUs (tests/test_train.py runs torchrun with 2 gloo processes)"),
    (r"--hf-dataset|openai-community/", "downloads from the Hugging Face hub"),
    (r"--reddit RS_2017", "needs Reddit dumps (tests/test_webtext.py builds from a generated one)"),
    (r"--warc crawl-", "needs WARC files (tests/test_webtext.py builds from a generated one)"),
    (r"--executor slurm", "needs a Slurm cluster (tests/test_scale.py runs the job scripts under a stand-in Slurm)"),
    (r"--executor ray", "joins a Ray cluster (tests/test_scale.py's slow test runs the three jobs on a local one)"),
)

# (pattern, replacement): smaller sizes and durations, same commands
SCALE = (
    (r"--vocab-size \d+", "--vocab-size 1000"),
    (r"--size-mb 20\b", "--size-mb 0.3"),
    (r"--workers 16\b", "--workers 2"),
    (r"--max-steps 100\b", "--max-steps 30"),
    (r"--tokens 6000000\b", "--tokens 8192 --eval-limit 8"),
    (r"--sizes cpu-100k,cpu-1m,cpu-6m\b", "--sizes cpu-25k,cpu-100k"),
    (r"--max-new-tokens 40\b", "--max-new-tokens 8"),
    (r"--port 8000\b", "--port {port}"),
    (r"^(gpt2kit train --config cpu-smoke (?!.*--max-steps).*--out runs/smoke)(\s|$)", r"\1 --max-steps 20\2"),
    (
        r"^(gpt2kit train --config gutenberg-cpu .*)$",
        r"\1 --max-steps 4 --set batch_tokens=512 micro_batch_size=2 eval_interval=2 eval_windows=2"
        r" checkpoint_interval=2",
    ),
    (r"^(gpt2kit eval --model .*)$", r"\1 --limit 8"),
    (r"^(gpt2kit sample (?!.*--max-new-tokens).*)$", r"\1 --max-new-tokens 8"),
    (r"^(gpt2kit serve (?!.*--port).*)$", r"\1 --port {port}"),
    (r"^(gpt2kit webtext build --urls .*)$", r"\1 --set fetch.per_domain_delay=0"),
)

STDIN = {"--interactive": "It was a dark night\n"}


def readme_commands() -> list[tuple[int, str, str]]:
    """(line, command, trailing comment) for each command of the README's bash blocks, continuations joined."""
    lines = README.read_text().splitlines()
    commands = []
    inside = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            inside = line.strip() == "```bash" if not inside else False
        elif inside and line.strip() and not line.lstrip().startswith("#"):
            start = index + 1
            while line.rstrip().endswith("\\"):
                index += 1
                line = line.rstrip()[:-1].rstrip() + " " + lines[index].strip()
            command, comment = split_comment(line.strip())
            commands.append((start, command, comment))
        index += 1
    return commands


def split_comment(line: str) -> tuple[str, str]:
    """`cmd  # note` -> (cmd, note); a # inside quotes is part of the command."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and position and line[position - 1] == " ":
            return line[:position].rstrip(), line[position + 1 :].strip()
    return line, ""


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIPPED if re.search(pattern, command)), None)


def scale(command: str, port: int, used: set[int]) -> str:
    for number, (pattern, replacement) in enumerate(SCALE):
        command, count = re.subn(pattern, replacement, command)
        if count:
            used.add(number)
    return command.replace("{port}", str(port))


def test_every_rule_still_matches_the_readme():
    commands = [command for _, command, _ in readme_commands()]
    assert len(commands) > 40
    for pattern, _ in SKIPPED:
        assert any(re.search(pattern, c) for c in commands), f"SKIPPED rule {pattern!r} matches no README command"
    used: set[int] = set()
    for command in commands:
        if not skip_reason(command):
            scale(command, 0, used)
    stale = [SCALE[n][0] for n in range(len(SCALE)) if n not in used]
    assert not stale, f"SCALE rules that match no README command: {stale}"


# -- the sandbox ---------------------------------------------------------------------------------------------------


def head_lines(source: Path, target: Path, lines: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as handle:
        target.write_bytes(b"".join(line for _, line in zip(range(lines), handle, strict=False)))


def shared_slice(root: Path) -> None:
    """../shared/data as the README uses it: three books cut to 60 kB, and the first lines of each eval set."""
    books = sorted(shared_file("train/gutenberg").iterdir())[:3]
    (root / "train" / "gutenberg").mkdir(parents=True)
    for book in books:
        (root / "train" / "gutenberg" / book.name).write_bytes(book.read_bytes()[:60_000])
    head_lines(shared_file("wikitext-2/wiki.valid.tokens"), root / "wikitext-2" / "wiki.valid.tokens", 120)
    head_lines(shared_file("ptb/ptb.valid.txt"), root / "ptb" / "ptb.valid.txt", 40)
    lambada = "lambada/lambada_development_plain_text.txt"
    head_lines(shared_file(lambada), root / lambada, 20)
    winogrande = "winograd/winogrande_dev_llmfoundry.jsonl"
    head_lines(shared_file(winogrande), root / winogrande, 10)


def tiny_model(path: Path) -> None:
    from gpt2kit.checkpoint import save
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    save(model, load_tokenizer("gpt2"), path)


def placeholders(repo: Path, site: Site) -> None:
    """What the README's commands take as given: a corpus, a model, prompts, saved pages, links, test sets."""
    book = (repo.parent / "shared" / "data" / "train" / "gutenberg").iterdir().__next__().read_text()
    (repo / "corpus").mkdir()
    for index in range(3):
        (repo / "corpus" / f"part{index}.txt").write_text(book[index * 15_000 : (index + 1) * 15_000])
    tiny_model(repo / "my-model")
    tiny_model(repo / "path" / "to" / "model-dir-or-hub-id")
    (repo / "prompt.txt").write_text("It was the best of times")
    (repo / "my-kinds.yaml").write_text("- name: story\n  regexes: ['\\bStory \\d']\n")
    (repo / "sample.toml").write_text("[generation]\ntemperature = 0.8\ntop_k = 20\n")
    (repo / "lines.txt").write_text("\n".join(book.splitlines()[:300]))
    (repo / "dumps").mkdir()
    records = "".join(json.dumps({"text": article_text(seed)}) + "\n" for seed in range(20))
    (repo / "dumps" / "part-0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records.encode()))
    (repo / "saved-pages").mkdir()
    for seed in range(4):
        (repo / "saved-pages" / f"page{seed}.html").write_text(page(f"Page {seed}", article_text(seed)))
    site.add("/robots.txt", 200, {"Content-Type": "text/plain"}, b"User-agent: *\n")
    for seed in range(4):
        site.add_html(f"/story/{seed}", page(f"Story {seed}", article_text(10 + seed)))
    (repo / "links.txt").write_text("".join(f"{site.base}/story/{seed}\n" for seed in range(4)))
    # the overlap check's test sets: one shares a page with the corpus
    shared = repo.parent / "shared" / "data"
    shutil.copy(shared / "wikitext-2" / "wiki.valid.tokens", repo / "wiki.valid.raw")
    shutil.copy(shared / "ptb" / "ptb.valid.txt", repo / "ptb.valid.txt")
    shutil.copy(shared / "lambada" / "lambada_development_plain_text.txt", repo / "lambada.txt")
    (repo / "cnndm.jsonl").write_text(json.dumps({"article": article_text(10), "highlights": "a summary"}) + "\n")
    (repo / "nq.jsonl").write_text(json.dumps({"question": "who wrote emma", "answer": ["Jane Austen"]}) + "\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_until_healthy(command: str, cwd: Path, env: dict, port: int) -> str:
    """Start the server, wait for /health to answer 200, stop it; returns what went wrong, or ""."""
    server = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return f"exited with {server.returncode}: {server.stdout.read().decode()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return ""
            except OSError:
                pass
            time.sleep(0.5)
        return "no healthy answer within 120 s"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server.stdout.close()


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_the_readme_runs_as_written(tmp_path):
    repo = tmp_path / "gpt2kit"
    repo.mkdir()
    shared_slice(tmp_path / "shared" / "data")
    site = Site().start()
    try:
        placeholders(repo, site)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        env["GPT2KIT_SHARED_DATA"] = str(tmp_path / "shared" / "data")
        env["GPT2KIT_CACHE_DIR"] = str(tmp_path / "cache")
        env["KEY"] = "walkthrough-key"
        used: set[int] = set()
        ran = 0
        for line, command, comment in readme_commands():
            if skip_reason(command):
                continue
            port = free_port()
            command = scale(command, port, used)
            where = f"README.md:{line}: {command}"
            if command.startswith("gpt2kit serve "):
                problem = serve_until_healthy(command, repo, env, port)
                assert not problem, f"{where}\n{problem}"
                ran += 1
                continue
            stdin = next((text for flag, text in STDIN.items() if flag in command), "")
            done = subprocess.run(
                ["bash", "-c", command], cwd=repo, env=env, input=stdin, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, f"{where}\nexit {done.returncode}\n{done.stderr[-3000:]}"
            if comment.startswith("-> "):
                expected = comment[3:]
                assert expected in done.stdout or (repo / expected).exists(), f"{where}\n{done.stdout[-2000:]}"
            ran += 1
    finally:
        site.stop()
    assert ran >= 35
