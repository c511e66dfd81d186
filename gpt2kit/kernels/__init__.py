"""gpt2kit's CPU decoding kernels (cpu_decode.c), compiled on first use and loaded with ctypes.

The C file is built with the system's C compiler (`$CC`, else cc) for this machine (`-march=native`) into the user
cache (`$GPT2KIT_CACHE_DIR`, else ~/.cache/gpt2kit), named by a hash of the source, the flags, the compiler and the
CPU, so a change to any of them builds afresh. One process compiles at a time (a file lock) and the library appears
under its name only when complete (an atomic rename). It links the OpenMP runtime PyTorch already loaded (both
name libgomp.so.1), so the kernels share PyTorch's thread pool and thread count.

`library()` is the loaded library, or None when it cannot be built (no compiler, not Linux); `unavailable()` then
says why in one line, and callers keep PyTorch's kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch  # before the kernels load: its OpenMP runtime must be the one they link to, so that they share threads
from filelock import FileLock

from gpt2kit.io import user_cache_dir

SOURCE = Path(__file__).with_name("cpu_decode.c")
# -ffast-math lets glibc's vector math (libmvec) take the activations' tanh and the softmax's exp, 16 at a time;
# the C code relies on no infinity or NaN. It is a compile flag only: linked with it, GCC adds crtfastmath, which
# turns on flush-to-zero for the whole process when the library loads.
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")
KIND_F32, KIND_INT8, KIND_INT4 = 0, 1, 2
# gpt2_top_k inserts into a sorted list: 16 rows of 50257 took 0.12 ms at k = 40 (torch.topk 0.86), 0.6 at 128
# (torch 1.1) and 1.9 at 256 (torch 1.6)
TOP_K_LIMIT = 128
ACTIVATIONS = {"gelu_tanh": 0, "gelu_erf": 1, "relu": 2}

_reason: str | None = None


class Linear(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int64),
        ("in_features", ctypes.c_int64),
        ("out_features", ctypes.c_int64),
        ("weight", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("offset", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("row_sums", ctypes.c_void_p),
    ]


class Layer(ctypes.Structure):
    _fields_ = [
        ("ln_1_weight", ctypes.c_void_p),
        ("ln_1_bias", ctypes.c_void_p),
        ("c_attn", Linear),
        ("attn_c_proj", Linear),
        ("ln_2_weight", ctypes.c_void_p),
        ("ln_2_bias", ctypes.c_void_p),
        ("c_fc", Linear),
        ("mlp_c_proj", Linear),
        ("attn_scale", ctypes.c_float),
    ]


class Model(ctypes.Structure):
    _fields_ = [
        ("n_layer", ctypes.c_int64),
        ("n_head", ctypes.c_int64),
        ("n_embd", ctypes.c_int64),
        ("mlp_width", ctypes.c_int64),
        ("activation", ctypes.c_int64),
        ("eps", ctypes.c_float),
        ("wte", ctypes.c_void_p),
        ("wpe", ctypes.c_void_p),
        ("ln_f_weight", ctypes.c_void_p),
        ("ln_f_bias", ctypes.c_void_p),
        ("head", Linear),
        ("layers", ctypes.POINTER(Layer)),
    ]


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _build(compiler: str, extra_flags: tuple[str, ...] = ()) -> Path:
    flags = FLAGS + extra_flags
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        "\0".join(
            [SOURCE.read_text(), " ".join(flags + LINK_FLAGS), version, platform.machine(), _cpu_flags()]
        ).encode()
    ).hexdigest()[:16]
    directory = user_cache_dir() / "kernels"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"cpu_decode-{key}.so"
    with FileLock(str(target) + ".lock", timeout=300):
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            built, objects = Path(tmp) / target.name, Path(tmp) / "cpu_decode.o"
            for command in (
                [compiler, *flags, "-c", str(SOURCE), "-o", str(objects)],
                [compiler, *LINK_FLAGS, str(objects), "-o", str(built), "-lmvec", "-lm"],
            ):
                done = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    first = (done.stderr.strip().splitlines() or ["no message"])[0]
                    raise RuntimeError(f"{Path(compiler).name} failed on {SOURCE.name}: {first}")
            os.replace(built, target)
    return target


def _cpu_flags() -> str:
    from gpt2kit.device import cpu_flags

    return " ".join(sorted(cpu_flags()))


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (see `unavailable`)."""
    global _reason
    try:
        lib, _reason = build_library(), None
        return lib
    except RuntimeError as error:
        _reason = str(error)
        return None


