"""llama.cpp's native C++ tools as the benchmarks' peer: find (or build) llama-bench, llama-server and llama-quantize,
and make the GGUF models they run.

The build is llama.cpp as vendored in the llama-cpp-python sdist, compiled once into a cache outside the repository
(`$GPT2KIT_BENCH_CACHE`, default ~/.cache/gpt2kit-bench) and reused:

    pip download --no-deps --no-binary :all: llama-cpp-python -d CACHE/sdist
    tar xzf CACHE/sdist/llama_cpp_python-*.tar.gz -C CACHE
    cd CACHE/llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release
    cmake --build build --target llama-bench llama-server llama-quantize -j2

(about 15 minutes on 2 cores). `--llama-cpp DIR` (or `$GPT2KIT_LLAMA_CPP`) points at an existing bin directory
holding the three tools instead. Without cmake, a C++ compiler or the network the peer is left out with one line.

Precisions pair up: gpt2kit fp32 against llama.cpp f32, int8 against q8_0, int4 against q4_0. q8_0 and q4_0 come
from `llama-quantize --pure`, so that every matrix (the output layer too, which plain Q4_0 would make q6_K) has the
named type and the bytes per weight below hold.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("llama-bench", "llama-server", "llama-quantize")
# (gpt2kit precision, llama.cpp type): the pairs every ratio is taken within
PAIRS = (("fp32", "f32"), ("int8", "q8_0"), ("int4", "q4_0"))
PEER = dict(PAIRS)
# bytes a decoding step streams per weight: q8_0 is 32 int8 weights and one fp16 scale (8.5 bits), q4_0 32 4-bit
# weights and one fp16 scale (4.5 bits); gpt2kit's int8 is counted as q8_0 (its per-channel scales are negligible)
BYTES_PER_WEIGHT = {"fp32": 4.0, "f32": 4.0, "int8": 1.0625, "q8_0": 1.0625, "int4": 0.5625, "q4_0": 0.5625}


def cache_dir() -> Path:
    cache = Path(os.environ.get("GPT2KIT_BENCH_CACHE", Path.home() / ".cache" / "gpt2kit-bench")).expanduser()
    return cache.resolve()


def has_tools(directory: Path) -> bool:
    return all(os.access(directory / tool, os.X_OK) for tool in TOOLS)


def find_tools(bin_dir: str | None = None, build: bool = True) -> Path | None:
    """The bin directory of a native llama.cpp build: `bin_dir` (or $GPT2KIT_LLAMA_CPP), else the cached build,
    else a fresh build into the cache (`build`). None, after one printed line, when there is none to be had."""
    bin_dir = bin_dir or os.environ.get("GPT2KIT_LLAMA_CPP")
    if bin_dir:
        directory = Path(bin_dir).expanduser().resolve()
        if has_tools(directory):
            return directory
        print(f"llama.cpp: left out, {directory} does not hold {', '.join(TOOLS)}")
        return None
    cache = cache_dir()
    if cache == ROOT or ROOT in cache.parents:
        print(f"llama.cpp: left out, the build cache {cache} must be outside the repository ($GPT2KIT_BENCH_CACHE)")
        return None
    for found in sorted(cache.glob("llama_cpp_python-*/vendor/llama.cpp/build/bin"), reverse=True):
        if has_tools(found):
            return found
    if not build:
        print(f"llama.cpp: left out, no build in {cache}")
        return None
    try:
        return build_tools(cache)
    except BuildError as err:
        print(f"llama.cpp: left out, {err}")
        return None


class BuildError(Exception):
    pass


def build_tools(cache: Path) -> Path:
    """Download the llama-cpp-python sdist and build its vendored llama.cpp's three tools into `cache`."""
    cmake = shutil.which("cmake")
    compiler = next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)
    if not cmake or not compiler:
        raise BuildError(f"building it needs cmake and a C++ compiler ({'cmake' if not cmake else 'compiler'} missing)")
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / "llama-build.log"
    print(f"llama.cpp: no build in {cache}; building it from the llama-cpp-python sdist (about 15 minutes on 2 "
          f"cores; log: {log_path})", flush=True)  # fmt: skip
    with open(log_path, "w") as log:

        def step(command: list[str], what: str, cwd: Path | None = None) -> None:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            try:
                done = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            except OSError as err:
                raise BuildError(f"{what} failed: {err}") from None
            if done.returncode != 0:
                raise BuildError(f"{what} failed (exit {done.returncode}; see {log_path})")

        sdist = cache / "sdist"
        if not sorted(sdist.glob("llama_cpp_python-*.tar.gz")):
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python"]
            step([*pip, "-d", str(sdist)], "downloading the llama-cpp-python sdist (no network?)")
        archive = sorted(sdist.glob("llama_cpp_python-*.tar.gz"))[-1]
        source = cache / archive.name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
        if not source.is_dir():
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():  # nothing may land outside the cache
                    target = (cache / member.name).resolve()
                    if cache not in target.parents or member.islnk() or member.isdev():
                        raise BuildError(f"{archive.name} holds an unsafe member {member.name!r}")
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(cache, **extra)
        configure = [cmake, "-B", "build", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DCMAKE_BUILD_TYPE=Release"]
        step(configure, "cmake configure", source)
        step([cmake, "--build", "build", "--target", *TOOLS, "-j2"], "cmake build", source)
    directory = source / "build" / "bin"
    if not has_tools(directory):
        raise BuildError(f"the build finished without {', '.join(TOOLS)} in {directory}")
    print(f"llama.cpp: built into {directory}")
    return directory


def make_models(tools: Path, directory: str | Path, work: Path, kinds=("f32", "q8_0", "q4_0")) -> dict[str, Path]:
    """GGUF files of the HF model in `directory`: f32 by `gpt2kit convert`, the rest by native llama-quantize."""
    from gpt2kit.convert import convert

    f32 = work / "f32.gguf"
    try:
        convert(str(directory), f32)
    except Exception as err:  # a model gpt2kit cannot write as GGUF leaves the peer out, not the benchmark
        print(f"llama.cpp: left out, gpt2kit convert failed: {err}")
        return {}
    models = {"f32": f32}
    for kind in kinds:
        if kind == "f32":
            continue
        out = work / f"{kind}.gguf"
        command = [str(tools / "llama-quantize"), "--pure", str(f32), str(out), kind.upper()]
        done = subprocess.run(command, capture_output=True, text=True)  # it prints every tensor
        if done.returncode != 0:
            print(f"llama.cpp {kind}: left out, llama-quantize failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        models[kind] = out
    return {kind: models[kind] for kind in kinds if kind in models}


def bench_decode(tools: Path, model: Path, new_tokens: int, depth: int, threads: int) -> float:
    """Batch-1 decoding tokens/s by llama-bench: `new_tokens` generated after `depth` tokens of context, one
    repetition (after llama-bench's own warm-up run)."""
    command = [str(tools / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(new_tokens), "-d", str(depth)]
    command += ["-t", str(threads), "-r", "1", "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    tests = [t for t in json.loads(done.stdout) if t["n_gen"] > 0 and t["n_prompt"] == 0]
    return max(tests[0]["samples_ts"])


def server_command(tools: Path, model: Path, port: int, slots: int, context: int, threads: int) -> list[str]:
    """llama-server on 127.0.0.1 with `slots` parallel sequences of `context` tokens each."""
    command = [str(tools / "llama-server"), "-m", str(model), "-np", str(slots), "-c", str(context * slots)]
    return command + ["--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "--no-webui"]
