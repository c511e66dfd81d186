"""Training step throughput: gpt2kit vs transformers' GPT2LMHeadModel, identical shapes, in one process.

A step is forward + backward + fused AdamW on random token ids. The two models
are timed alternately (so both see the same background load): tokens/s is the median
step, the ratio the median of the per-round ratios. transformers computes its loss on T-1 positions (it shifts
the labels), gpt2kit on T; the difference is under 0.4% of the work at T=256.

CPU (fp32): the cpu-25m preset at context 256, batch 8, and gpt2 (124M) at
context 1024, batch 1. MFU is against the measured fp32 matmul peak of this CPU
(gpt2kit.mfu, cached). Peak RSS comes from a separate child process per model
(build, warm-up step, one step), so neither model's memory counts for the other.

CUDA (--device cuda): gpt2 at context 1024, bf16 autocast, torch.compile for
both, batch 16 by default; MFU against the GPU's published bf16 peak.

Usage: python bench/train.py [--device cpu|cuda] [--cases cpu-25m,gpt2] [--steps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets GPT2KIT_GPT2_VOCAB for the shared data)

CPU_CASES = {"cpu-25m": (256, 8), "gpt2": (1024, 1)}  # preset: (context, batch)


def build_models(preset: str, context: int, device: torch.device, only: str | None = None):
    import transformers

    from gpt2kit.model import GPT, preset_config

    config = preset_config(preset, n_positions=max(context, 1024 if preset == "gpt2" else context))
    torch.manual_seed(0)
    ours = GPT(config).to(device) if only in (None, "gpt2kit") else None
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
    )
    theirs = transformers.GPT2LMHeadModel(hf_config).to(device).train() if only in (None, "transformers") else None
    return config, ours, theirs


def make_step(name: str, model, batch: torch.Tensor, targets: torch.Tensor, device: torch.device, dtype):
    from gpt2kit.train import build_optimizer
    from gpt2kit.train_config import OptimConfig

    # Both get the same fused AdamW with decay on matrices: the comparison is the model, not the optimizer.
    optimizer = build_optimizer(model, OptimConfig(), device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step() -> float:
        with autocast:
            if name == "gpt2kit":
                loss = model(batch, targets=targets)
            else:
                loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def prepare_case(preset: str, context: int, batch_size: int, device: torch.device, only: str | None = None):
    """The models (compiled on CUDA), a random batch, and a step function per model."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config, ours, theirs = build_models(preset, context, device, only)
    if device.type == "cuda":
        from gpt2kit.parallelize import DistEnv, parallelize

        ours = parallelize(ours, DistEnv(), device, compile=True) if ours is not None else None
        theirs = torch.compile(theirs) if theirs is not None else None
    tokens = torch.randint(0, config.vocab_size, (batch_size, context + 1), device=device)
    batch, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    steps = {}
    for name, model in (("gpt2kit", ours), ("transformers", theirs)):
        if model is not None:
            steps[name] = make_step(name, model, batch, targets, device, dtype)
    return config, dtype, steps


def child_peak_rss(preset: str, context: int, batch_size: int, name: str) -> float:
    """In a fresh process: build one model, run a warm-up step and a step; the peak RSS in MB.

    VmHWM belongs to this process's own address space (ru_maxrss would carry the parent's over exec).
    """
    _, _, steps = prepare_case(preset, context, batch_size, torch.device("cpu"), only=name)
    steps[name]()
    steps[name]()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(preset: str, context: int, batch_size: int, args, device: torch.device) -> dict:
    """Time both models alternately; print the comparison and return it (tokens/s, MFU, ratio)."""
    from gpt2kit.mfu import cpu_peak_flops, flops_per_token, gpu_peak_flops

    config, dtype, steps = prepare_case(preset, context, batch_size, device)
    for step in steps.values():  # warm-up (and compilation on CUDA)
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    gpu_memory: dict[str, float] = {}
    for _ in range(args.steps):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                gpu_memory[name] = torch.cuda.max_memory_allocated(device) / 2**20
            times[name].append(time.perf_counter() - start)
    del steps
    memory = dict(gpu_memory)
    if device.type == "cpu" and args.rss:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            for name in times:
                memory[name] = pool.apply(child_peak_rss, (preset, context, batch_size, name))
    n_tokens = batch_size * context
    # Re-measured here (the cache keeps the best figure seen), as the CPU's load changes over time.
    peak = gpu_peak_flops(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else cpu_peak_flops(True)
    per_token = flops_per_token(config, context)
    label = f"{preset} context {context} batch {batch_size} ({device.type}, {str(dtype).removeprefix('torch.')}"
    label += f", {torch.get_num_threads()} threads)" if device.type == "cpu" else ", compiled)"
    print(label)
    rates = {}
    for name, seconds in times.items():
        rates[name] = n_tokens / statistics.median(seconds)
        mfu = f"{rates[name] * per_token / peak:6.1%}" if peak else "   n/a"
        kind = "peak GPU memory" if device.type == "cuda" else "peak RSS"
        used = f"  {kind} {memory[name]:7.0f} MB" if name in memory else ""
        print(f"  {name:12s} {rates[name]:9.0f} tokens/s (best {n_tokens / min(seconds):7.0f})  MFU {mfu}{used}")
    # Each round times both models back to back: the median of per-round ratios shrugs off load that
    # comes and goes between rounds.
    ratio = statistics.median(a / b for a, b in zip(times["transformers"], times["gpt2kit"], strict=True))
    print(f"  ratio gpt2kit / transformers: {ratio:.2f}x tokens/s", end="")
    if len(memory) == 2:
        print(f", {memory['gpt2kit'] / memory['transformers']:.2f}x memory")
    else:
        print()
    if peak:
        print(f"  peak: {peak / 1e9:.0f} GFLOP/s ({'measured fp32 matmul' if device.type == 'cpu' else 'published'})")
    return {
        "case": label,
        "tokens_per_s": rates,
        "mfu": {name: rate * per_token / peak for name, rate in rates.items()} if peak else None,
        "ratio_gpt2kit_over_transformers": ratio,
        "memory_mb": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cases", default=None, help="comma-separated presets (cpu: cpu-25m,gpt2; cuda: gpt2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (alternating)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    parser.add_argument("--context", type=int, default=None, help="override the context length")
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-RSS child processes")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        default_cases = {"gpt2": (1024, 16)}
    else:
        default_cases = CPU_CASES
    names = args.cases.split(",") if args.cases else list(default_cases)
    for name in names:
        context, batch = default_cases.get(name, CPU_CASES.get(name, (256, 8)))
        run_case(name, args.context or context, args.batch or batch, args, device)


if __name__ == "__main__":
    main()
