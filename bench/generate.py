"""Greedy decoding on CPU: gpt2kit (fp32, int8, int4 where gpt2kit has it) against transformers, CTranslate2
(float32, int8) and llama.cpp's native build (f32, q8_0, q4_0, timed by its own `llama-bench`).

Random weights of a preset (default `gpt2`, 124M) in the HF layout, a 32-token prompt, 256 new tokens, batch 1
and 8. CTranslate2's model comes from its own converter; llama.cpp's f32 GGUF from `gpt2kit convert`, its q8_0
and q4_0 from llama.cpp's `llama-quantize --pure` (bench/llamacpp.py finds or builds the tools, see there).
Every engine runs all new tokens (end-of-text does not stop it).

Every engine runs in a fresh process of its own for every round (`generate.py --child ENGINE`, which loads it,
warms it up, times one run and writes its tokens as JSON), and rounds are interleaved; each engine's best round
is kept. On 2 cores an idle CTranslate2 generator left alive beside gpt2kit slowed gpt2kit's batch-1 decoding by
15%, so engines that merely coexist would not be measured fairly. llama.cpp is timed by `llama-bench -p 0 -n NEW
-d PROMPT -r 1 -o json` (NEW tokens decoded after PROMPT tokens of context, batch 1 only: llama-bench decodes one
sequence), its `samples_ts`. llama-bench leaves the prompt (`-d`) out of its time, so the Python engines do too:
each times a run of 1 new token (the prompt's encoding and the first token) and one of NEW, and its rate is
(NEW - 1) / (difference), the decoding steps alone.

Prints tokens/s; the ratio of each engine to llama.cpp at its precision (fp32 engines to f32, int8 ones to q8_0,
int4 to q4_0); and the weight bandwidth each reaches (weight bytes streamed per decoding step x steps/s: 4 bytes
a weight for fp32/f32, 1.0625 for int8/q8_0, 0.5625 for int4/q4_0) as a share of a measured streaming-read
bandwidth. gpt2kit, transformers and CTranslate2 report how many of transformers' tokens they produce (fp32 ones
should produce them all); llama-bench returns no tokens. A precision gpt2kit refuses is left out with a note.

Usage: python bench/generate.py [--preset gpt2] [--new-tokens 256] [--batch-sizes 1 8] [--rounds 2] [--threads N]
       [--precisions fp32 int8 int4] [--skip transformers CTranslate2 llama.cpp ...] [--llama-cpp BIN_DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets GPT2KIT_GPT2_VOCAB)
import llamacpp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EOT = 50256  # GPT-2's end of text: prompts are drawn below it
# engine name -> its precision (what it is compared with and how many bytes a weight it streams)
PRECISION = {"transformers fp32": "fp32", "CTranslate2 float32": "fp32", "CTranslate2 int8": "int8"}


class Engine:
    """One decoder: `run(prompts, new_tokens)` returns the new token ids of every prompt."""

    def run(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        raise NotImplementedError


def streamed_weights(config) -> int:
    """Weights one decoding step streams: the block matrices and the output layer (biases, norms and the one
    embedding row gathered per token are negligible)."""
    return 12 * config.n_layer * config.n_embd**2 + config.vocab_size * config.n_embd


class Gpt2kit(Engine):
    def __init__(self, directory: str, quantize: str | None):
        from gpt2kit import load
        from gpt2kit.inference import prepare_for_decoding

        self.loaded = load(directory, quantize=quantize)
        prepare_for_decoding(self.loaded.model)  # as `sample`, `serve` and `eval` do

    def run(self, prompts, new_tokens):
        from gpt2kit.generate import GenerationConfig, generate

        config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        return [c.token_ids for c in generate(self.loaded.model, self.loaded.tokenizer, prompts, config)]


class Transformers(Engine):
    def __init__(self, directory: str):
        import torch
        import transformers

        self.model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0
        self.torch = torch

    def run(self, prompts, new_tokens):
        ids = self.torch.tensor(prompts)
        with self.torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=self.torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens
            )
        return out[:, len(prompts[0]) :].tolist()


class CTranslate2(Engine):
    @staticmethod
    def convert(directory: str, work: Path, quantization: str) -> Path:
        """CTranslate2's own converter, once: the timed rounds only load its output."""
        import ctranslate2

        out = work / f"ct2-{quantization}"
        ctranslate2.converters.TransformersConverter(directory).convert(str(out), quantization=quantization)
        return out

    def __init__(self, converted: Path, threads: int):
        import ctranslate2

        from gpt2kit.tokenizer import Tokenizer

        self.generator = ctranslate2.Generator(str(converted), device="cpu", intra_threads=threads, inter_threads=1)
        self.tokenizer = Tokenizer.gpt2()  # once, outside the timed run

    def run(self, prompts, new_tokens):
        from gpt2kit.tokenizer import token_to_str

        tokens = [[token_to_str(self.tokenizer.token_bytes(i)) for i in p] for p in prompts]
        results = self.generator.generate_batch(
            tokens,
            max_length=new_tokens,
            min_length=new_tokens,
            sampling_topk=1,
            include_prompt_in_result=False,
            beam_size=1,
        )
        return [r.sequences_ids[0] for r in results]


