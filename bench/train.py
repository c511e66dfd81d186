"""Training step throughput: gpt2kit vs transformers' GPT2LMHeadModel in fp32 and bf16, and llm.c's C trainer.

A step is forward + backward + fused AdamW on random token ids. Each library runs in a fresh process per round,
rounds interleaved, timing fp32 and bf16 autocast steps alternately (one model and optimizer for both: bf16 is
autocast over fp32 weights, as in training); tokens/s is the median step, a ratio the ratio of medians.
transformers computes its loss on T-1 positions (it shifts the labels), gpt2kit on T. gpt2kit runs with the
allocator setting `gpt2kit train` applies on CPU (gpt2kit.device.reuse_freed_cpu_memory); transformers runs as
shipped, and once more with that setting (`transformers+pages`), so the table shows what the setting is worth alone.
Peak RSS is each process's own high-water mark over both dtypes.

CPU: gpt2 (124M) at context 1024, one window a step (issue 28's target), and cpu-25m at context 256 batch 8. `auto`
is the dtype `gpt2kit train` picks here (bf16 where the CPU computes it natively: AVX-512 BF16 or AMX). MFU is
against the measured matmul peak of this CPU in the column's dtype (gpt2kit.mfu, cached; re-measured here, the
cache keeping the best figure).

llm.c (--llmc DIR, an llm.c source tree, e.g. `git archive` of karpathy/llm.c; else the one in
~/.cache/gpt2kit-bench/llm.c): `make train_gpt2` (gcc -Ofast -march=native, OpenMP) is built there, outside
this repository, and runs at its own defaults (B=4, T=64, fp32, the thread count of this run) in a working
directory holding the preset's random weights written by gpt2kit's llm.c writer (gpt2_124M.bin) and random tokens
in llm.c's data format. Its step times come from its own log (step 0 is its warm-up). Without a source tree or a
C compiler the peer is skipped with a note.

CUDA (--device cuda): gpt2 at context 1024, bf16 autocast, torch.compile for both, batch 16 by default; MFU
against the GPU's published bf16 peak. --compile compiles on CPU too (each gpt2kit block; transformers whole).

Findings on this machine (AMD EPYC Zen 5, 2 cores, AVX-512 BF16; gpt2 124M, context 1024, one window a step):
- bf16 matmul peak 2.8x fp32's (2048x2048: 394 against 142 GFLOP/s in the same run; 4.1x on a quieter day).
- Page faults were the largest loss in bf16. glibc serves blocks over 32 MB with fresh mmaps and unmaps them on
  free, so each step faulted in its logit chunks, the casts of the output layer and the 154 MB embedding gradient
  afresh (zeroing that gradient: 254 ms against 8 ms reused; in all ~1.3 s of a 4.5 s bf16 step). With the heap
  kept (mallopt: no mmap, no trim) a bf16 step went from ~230 to ~310 tokens/s; fp32 gained little (~150-160).
- Autocast coverage: after that, a bf16 step is matmuls at the bf16 peak (~1.9 s of blocks and output layer),
  CPU flash attention (0.6 s forward + backward, ~90 GFLOP/s: its 64-wide heads are far from the matmul peak;
  the math backend was slower, 248 against 306 tokens/s), fused AdamW (63 ms), and casts and elementwise work
  (~0.3 s). The fused output loss runs its three matmuls in bf16 with the softmax in fp32.
- torch.compile of each block: +6% in bf16 (323 against 306 tokens/s) after a ~15 s first step; not the default.
- transformers with bf16 autocast lands at the same speed (its head builds full logits, but it faults fewer pages):
  gpt2kit's bf16 lead over transformers bf16 is 1.0-1.11x here, short of issue 28's 1.3x. Both run their matmuls
  at the bf16 peak and attention through the same SDPA kernel. In the last run gpt2kit's bf16 step took 3.1 s and
  transformers' 3.5 s, so 1.3x needs 2.7 s. The step's matmuls (~820 GFLOP: 6 x 124M x 1024, plus causal
  attention's) take ~2.0 s at the measured 394-416 GFLOP/s; attention at that peak instead of ~90 GFLOP/s would
  save ~0.45 s (to ~1.29x). So 1.3x needs an attention kernel (forward and backward) at the matmul peak, and a
  little more besides.

Usage: python bench/train.py [--device cpu|cuda] [--cases gpt2,cpu-25m] [--steps 5] [--llmc DIR] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets GPT2KIT_GPT2_VOCAB for the shared data)

CPU_CASES = {"gpt2": (1024, 1), "cpu-25m": (256, 8)}  # preset: (context, batch)
QUICK_CASES = {"cpu-1m": (64, 4)}  # --quick: proves the script end to end in seconds
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2kit-bench"
LLMC_B, LLMC_T = 4, 64  # llm.c train_gpt2.c's own batch and sequence length
LLMC_STEP = re.compile(r"step (\d+): train loss ([-\d.naif]+) \(took ([\d.]+) ms\)")


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


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def make_step(name: str, model, optimizer, batch: torch.Tensor, targets: torch.Tensor, device, dtype):
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


def case_dtypes(device: torch.device) -> tuple[torch.dtype, list[torch.dtype]]:
    """The dtype `auto` picks here, and the dtypes to time: fp32 and bf16 on CPU, the auto one on CUDA."""
    from gpt2kit.device import select_dtype

    auto, _ = select_dtype("auto", device)
    return auto, [torch.float32, torch.bfloat16] if device.type == "cpu" else [auto]


def prepare_case(preset, context, batch_size, device, only, dtypes, compile=False):
    """One library's model (compiled on CUDA or when asked), a random batch, and a step function per dtype."""
    from gpt2kit.train import build_optimizer
    from gpt2kit.train_config import OptimConfig

    config, ours, theirs = build_models(preset, context, device, only)
    model = ours if only == "gpt2kit" else theirs
    if device.type == "cuda" or compile:
        from gpt2kit.parallelize import DistEnv, parallelize

        model = parallelize(model, DistEnv(), device, compile=True) if only == "gpt2kit" else torch.compile(model)
    tokens = torch.randint(0, config.vocab_size, (batch_size, context + 1), device=device)
    batch, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    # Both get the same fused AdamW with decay on matrices: the comparison is the model, not the optimizer.
    optimizer = build_optimizer(model, OptimConfig(), device)
    return {dtype: make_step(only, model, optimizer, batch, targets, device, dtype) for dtype in dtypes}


