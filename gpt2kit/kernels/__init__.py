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

from filelock import FileLock

from gpt2kit.io import user_cache_dir

SOURCE = Path(__file__).with_name("cpu_decode.c")
# -ffast-math lets glibc's vector math (libmvec) take the activations' tanh and the softmax's exp, 16 at a time;
# the C code relies on no infinity or NaN. It is a compile flag only: linked with it, GCC adds crtfastmath, which
# turns on flush-to-zero for the whole process when the library loads.
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")
KIND_F32, KIND_INT8, KIND_INT4 = 0, 1, 2
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
    import torch  # noqa: F401  (its OpenMP runtime must be loaded first, so that the kernels share it)

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
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.gpt2_decode_step.restype = None
    lib.gpt2_integer_dots.argtypes = []
    lib.gpt2_integer_dots.restype = ctypes.c_int
    return lib


def unavailable() -> str | None:
    """Why `library()` is None, in one line; None when the kernels are loaded."""
    library()
    return _reason