def streaming_bandwidth() -> float:
    """GB/s of a streaming read of 400 MB (torch sum), best of 5: the memory bandwidth decoding can reach. The
    buffer is in 2 MB pages, as gpt2kit's decoding weights are (and llama.cpp's reach): with 4 KB pages the TLB
    misses cut the same read by a quarter here, and engines then read "faster than memory"."""
    import torch

    from gpt2kit.device import huge_page_copy

    big = huge_page_copy(torch.ones(100_000_000))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        big.sum()
        best = min(best, time.perf_counter() - start)
    return big.numel() * 4 / best / 1e9


# ---- child processes: each does one thing and writes its result as JSON to --out ----


def child_prepare(args) -> dict:
    """Random weights of the preset in the HF layout, CTranslate2's conversions and llama.cpp's GGUF files."""
    import torch

    from gpt2kit import GPT, Tokenizer, preset_config, save

    torch.manual_seed(0)
    config = preset_config(args.preset)
    save(GPT(config).eval(), Tokenizer.gpt2(), args.work / "hf")
    for kind in args.ct2:
        CTranslate2.convert(str(args.work / "hf"), args.work, kind)
    gguf = {}
    if args.gguf:
        models = llamacpp.make_models(Path(args.llama_cpp), args.work / "hf", args.work, args.gguf)
        gguf = {kind: str(path) for kind, path in models.items()}
    return {"weights": streamed_weights(config), "gguf": gguf}


