"""What many test files build: a seeded tiny model, its transformers twin, a saved model directory, a small
training config, and the CLI run in this process or in a fresh one. One home, so a test says only what it varies."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from gpt2kit.model import GPT, GPTConfig
from gpt2kit.train_config import TrainConfig


def tiny_model(vocab_size: int, seed: int = 0, **shape) -> GPT:
    """A seeded GPT in eval mode: 2 layers of width 32 and a 64-token context unless `shape` says otherwise."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, **({"n_positions": 64, "n_layer": 2, "n_head": 2, "n_embd": 32} | shape))
    return GPT(config).eval()


class PacedModel(torch.nn.Module):
    """A GPT whose every forward pass also sleeps: requests wait for the batch long enough to count, and a stream
    is visible as it happens."""

    def __init__(self, model: GPT, delay: float):
        super().__init__()
        self.inner, self.delay, self.config, self.wte = model, delay, model.config, model.wte
        self.new_kv_cache = model.new_kv_cache

    def forward(self, idx, **kwargs):
        time.sleep(self.delay)
        return self.inner(idx, **kwargs)


def hf_reference(vocab_size: int = 50257, seed: int = 0, **overrides):
    """A transformers GPT2LMHeadModel with non-zero biases and LayerNorm parameters, so parity covers them."""
    import transformers

    torch.manual_seed(seed)
    values = dict(vocab_size=vocab_size, n_positions=64, n_embd=48, n_layer=3, n_head=4) | overrides
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**values)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def saved_model(directory: Path, tokenizer, seed: int = 0, **shape) -> Path:
    """`tiny_model` for `tokenizer`, saved in the HF layout at `directory`."""
    from gpt2kit.checkpoint import save

    return save(tiny_model(tokenizer.vocab_size, seed, **shape), tokenizer, directory)


def small_train_config(data: Path, out: Path, **fields) -> TrainConfig:
    """A run of a cpu-25k model over 16-token windows, 4 steps, a checkpoint every 2, one thread on the CPU, in fp32
    (tolerances against transformers assume it; bf16 tests ask for it, or for `auto`, themselves)."""
    config = TrainConfig(data=str(data), out=str(out), preset="cpu-25k", context_length=16, max_steps=4,
                         batch_tokens=64, micro_batch_size=4, log_interval=1, eval_interval=0,
                         checkpoint_interval=2, keep_checkpoints=3, device="cpu", dtype="float32", progress=False,
                         num_threads=1)  # fmt: skip
    for name, value in fields.items():
        setattr(config, name, value)
    return config


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_cli_in_process(capsys, monkeypatch, *args, stdin: str | None = None) -> CliResult:
    """The CLI in this process (a subprocess per call would spend most of the test importing torch)."""
    from gpt2kit.cli import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)


def run_cli_process(*args, stdin: str | None = None) -> CliResult:
    """The CLI as a user runs it, in a fresh process: its exit code and output, whatever happens inside."""
    done = subprocess.run(
        [sys.executable, "-m", "gpt2kit", *map(str, args)], input=stdin, capture_output=True, text=True
    )
    return CliResult(done.returncode, done.stdout, done.stderr)