# The columns, each timed in a process of its own: (library, whether gpt2kit's allocator setting is on). gpt2kit
# trains with it (`gpt2kit train` sets it); transformers runs as shipped, and once more with the setting, so the
# table shows what the setting alone is worth.
ENGINES = (("gpt2kit", True), ("transformers", False), ("transformers", True))


def engine_label(name: str, reuse_pages: bool) -> str:
    return f"{name}+pages" if name == "transformers" and reuse_pages else name


def child_times(preset, context, batch_size, device_name, name, reuse_pages, dtypes, steps, warmup, compile, threads):
    """In a fresh process: one library's step times per dtype (dtypes alternate step by step), and its peak RSS."""
    from gpt2kit.device import reuse_freed_cpu_memory

    torch.set_num_threads(threads)
    if reuse_pages:
        reuse_freed_cpu_memory()
    device = torch.device(device_name)
    step_of = prepare_case(preset, context, batch_size, device, name, dtypes, compile)
    for step in step_of.values():  # warm-up (and compilation)
        for _ in range(warmup):
            step()
    times = {dtype: [] for dtype in dtypes}
    for _ in range(steps):
        for dtype, step in step_of.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[dtype].append(time.perf_counter() - start)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # VmHWM is this process's own high-water mark (ru_maxrss would carry the parent's over exec)
        status = Path("/proc/self/status").read_text().splitlines()
        memory = next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")), float("nan"))
    return {str(dtype): seconds for dtype, seconds in times.items()}, memory


