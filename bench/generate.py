"""Greedy decoding on CPU: gpt2kit (fp32, int8) against transformers, CTranslate2 (float32, int8) and llama.cpp
(f32, q8_0, when llama_cpp is importable), in one process, in interleaved rounds, one engine alive at a time.

Random weights of a preset (default `gpt2`, 124M) in the HF layout, a 32-token prompt, 256 new tokens, batch 1
and 8. CTranslate2's model comes from its own converter; llama.cpp's from `gpt2kit convert --to gguf` (q8_0 by
llama.cpp's own quantizer). Every engine runs all new tokens (end-of-text does not stop it). Prints tokens/s,
each ratio to gpt2kit fp32, and the weight bandwidth each reaches (weight bytes read per decoding step x steps/s)
against a measured streaming-read bandwidth. fp32 engines must produce transformers' tokens; int8 ones report
how many of them they share.

Each engine is built, warmed up, timed and freed in turn, round after round: on 2 cores an idle CTranslate2
generator left alive in the process slowed gpt2kit's batch-1 decoding by 15% (32.0 against 37.6 tokens/s, gone
once the generator was deleted), so engines that merely coexist would not be measured fairly.

Usage: python bench/generate.py [--preset gpt2] [--new-tokens 256] [--batch-sizes 1 8] [--rounds 2] [--threads N]
llama.cpp: pip install llama-cpp-python (builds llama.cpp from source, about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets GPT2KIT_GPT2_VOCAB)


class Engine:
    """One decoder: `run(prompts, new_tokens)` returns the new token ids of every prompt."""

    name = ""
    weight_bytes = 0  # bytes of weights read per decoding step
    batched = True  # False: prompts run one after another

    def run(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        raise NotImplementedError


def streamed_bytes(config, bytes_per_weight: float) -> int:
    """Weight bytes one decoding step streams: the block matrices and the output layer (biases, norms and the
    one embedding row gathered per token are negligible)."""
    return int(bytes_per_weight * (12 * config.n_layer * config.n_embd**2 + config.vocab_size * config.n_embd))


class Gpt2kit(Engine):
    def __init__(self, directory: str, quantize: str | None, batch_size: int):
        from gpt2kit import load
        from gpt2kit.inference import prepare_for_decoding

        self.loaded = load(directory, quantize=quantize)
        prepare_for_decoding(self.loaded.model, batch_size)  # as `sample`, `serve` and `eval` do for their batches
        self.name = f"gpt2kit {quantize or 'fp32'}"
        self.weight_bytes = streamed_bytes(self.loaded.model.config, 1 if quantize else 4)

    def run(self, prompts, new_tokens):
        from gpt2kit.generate import GenerationConfig, generate

        config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        return [c.token_ids for c in generate(self.loaded.model, self.loaded.tokenizer, prompts, config)]


class Transformers(Engine):
    name = "transformers fp32"

    def __init__(self, directory: str):
        import torch
        import transformers

        self.model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0
        self.weight_bytes = streamed_bytes(self.model.config, 4)
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

    def __init__(self, converted: Path, quantization: str, threads: int, weight_bytes: int):
        import ctranslate2

        self.generator = ctranslate2.Generator(str(converted), device="cpu", intra_threads=threads, inter_threads=1)
        self.name = f"CTranslate2 {quantization}"
        self.weight_bytes = weight_bytes
        from gpt2kit.tokenizer import Tokenizer

        self.tokenizer = Tokenizer.gpt2()  # once, outside the timed runs

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


class LlamaCpp(Engine):
    batched = False

    def __init__(self, gguf_path: Path, kind: str, threads: int, context: int, weight_bytes: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path), n_ctx=context, n_threads=threads, n_batch=512, verbose=False
        )
        self.name = f"llama.cpp {kind}"
        self.weight_bytes = weight_bytes

    def run(self, prompts, new_tokens):
        outputs = []
        for prompt in prompts:
            self.llm.reset()
            tokens = []
            for token in self.llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                tokens.append(token)
                if len(tokens) == new_tokens:
                    break
            outputs.append(tokens)
        return outputs


def streaming_bandwidth() -> float:
    """GB/s of a streaming read of 400 MB (torch sum), best of 5: the memory bandwidth decoding can reach."""
    import torch

    big = torch.ones(100_000_000)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        big.sum()
        best = min(best, time.perf_counter() - start)
    return big.numel() * 4 / best / 1e9


def llama_cpp_problem(gguf: Path) -> str:
    """What goes wrong when llama.cpp loads `gguf` and decodes a few tokens, tried in a child process (a crash
    there must not end the benchmark; llama-cpp-python 0.3.36 segfaults decoding its own q8_0 GPT-2 here)."""
    probe = (
        "import sys, llama_cpp\n"
        "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=32, n_threads=1, verbose=False)\n"
        "next(iter(llm.generate([1, 2, 3], temp=0.0, top_k=1, reset=True)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(gguf)], capture_output=True, text=True, timeout=300)
    if done.returncode == 0:
        return ""
    return f"its decoding crashed (exit {done.returncode}) in llama-cpp-python {importlib.metadata.version('llama_cpp_python')}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each engine's best is kept")
    parser.add_argument("--threads", type=int, help="threads for every engine (default: torch's choice)")
    parser.add_argument("--skip", nargs="*", default=[], help="engine names to leave out, e.g. transformers")
    args = parser.parse_args()

    import importlib.util

    import torch

    from gpt2kit import GPT, Tokenizer, preset_config, save
    from gpt2kit.convert import convert

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    tokenizer = Tokenizer.gpt2()
    model = GPT(preset_config(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save(model, tokenizer, work / "hf")
        directory = str(work / "hf")
        del model
        from gpt2kit.model import preset_config as config_of

        fp32_bytes = streamed_bytes(config_of(args.preset), 4)
        int8_bytes = streamed_bytes(config_of(args.preset), 1)
        factories: dict[str, Callable[[int], Engine]] = {  # each takes the batch size it will decode
            "gpt2kit fp32": lambda batch: Gpt2kit(directory, None, batch),
            "gpt2kit int8": lambda batch: Gpt2kit(directory, "int8", batch),
            "transformers fp32": lambda batch: Transformers(directory),
        }
        if importlib.util.find_spec("ctranslate2"):
            for kind, weight_bytes in (("float32", fp32_bytes), ("int8", int8_bytes)):
                converted = CTranslate2.convert(directory, work, kind)
                build = functools.partial(CTranslate2, converted, kind, threads, weight_bytes)
                factories[f"CTranslate2 {kind}"] = lambda batch, build=build: build()
        else:
            print("ctranslate2 is not installed: pip install 'gpt2kit[bench]'")
        if importlib.util.find_spec("llama_cpp"):
            import llama_cpp

            convert(directory, work / "f32.gguf")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
            with common.quiet_stderr():  # llama.cpp's quantizer prints every tensor
                llama_cpp.llama_model_quantize(
                    str(work / "f32.gguf").encode(), str(work / "q8_0.gguf").encode(), params
                )
            context = args.prompt_tokens + args.new_tokens + 8
            # q8_0: blocks of 32 int8 weights with one fp16 scale, 8.5 bits a weight
            for kind, weight_bytes in (("f32", fp32_bytes), ("q8_0", int8_bytes * 17 // 16)):
                problem = llama_cpp_problem(work / f"{kind}.gguf")
                if problem:
                    print(f"llama.cpp {kind}: left out, {problem}")
                else:
                    gguf = work / f"{kind}.gguf"
                    build = functools.partial(LlamaCpp, gguf, kind, threads, context, weight_bytes)
                    factories[f"llama.cpp {kind}"] = lambda batch, build=build: build()
        else:
            print("llama_cpp is not installed: pip install llama-cpp-python (builds from source, ~15 min)")
        factories = {n: f for n, f in factories.items() if n.split()[0] not in args.skip and n not in args.skip}
        bandwidth = streaming_bandwidth()
        print(
            f"preset {args.preset}, random weights, greedy, {args.prompt_tokens}-token prompt, {args.new_tokens} "
            f"new tokens, {threads} threads, {args.rounds} interleaved rounds; streaming read {bandwidth:.1f} GB/s"
        )
        described: dict[str, tuple[int, bool]] = {}  # name -> (weight bytes per step, whether it batches)
        generator = torch.Generator().manual_seed(1)
        for batch in args.batch_sizes:
            prompts = torch.randint(0, tokenizer.eot_token, (batch, args.prompt_tokens), generator=generator).tolist()
            best: dict[str, float] = {}
            outputs: dict[str, list[list[int]]] = {}
            for _ in range(args.rounds):
                for name, make in factories.items():
                    if batch > 1 and name in described and not described[name][1]:
                        continue
                    engine = make(batch)
                    described[name] = (engine.weight_bytes, engine.batched)
                    if batch == 1 or engine.batched:
                        engine.run([[1, 2, 3]], 4)  # warm-up: first calls pay one-off allocation and setup
                        start = time.perf_counter()
                        outputs[name] = engine.run(prompts, args.new_tokens)
                        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
                    del engine  # only one engine alive at a time
                    gc.collect()
            reference = outputs.get("transformers fp32") or outputs["gpt2kit fp32"]
            base = batch * args.new_tokens / best["gpt2kit fp32"]
            print(f"batch {batch}:")
            print(
                f"  {'engine':20s} {'tokens/s':>9s} {'vs gpt2kit':>10s} {'GB/s':>6s} {'of peak':>7s}  tokens as transformers"
            )
            for name, (weight_bytes, batched) in described.items():
                if name not in best:
                    continue
                rate = batch * args.new_tokens / best[name]
                steps = args.new_tokens / best[name]
                gbps = weight_bytes * steps / 1e9
                same = sum(
                    next(
                        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
                    )
                    for got, want in zip(outputs[name], reference, strict=True)
                )
                total = sum(map(len, reference))
                print(
                    f"  {name:20s} {rate:9.1f} {rate / base:9.2f}x {gbps:6.1f} {gbps / bandwidth:6.0%}  "
                    f"{same}/{total}" + ("" if batched or batch == 1 else " (sequential)")
                )


if __name__ == "__main__":
    main()
