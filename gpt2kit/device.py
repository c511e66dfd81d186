"""The one device resolver (`auto` means CUDA when this machine has it, else the CPU), and the training dtype."""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from gpt2kit.errors import GPT2KitError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def is_device_spec(spec: str) -> bool:
    """Whether `spec` names a device kind gpt2kit runs on (whether this machine has it is `resolve_device`'s)."""
    return spec in ("auto", "cpu", "mps", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit())


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """`spec` as a torch device; `auto` and a bare `cuda` take this process's GPU (`local_rank` under torchrun)."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise GPT2KitError(f"device {spec!r}: expected {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GPT2KitError(f"device {spec!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise GPT2KitError(f"device {spec!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise GPT2KitError(f"device {spec!r}: expected {DEVICE_CHOICES}")
    return device


# x86 CPU flags for bf16 arithmetic in hardware: oneDNN runs bf16 matmuls on them (AVX-512 BF16 dot products,
# AMX tiles). Without them torch emulates bf16 and autocast only adds conversions.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags the CPU reports (Linux); empty where there is no /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16_flag() -> str | None:
    """The flag by which this CPU computes bf16 natively, or None."""
    flags = cpu_flags()
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def select_dtype(spec: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The autocast dtype for training in `spec` (`auto` or a dtype name) on `device`, and why it was chosen.

    `auto`: bf16 on CUDA (fp16 where bf16 is missing); on a CPU, bf16 when it computes bf16 natively
    (its matmuls run ~4x faster than fp32 on AVX-512 BF16), else fp32.
    """
    if spec != "auto":
        return DTYPES[spec], "set by the dtype setting"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, "auto, this GPU computes bf16"
        return torch.float16, "auto, this GPU has no bf16, fp16 with a grad scaler"
    if device.type == "cpu":
        flag = native_bf16_flag()
        if flag is not None:
            return torch.bfloat16, f"auto, this CPU computes bf16 natively ({flag})"
        return torch.float32, f"auto, this CPU has no native bf16 (none of {', '.join(NATIVE_BF16_FLAGS)})"
    return torch.float32, f"auto, fp32 on {device.type}"


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def reuse_freed_cpu_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of giving it back to the OS.

    glibc serves every block over 32 MB (logits, the embedding's gradient, casts of the output layer) with a fresh
    mmap and unmaps it on free, so each training step faults its large tensors in again, page by page: on this
    project's 2-core VM, zeroing a fresh 154 MB gradient took 254 ms against 8 ms for a reused one, and the faults
    cost gpt2 124M (context 1024, bf16) 30% of its step. Served from the heap and never trimmed, the memory of one
    step is reused by the next, as a caching allocator would, where the heap's layout lets a freed block fit the next
    request (a 160 MB block was reused in 8 of 10 processes). Process-wide; for training processes. Returns whether
    it applied (glibc only).
    """
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


HUGE_PAGE = 2 << 20


def huge_page_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a CPU tensor in memory Linux may back with 2 MB pages (private anonymous, `MADV_HUGEPAGE`, aligned
    to 2 MB); the tensor itself where that cannot be had (small, not Linux, THP off).

    Streaming weights, 2 threads here read 31 GB/s from huge pages against 23 from 4 KB ones (the TLB misses):
    decoding reads every weight once a token, and llama.cpp's memory-mapped weights got this for it.
    """
    import mmap

    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return tensor
    try:
        buffer = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        return tensor
    start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    copy = torch.frombuffer(buffer, dtype=tensor.dtype, count=tensor.numel(), offset=(-start) % HUGE_PAGE)
    return copy.view(tensor.shape).copy_(tensor)
