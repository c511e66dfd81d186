"""Training speed of the CPU presets in fp32 and bf16 autocast: the README's preset table.

Each preset trains at context 256, 4,096 tokens a step (batch 16), on random token ids, with an 8,192-token
vocabulary (a BPE of your own) and with GPT-2's 50,257, as `gpt2kit train` runs it on a CPU: fused AdamW, the
allocator setting `gpt2kit train` applies, the fused output loss. Every (preset, vocabulary) runs in a fresh
process, fp32 and bf16 steps alternating, and reports the median step. The ratio column is bf16 over fp32 (the
speed-up of `dtype = "auto"` on a CPU with native bf16).

Usage: python bench/presets.py [--presets cpu-25k,cpu-100k,cpu-1m,cpu-6m,cpu-25m] [--steps 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401

PRESETS = ("cpu-25k", "cpu-100k", "cpu-1m", "cpu-6m", "cpu-25m")
CONTEXT, BATCH = 256, 16
VOCABS = {"8k BPE": 8192, "GPT-2 vocab": 50257}


def time_preset(preset: str, vocab_size: int, steps: int, threads: int) -> dict[str, float]:
    """In a fresh process: median tokens/s of one preset in fp32 and bf16 autocast."""
    from train import make_step

    from gpt2kit.device import reuse_freed_cpu_memory
    from gpt2kit.model import GPT, preset_config
    from gpt2kit.train import build_optimizer
    from gpt2kit.train_config import OptimConfig

    torch.set_num_threads(threads)
    reuse_freed_cpu_memory()
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = GPT(preset_config(preset, vocab_size=vocab_size, n_positions=CONTEXT)).train()
    optimizer = build_optimizer(model, OptimConfig(), device)
    tokens = torch.randint(0, vocab_size, (BATCH, CONTEXT + 1))
    batch, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    step_of = {
        dtype: make_step("gpt2kit", model, optimizer, batch, targets, device, dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }
    times = {dtype: [] for dtype in step_of}
    for round_ in range(steps + 1):
        for dtype, step in step_of.items():
            start = time.perf_counter()
            step()
            if round_:  # the first round warms up
                times[dtype].append(time.perf_counter() - start)
    return {str(dtype): BATCH * CONTEXT / statistics.median(seconds) for dtype, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"context {CONTEXT}, {BATCH * CONTEXT} tokens a step, {threads} threads; tokens/s (median step)")
    print(f"{'preset':10s} {'vocabulary':12s} {'fp32':>8s} {'bf16':>8s} {'bf16/fp32':>9s}")
    spawn = multiprocessing.get_context("spawn")
    for preset in args.presets.split(","):
        for label, vocab_size in VOCABS.items():
            with spawn.Pool(1, maxtasksperchild=1) as pool:
                rates = pool.apply(time_preset, (preset, vocab_size, args.steps, threads))
            fp32, bf16 = rates[str(torch.float32)], rates[str(torch.bfloat16)]
            print(f"{preset:10s} {label:12s} {fp32:8.0f} {bf16:8.0f} {bf16 / fp32:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
