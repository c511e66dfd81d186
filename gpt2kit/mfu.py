"""Model FLOPs utilisation: training FLOPs per token, and the peak FLOP/s of the device.

GPUs use a table of published dense peaks (bf16/fp16 tensor cores, and TF32
for fp32 training). CPUs have no such table: the peak is a matmul in the training
dtype (bf16 runs ~4x faster than fp32 on AVX-512 BF16), measured once per CPU
model, thread count, dtype and torch version, and cached on disk.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from gpt2kit.io import atomic_write_text, user_cache_dir
from gpt2kit.model import GPTConfig

# Dense peak FLOP/s per GPU: (bf16/fp16 tensor cores, tf32 tensor cores). Matched by substring of the name.
GPU_PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),
    "H100 NVL": (835e12, 418e12),
    "H100 PCIe": (756e12, 378e12),
    "H100": (989e12, 494e12),  # SXM
    "GH200": (989e12, 494e12),
    "B200": (2250e12, 1100e12),
    "A100": (312e12, 156e12),
    "A800": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "L4": (121e12, 60e12),
    "A10G": (70e12, 35e12),
    "A10": (125e12, 62.5e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),  # no TF32: fp32 runs on CUDA cores
    "T4": (65e12, 8.1e12),
}


def flops_per_token(config: GPTConfig, context: int) -> float:
    """Forward + backward FLOPs per trained token: 6 per weight used in a matmul, plus attention scores.

    The tied output layer counts (it is a matmul); the position table does not.
    """
    d = config.n_embd
    per_layer = 4 * d * d + 2 * d * config.mlp_width  # qkv, attention output, MLP in and out
    matmul_weights = config.n_layer * per_layer + config.vocab_size * d
    return 6.0 * matmul_weights + 12.0 * config.n_layer * d * context


def gpu_peak_flops(name: str, dtype: torch.dtype) -> float | None:
    for key, (half, tf32) in GPU_PEAK_FLOPS.items():
        if key in name:
            return half if dtype in (torch.bfloat16, torch.float16) else tf32
    return None


def _cache_file() -> Path:
    return user_cache_dir() / "cpu_peak_flops.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu_peak_flops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 6) -> float:
    """The best `dtype` matmul rate over `repeats` runs with torch's current thread count.

    The matrices start small and grow to `size` while one product takes under 50 ms: a dtype the CPU only
    emulates (fp16 on most CPUs, ~100x slower) is measured in seconds, not minutes.
    """
    side = 256
    generator = torch.Generator().manual_seed(0)  # never the global RNG: a mid-run measurement must not move it
    while True:
        a = torch.randn(side, side, dtype=dtype, generator=generator)
        b = torch.randn(side, side, dtype=dtype, generator=generator)
        a @ b  # warm up the BLAS
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        if side >= size or best > 0.05:
            return 2.0 * side**3 / best
        side *= 2


def _cache_key(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return f"{_cpu_name()} | threads={torch.get_num_threads()} | dtype={name} | torch={torch.__version__}"


def cpu_peak_flops(dtype: torch.dtype = torch.float32, refresh: bool = False) -> float:
    """The measured CPU matmul peak in `dtype`, cached per CPU model, thread count, dtype and torch version.

    `refresh=True` measures again and keeps the higher of the two figures: a
    measurement taken while other work shares the CPU reads low, never high.
    """
    key = _cache_key(dtype)
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    cached = cache.get(key) if isinstance(cache.get(key), (int, float)) else None
    if cached is not None and not refresh:
        return float(cached)
    peak = max(measure_cpu_peak_flops(dtype), cached or 0.0)
    cache[key] = peak
    try:
        atomic_write_text(path, json.dumps(cache, indent=2))
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return peak


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device for training in `dtype` (the autocast dtype), or None when unknown."""
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peak_flops(dtype)
    return None


class Utilisation:
    """MFU of one device training in `dtype`: achieved model FLOP/s over the device's peak.

    A CPU peak measured while other work shared the cores reads low; a training rate above it proves that,
    so the peak is measured again (the cache keeps the higher figure) and, should the rate still exceed it,
    raised to the rate itself: MFU never passes 1.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.peak = peak_flops(device, dtype)
        self._remeasured = False

    def __call__(self, flops_per_s: float) -> float | None:
        if not self.peak:
            return None
        if flops_per_s > self.peak and self.device.type == "cpu":
            if not self._remeasured:
                self._remeasured = True
                self.peak = cpu_peak_flops(self.dtype, refresh=True)
            self.peak = max(self.peak, flops_per_s)
        return flops_per_s / self.peak