def build_library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Build (or find in the cache) and load the kernels, compiled with `extra_flags` too (the tests build the
    portable C path with -mno-avx512f); RuntimeError says in one line why not."""
    if os.environ.get("GPT2KIT_CPU_KERNELS", "1") == "0":
        raise RuntimeError("turned off by GPT2KIT_CPU_KERNELS=0")
    if platform.system() != "Linux":
        raise RuntimeError(f"built on Linux only, this is {platform.system()}")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    try:
        lib = ctypes.CDLL(str(_build(compiler, extra_flags)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"could not build the CPU kernels: {error}") from None
    lib.gpt2_linear.argtypes = [ctypes.POINTER(Linear), ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    lib.gpt2_linear.restype = None
    lib.gpt2_dequantize.argtypes = [ctypes.POINTER(Linear), ctypes.c_void_p]
    lib.gpt2_dequantize.restype = None
    lib.gpt2_decode_step.argtypes = [
        ctypes.POINTER(Model),
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.gpt2_decode_step.restype = None
    lib.gpt2_half_caches.argtypes = []
    lib.gpt2_half_caches.restype = ctypes.c_int
    rows_of_logits = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    lib.gpt2_argmax_logsumexp.argtypes = rows_of_logits + [ctypes.c_void_p, ctypes.c_void_p]
    lib.gpt2_argmax_logsumexp.restype = None
    lib.gpt2_top_k.argtypes = rows_of_logits + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.gpt2_top_k.restype = None
    lib.gpt2_integer_dots.argtypes = []
    lib.gpt2_integer_dots.restype = ctypes.c_int
    return lib


def unavailable() -> str | None:
    """Why `library()` is None, in one line; None when the kernels are loaded."""
    library()
    return _reason


def _rows(logits: torch.Tensor) -> tuple[torch.Tensor, ctypes.CDLL] | None:
    """`logits` as (rows, n) float32 CPU rows with unit stride, and the library; None where the kernels cannot."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.dim() != 2 or logits.shape[1] == 0:
        return None
    lib = library()
    if lib is None:
        return None
    return (logits if logits.stride(1) == 1 else logits.contiguous()), lib


def argmax_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each row's first largest index (as `argmax`) and its log-sum-exp (as `torch.logsumexp`), from one pass
    over a (rows, n) float32 CPU tensor; None where the kernels are not available."""
    found = _rows(logits)
    if found is None:
        return None
    logits, lib = found
    rows, n = logits.shape
    argmax, logsumexp = torch.empty(rows, dtype=torch.long), torch.empty(rows)
    lib.gpt2_argmax_logsumexp(logits.data_ptr(), rows, n, logits.stride(0), argmax.data_ptr(), logsumexp.data_ptr())
    return argmax, logsumexp


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each row's k largest values in descending order and their indices (as `torch.topk`; ties: the earlier
    index first), for a (rows, n) float32 CPU tensor and 1 <= k <= min(n, TOP_K_LIMIT); None otherwise, or where
    the kernels are not available."""
    found = _rows(logits)
    if found is None or not 1 <= k <= min(logits.shape[1], TOP_K_LIMIT):
        return None
    logits, lib = found
    rows, n = logits.shape
    values, indices = torch.empty(rows, k), torch.empty(rows, k, dtype=torch.long)
    lib.gpt2_top_k(logits.data_ptr(), rows, n, logits.stride(0), k, values.data_ptr(), indices.data_ptr())
    return values, indices
