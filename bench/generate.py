"""Greedy generation throughput: gpt2kit vs transformers' generate (KV cache) vs no-cache recompute, in one run.

Random weights of a preset (default `gpt2`, 124M), a 32-token prompt, 256 new tokens, batch 1 and 8.
All three decoders must produce the same tokens; the benchmark checks that too.
Usage: python bench/generate.py [--preset gpt2] [--new-tokens 256] [--batch-sizes 1 8] [--repeats 1] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets GPT2KIT_GPT2_VOCAB)


def no_cache_greedy(model, tokenizer, prompts, new_tokens: int) -> list[list[int]]:
    """The baseline: every step runs the whole sequence through the model again."""
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        for _ in range(new_tokens):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, len(prompts[0]) :].tolist()


def gpt2kit_greedy(model, tokenizer, prompts, new_tokens: int) -> list[list[int]]:
    from gpt2kit.generate import GenerationConfig, generate

    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    return [c.token_ids for c in generate(model, tokenizer, prompts, config)]


def transformers_greedy(hf, tokenizer, prompts, new_tokens: int) -> list[list[int]]:
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens)
    return out[:, len(prompts[0]) :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs per decoder")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-no-cache", action="store_true", help="the slowest decoder; skip it on a busy machine")
    args = parser.parse_args()

    import torch
    import transformers

    from gpt2kit import GPT, Tokenizer, load, preset_config, save
    from gpt2kit.inference import apply_decode_layout

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = Tokenizer.gpt2()
    model = GPT(preset_config(args.preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save(model, tokenizer, tmp)
        model = load(tmp).model
        apply_decode_layout(model)
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
    # Random weights rarely pick <|endoftext|>; never stop on it, so every decoder does the same work.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = tokenizer.eot_token
    vocab_without_eot = tokenizer.eot_token
    print(
        f"preset {args.preset} ({model.num_parameters() / 1e6:.0f}M), random weights, greedy, "
        f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, {torch.get_num_threads()} threads"
    )
    decoders = {"gpt2kit": (gpt2kit_greedy, model), "transformers": (transformers_greedy, hf)}
    if not args.skip_no_cache:
        decoders["no-cache"] = (no_cache_greedy, model)
    for func, net in decoders.values():  # warm-up: first calls pay one-off allocation costs
        func(net, tokenizer, [[1, 2, 3]], 2)
    generator = torch.Generator().manual_seed(1)
    for batch in args.batch_sizes:
        prompts = torch.randint(0, vocab_without_eot, (batch, args.prompt_tokens), generator=generator).tolist()
        rates, outputs = {}, {}
        for name, (func, net) in decoders.items():
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                outputs[name] = func(net, tokenizer, prompts, args.new_tokens)
                best = min(best, time.perf_counter() - start)
            tokens = sum(len(row) for row in outputs[name])
            rates[name] = tokens / best
            print(f"  batch {batch:2d}  {name:13s} {rates[name]:9.1f} tokens/s  ({tokens} tokens in {best:.2f} s)")
        # Where gpt2kit stopped early, it generated <|endoftext|>; compare what it did generate.
        same = all(
            other[i][: len(ours)] == ours for other in outputs.values() for i, ours in enumerate(outputs["gpt2kit"])
        )
        print(f"  batch {batch:2d}  identical greedy tokens across decoders: {same}")
        for name in decoders:
            if name != "gpt2kit":
                print(f"  batch {batch:2d}  ratio gpt2kit / {name}: {rates['gpt2kit'] / rates[name]:.2f}x")


if __name__ == "__main__":
    main()