def run_case(preset: str, context: int, batch_size: int, args, device: torch.device) -> dict:
    """Time every (library, dtype); print the comparison and return it (tokens/s, MFU, ratios).

    Each library runs in a fresh process per round, rounds interleaved (gpt2kit, transformers, ... again), so no
    library's memory, threads or allocator state touches another's. `tokens_per_s` and `mfu` are for the auto
    dtype; `columns` has them all.
    """
    import multiprocessing

    from gpt2kit.mfu import cpu_peak_flops, flops_per_token, gpu_peak_flops
    from gpt2kit.model import preset_config

    auto, dtypes = case_dtypes(device)
    config = preset_config(preset, n_positions=max(context, 1024 if preset == "gpt2" else context))
    times: dict[tuple, list[float]] = {}
    memory: dict[str, float] = {}
    context_of = multiprocessing.get_context("spawn")
    for _ in range(args.rounds):
        for name, reuse_pages in ENGINES if device.type == "cpu" else ENGINES[:2]:
            label = engine_label(name, reuse_pages)
            with context_of.Pool(1, maxtasksperchild=1) as pool:
                got, peak = pool.apply(
                    child_times,
                    (preset, context, batch_size, str(device), name, reuse_pages, dtypes, args.steps, args.warmup,
                     getattr(args, "compile", False), torch.get_num_threads()),
                )  # fmt: skip
            for dtype in dtypes:
                times.setdefault((label, dtype), []).extend(got[str(dtype)])
            memory[label] = max(memory.get(label, 0.0), peak)
    n_tokens = batch_size * context
    per_token = flops_per_token(config, context)
    peaks = {}
    for dtype in dtypes:
        # Re-measured here (the cache keeps the best figure seen), as the CPU's load changes over time.
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        peaks[dtype] = gpu_peak_flops(name, dtype) if device.type == "cuda" else cpu_peak_flops(dtype, refresh=True)
    label = f"{preset} context {context} batch {batch_size} ({device.type}, auto = {DTYPE_NAMES[auto]}"
    label += f", {torch.get_num_threads()} threads)" if device.type == "cpu" else ", compiled)"
    print(label)
    columns, median = {}, {}
    for (name, dtype), seconds in times.items():
        median[name, dtype] = statistics.median(seconds)
        rate = n_tokens / median[name, dtype]
        mfu = rate * per_token / peaks[dtype] if peaks[dtype] else None
        column = f"{name} {DTYPE_NAMES[dtype]}"
        columns[column] = {"tokens_per_s": rate, "mfu": mfu}
        shown = f"{mfu:6.1%}" if mfu is not None else "   n/a"
        print(f"  {column:24s} {rate:9.0f} tokens/s (best {n_tokens / min(seconds):7.0f})  MFU {shown}")
    ratios = {}
    for dtype in dtypes:
        for peer in ("transformers", "transformers+pages"):
            if (peer, dtype) not in median:
                continue
            key = f"gpt2kit / {peer}, {DTYPE_NAMES[dtype]}"
            ratios[key] = median[peer, dtype] / median["gpt2kit", dtype]
    if torch.float32 in dtypes and auto != torch.float32:
        ratios["gpt2kit auto / gpt2kit fp32"] = median["gpt2kit", torch.float32] / median["gpt2kit", auto]
        ratios["gpt2kit auto / transformers fp32"] = median["transformers", torch.float32] / median["gpt2kit", auto]
    for what, ratio in ratios.items():
        print(f"  ratio {what}: {ratio:.2f}x tokens/s (median step times)")
    unit = "MB peak RSS" if device.type == "cpu" else "MB peak CUDA memory"
    print("  memory: " + ", ".join(f"{name} {mb:.0f}" for name, mb in memory.items()) + f" ({unit}, both dtypes)")
    for dtype, peak in peaks.items():
        if peak:
            kind = (
                f"measured {DTYPE_NAMES[dtype]} matmul" if device.type == "cpu" else f"published {DTYPE_NAMES[dtype]}"
            )
            print(f"  peak: {peak / 1e9:.0f} GFLOP/s ({kind})")
    auto_name = DTYPE_NAMES[auto]
    return {
        "case": label,
        "dtype": auto_name,
        "columns": columns,
        "tokens_per_s": {name: columns[f"{name} {auto_name}"]["tokens_per_s"] for name in ("gpt2kit", "transformers")},
        "mfu": {name: columns[f"{name} {auto_name}"]["mfu"] for name in ("gpt2kit", "transformers")}
        if peaks[auto]
        else None,
        "ratio_gpt2kit_over_transformers": ratios[f"gpt2kit / transformers, {auto_name}"],
        "ratios": ratios,
        "memory_mb": memory,
    }


# -- llm.c's C trainer as a peer ---------------------------------------------------------------------


def build_llmc(source: Path | None) -> tuple[Path | None, str]:
    """llm.c's train_gpt2 built under the cache (copied there from `source` when given); (binary, note)."""
    build = CACHE / "llm.c"
    if source is not None:
        if not (source / "train_gpt2.c").is_file():
            return None, f"{source}: not an llm.c source tree (no train_gpt2.c)"
        if source.resolve() != build.resolve():
            shutil.copytree(source, build, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "dev"))
    if not (build / "train_gpt2.c").is_file():
        return None, f"no llm.c source tree (give --llmc DIR, or put one in {build})"
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        return None, "no make or C compiler on this machine"
    made = subprocess.run(["make", "train_gpt2"], cwd=build, capture_output=True, text=True)
    binary = build / "train_gpt2"
    if made.returncode != 0 or not binary.is_file():
        return None, f"make train_gpt2 failed in {build}: {(made.stderr or made.stdout).strip().splitlines()[-1:]}"
    return binary, f"built in {build}"


