"""Training step throughput: gpt2kit vs transformers' GPT2LMHeadModel, identical shapes, in one process.

A step is forward + backward + fused AdamW on random token ids. The two models
are timed alternately (so both see the same background load) and the fastest
step of each counts. transformers computes its loss on T-1 positions (it shifts
the labels), gpt2kit on T; the difference is under 0.4% of the work at T=256.

CPU (fp32): the cpu-25m preset at context 256, batch 8, and gpt2 (124M) at
context 1024, batch 1. MFU is against the measured fp32 matmul peak of this CPU
(gpt2kit.mfu, cached). Peak RSS is the process's high-water mark during each
step, reset before it (both models stay resident, so compare the step's growth).

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


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def build_models(preset: str, context: int, device: torch.device):
    import transformers

    from gpt2kit.model import GPT, preset_config

    config = preset_config(preset, n_positions=max(context, 1024 if preset == "gpt2" else context))
    torch.manual_seed(0)
    ours = GPT(config).to(device)
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
    theirs = transformers.GPT2LMHeadModel(hf_config).to(device)
    theirs.train()
    return config, ours, theirs


def make_step(name: str, model, batch: torch.Tensor, targets: torch.Tensor, device: torch.device, dtype):
    from gpt2kit.config import OptimConfig
    from gpt2kit.train import build_optimizer

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


def run_case(preset: str, context: int, batch_size: int, args, device: torch.device) -> None:
    from gpt2kit.mfu import cpu_peak_flops, flops_per_token, gpu_peak_flops

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config, ours, theirs = build_models(preset, context, device)
    if device.type == "cuda":
        from gpt2kit.parallelize import DistEnv, parallelize

        ours = parallelize(ours, DistEnv(), device, compile=True)
        theirs = torch.compile(theirs)
    tokens = torch.randint(0, config.vocab_size, (batch_size, context + 1), device=device)
    batch, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    steps = {
        "gpt2kit": make_step("gpt2kit", ours, batch, targets, device, dtype),
        "transformers": make_step("transformers", theirs, batch, targets, device, dtype),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float] = {}
    growth: dict[str, float] = {}
    for step in steps.values():  # warm-up (and compilation on CUDA)
        for _ in range(args.warmup):
            step()
    for _ in range(args.steps):
        for name, step in steps.items():
            before = rss_mb("VmRSS")
            tracked = reset_peak_rss()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
            elif tracked and before is not None:
                peak = rss_mb("VmHWM")
                peaks[name] = max(peaks.get(name, 0.0), peak)
                growth[name] = max(growth.get(name, 0.0), peak - before)
    n_tokens = batch_size * context
    # Re-measured here (the cache keeps the best figure seen), as the CPU's load changes over time.
    peak = gpu_peak_flops(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else cpu_peak_flops(True)
    per_token = flops_per_token(config, context)
    threads = torch.get_num_threads()
    label = f"{preset} context {context} batch {batch_size} ({device.type}, {str(dtype).removeprefix('torch.')}"
    label += f", {threads} threads)" if device.type == "cpu" else ", compiled)"
    print(label)
    rates = {}
    for name, seconds in times.items():
        rates[name] = n_tokens / min(seconds)
        mfu = f"{rates[name] * per_token / peak:6.1%}" if peak else "   n/a"
        memory = f"peak {'GPU mem' if device.type == 'cuda' else 'RSS'} {peaks.get(name, float('nan')):7.0f} MB"
        if growth:
            memory += f" (+{growth[name]:.0f} MB in the step)"
        print(
            f"  {name:12s} {rates[name]:9.0f} tokens/s (median {n_tokens / statistics.median(seconds):7.0f})  "
            f"MFU {mfu}  {memory}"
        )
    print(f"  ratio gpt2kit / transformers: {rates['gpt2kit'] / rates['transformers']:.2f}x tokens/s")
    if peak:
        print(f"  peak: {peak / 1e9:.0f} GFLOP/s ({'measured fp32 matmul' if device.type == 'cpu' else 'published'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cases", default=None, help="comma-separated presets (cpu: cpu-25m,gpt2; cuda: gpt2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (alternating)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    parser.add_argument("--context", type=int, default=None, help="override the context length")
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