def child_bandwidth(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return {"gbps": streaming_bandwidth(), "threads": torch.get_num_threads()}


def child_engine(args) -> dict:
    """Load one engine, warm it up, time one run of the batch's prompts."""
    import torch

    from gpt2kit.errors import GPT2KitError

    torch.set_num_threads(args.threads)
    directory = str(args.work / "hf")
    name = args.child
    try:
        if name.startswith("gpt2kit "):
            precision = name.split()[1]
            engine: Engine = Gpt2kit(directory, None if precision == "fp32" else precision)
        elif name == "transformers fp32":
            engine = Transformers(directory)
        else:
            engine = CTranslate2(args.work / f"ct2-{name.split()[1]}", args.threads)
    except GPT2KitError as err:
        return {"refused": str(err)}
    prompts = json.loads((args.work / f"prompts-{args.batch}.json").read_text())
    engine.run([[1, 2, 3]], 4)  # warm-up: first calls pay one-off allocation and setup
    start = time.perf_counter()
    engine.run(prompts, 1)  # the prompt's encoding and the first token, which llama-bench leaves out of its time
    first = time.perf_counter() - start
    start = time.perf_counter()
    tokens = engine.run(prompts, args.new_tokens)
    decoding = time.perf_counter() - start - first  # the new_tokens - 1 steps after the first token
    return {"seconds": decoding * args.new_tokens / (args.new_tokens - 1), "tokens": tokens}


def child(what: str, work: Path, *extra: str) -> dict:
    """Run `generate.py --child WHAT` in a fresh process; its JSON result, or {"error": ...}."""
    out = work / "child.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", what, "--work", str(work), "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0 or not out.exists():
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {"error": lines[-1]}
    return json.loads(out.read_text())


def identical_prefix(got: list[list[int]], want: list[list[int]]) -> int:
    """How many leading tokens of each sequence match, summed."""
    return sum(
        next((i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b), min(len(g), len(w)))
        for g, w in zip(got, want, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each engine's best is kept")
    parser.add_argument("--threads", type=int, help="threads for every engine (default: torch's choice)")
    parser.add_argument("--precisions", nargs="+", default=[p for p, _ in llamacpp.PAIRS], help="of gpt2kit")
    parser.add_argument("--skip", nargs="*", default=[], help="engines to leave out, e.g. transformers llama.cpp")
    parser.add_argument("--llama-cpp", metavar="DIR", help="bin directory of a native llama.cpp build")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ct2", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--gguf", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = {"prepare": child_prepare, "bandwidth": child_bandwidth}.get(args.child, child_engine)
        args.out.write_text(json.dumps(run(args)))
        return

    def wanted(name: str) -> bool:
        return name.split()[0] not in args.skip and name not in args.skip

    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: the first token is timed apart (see the docstring)")
    unknown = [p for p in args.precisions if p not in llamacpp.PEER]
    if unknown:
        parser.error(f"--precisions: {unknown} not among {list(llamacpp.PEER)}")
    engines = [f"gpt2kit {p}" for p in args.precisions] + ["transformers fp32"]
    ct2 = []
    if importlib.util.find_spec("ctranslate2"):
        ct2 = [kind for kind in ("float32", "int8") if wanted(f"CTranslate2 {kind}")]
    elif wanted("CTranslate2"):
        print("CTranslate2: left out, ctranslate2 is not installed (pip install 'gpt2kit[bench]')")
    engines += [f"CTranslate2 {kind}" for kind in ct2]
    engines = [name for name in engines if wanted(name)]
    kinds = [llamacpp.PEER[p] for p in args.precisions if wanted(f"llama.cpp {llamacpp.PEER[p]}")]
    tools = llamacpp.find_tools(args.llama_cpp) if kinds else None

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = ["--preset", args.preset, "--ct2", *ct2]
        if tools:
            extra += ["--llama-cpp", str(tools), "--gguf", *kinds]
        prepared = child("prepare", work, *extra)
        if "error" in prepared:
            sys.exit(f"preparing the models failed: {prepared['error']}")
        gguf = {kind: Path(path) for kind, path in prepared["gguf"].items()}
        measured = child("bandwidth", work, *(["--threads", str(args.threads)] if args.threads else []))
        bandwidth, threads = measured["gbps"], measured["threads"]
        print(
            f"preset {args.preset}, random weights, greedy, {args.prompt_tokens}-token prompt, {args.new_tokens} "
            f"new tokens, {threads} threads, {args.rounds} interleaved rounds, a fresh process per engine and "
            f"round; streaming read {bandwidth:.1f} GB/s"
        )
        left_out: set[str] = set()
        rng = random.Random(1)
        for batch in args.batch_sizes:
            prompts = [[rng.randrange(EOT) for _ in range(args.prompt_tokens)] for _ in range(batch)]
            (work / f"prompts-{batch}.json").write_text(json.dumps(prompts))
            best: dict[str, float] = {}  # name -> seconds of its fastest round
            outputs: dict[str, list[list[int]]] = {}
            for _ in range(args.rounds):
                for name in engines:
                    if name in left_out:
                        continue
                    common_args = ["--threads", str(threads), "--batch", str(batch)]
                    result = child(name, work, *common_args, "--new-tokens", str(args.new_tokens))
                    if "seconds" not in result:
                        print(f"{name}: left out, {result.get('refused') or result['error']}")
                        left_out.add(name)
                        continue
                    best[name] = min(best.get(name, float("inf")), result["seconds"])
                    outputs[name] = result["tokens"]
                if batch == 1:
                    for kind, model in gguf.items():
                        name = f"llama.cpp {kind}"
                        try:
                            rate = llamacpp.bench_decode(tools, model, args.new_tokens, args.prompt_tokens, threads)
                        except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as err:
                            print(f"{name}: left out, {err}")
                            gguf = {k: v for k, v in gguf.items() if k != kind}
                            continue
                        best[name] = min(best.get(name, float("inf")), args.new_tokens / rate)
            print(f"batch {batch}:" + ("" if batch == 1 or not gguf else " (llama-bench decodes batch 1 only)"))
            print(
                f"  {'engine':20s} {'tokens/s':>9s} {'vs llama.cpp':>13s} {'GB/s':>6s} {'of peak':>7s}  "
                "tokens as transformers"
            )
            reference = outputs.get("transformers fp32") or outputs.get("gpt2kit fp32")
            total = sum(map(len, reference)) if reference else 0
            for name, seconds in best.items():
                precision = PRECISION.get(name, name.split()[1])
                tokens_per_s = batch * args.new_tokens / seconds  # llama.cpp runs at batch 1 only
                peer_kind = llamacpp.PEER.get(precision, precision)
                peer = best.get(f"llama.cpp {peer_kind}")
                ratio = "-"
                if peer is not None and not name.startswith("llama.cpp"):
                    ratio = f"{tokens_per_s / (args.new_tokens / peer):.2f}x {peer_kind}"
                gbps = llamacpp.BYTES_PER_WEIGHT[precision] * prepared["weights"] * args.new_tokens / seconds / 1e9
                same = "-"
                if name in outputs and reference:
                    same = f"{identical_prefix(outputs[name], reference)}/{total}"
                elif name.startswith("llama.cpp"):
                    same = "- (llama-bench)"
                print(f"  {name:20s} {tokens_per_s:9.1f} {ratio:>13s} {gbps:6.1f} {gbps / bandwidth:6.0%}  {same}")


if __name__ == "__main__":
    main()