def llmc_token_file(path: Path, tokens) -> None:
    """llm.c's token format (dev/data/data_common.py): 256 int32 (magic 20240520, version 1, count), uint16 ids."""
    import numpy as np

    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, len(tokens)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def prepare_llmc_run(preset: str, steps: int) -> tuple[Path, object]:
    """A working directory with the fixed paths train_gpt2 reads: the model and tinyshakespeare's two splits."""
    import numpy as np

    from gpt2kit.formats import llmc
    from gpt2kit.model import GPT, preset_config

    config = preset_config(preset)
    work = CACHE / "llmc-run" / preset
    model_file = work / "gpt2_124M.bin"  # the name train_gpt2 opens, whatever the preset
    if not model_file.is_file():
        torch.manual_seed(0)
        work.mkdir(parents=True, exist_ok=True)
        llmc.write(GPT(config), model_file, config.vocab_size)
    generator = np.random.default_rng(0)
    window = LLMC_B * LLMC_T
    for split, batches in (("train", steps + 8), ("val", 6)):
        tokens = generator.integers(0, config.vocab_size, batches * window + 1)
        llmc_token_file(work / "dev" / "data" / "tinyshakespeare" / f"tiny_shakespeare_{split}.bin", tokens)
    return work, config


def run_llmc(preset: str, args) -> dict | None:
    """llm.c's train_gpt2 at its defaults on `preset`'s shape: tokens/s from its own step times, and MFU."""
    from gpt2kit.mfu import cpu_peak_flops, flops_per_token

    binary, note = build_llmc(Path(args.llmc) if args.llmc else None)
    if binary is None:
        print(f"llm.c peer skipped: {note}")
        return None
    work, config = prepare_llmc_run(preset, args.steps + 1)
    threads = torch.get_num_threads()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen([str(binary)], cwd=work, env=env, stdout=subprocess.PIPE, text=True)
    times = []
    try:
        for line in process.stdout:
            match = LLMC_STEP.match(line.strip())
            if match and int(match.group(1)) > 0:  # step 0 allocates the activations and gradients
                times.append(float(match.group(3)) / 1000)
                if len(times) == args.steps:
                    break
    finally:
        process.kill()
        process.wait()
    if not times:
        print(f"llm.c peer failed: no step lines from {binary} in {work} (exit {process.returncode})")
        return None
    rate = LLMC_B * LLMC_T / statistics.median(times)
    mfu = rate * flops_per_token(config, LLMC_T) / cpu_peak_flops(torch.float32)
    print(f"llm.c train_gpt2 {preset} B={LLMC_B} T={LLMC_T} (cpu, fp32, {threads} threads; {note})")
    print(f"  llm.c             {rate:9.0f} tokens/s (best {LLMC_B * LLMC_T / min(times):7.0f})  MFU {mfu:6.1%}")
    return {"tokens_per_s": rate, "mfu": mfu, "steps": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cases", default=None, help="comma-separated presets (cpu: gpt2,cpu-25m; cuda: gpt2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per column (alternating)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    parser.add_argument("--context", type=int, default=None, help="override the context length")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per library, interleaved")
    parser.add_argument("--compile", action="store_true", help="torch.compile on CPU too")
    parser.add_argument("--llmc", default=None, help="an llm.c source tree to build the C peer from")
    parser.add_argument("--no-llmc", dest="with_llmc", action="store_false", help="skip the llm.c peer")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 steps, no RSS: proves the script runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        default_cases = {"gpt2": (1024, 16)}
    elif args.quick:
        default_cases = QUICK_CASES
        args.steps, args.warmup, args.rounds = min(args.steps, 2), 1, 1
    else:
        default_cases = CPU_CASES
    names = args.cases.split(",") if args.cases else list(default_cases)
    results = {}
    for name in names:
        context, batch = default_cases.get(name, CPU_CASES.get(name, (256, 8)))
        results[name] = run_case(name, args.context or context, args.batch or batch, args, device)
    if device.type == "cpu" and args.with_llmc:
        llmc_preset = names[0]
        peer = run_llmc(llmc_preset, args)
        if peer is not None:
            ours = results[llmc_preset]
            print(f"  ratio gpt2kit auto ({ours['case']}) / llm.c at its defaults: "
                  f"{ours['tokens_per_s']['gpt2kit'] / peer['tokens_per_s']:.2f}x tokens/s")  # fmt: skip


if __name__ == "__main__":
    main()
