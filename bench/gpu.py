"""The one-shot GPU acceptance run (`bench/gpu.sh`): every CUDA path of gpt2kit against its peer, in one go.

1. training: gpt2 (124M) at context 1024, bf16 autocast, torch.compile, against transformers' GPT2LMHeadModel
   (SDPA, bf16, compiled) in the same run (bench/train.py): tokens/s and MFU. Targets: MFU >= 45%, >= 1.2x.
2. ddp: `torchrun --nproc_per_node=1 -m gpt2kit train` on a small prepared corpus: the process group (NCCL on a
   GPU) initialises, DDP wraps the model, and the loss falls.
3. generation: gpt2 (124M), greedy, 256 new tokens, batch 1 and 32, against transformers' `generate` with a
   static cache, on the same weights.
4. LAMBADA scoring speed against lm-eval's HF backend on the same model (bench/eval.py).

Writes gpt2kit's figures and each peer's to `gpu-results.json` (--out) and prints a table. `--smoke` runs every
step on the CPU at tiny sizes (a test does), so the script cannot rot before a GPU arrives. No network.
Usage: bash bench/gpu.sh [--smoke] [--out gpu-results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402,F401  (sets GPT2KIT_GPT2_VOCAB)

FULL = {
    "device": "cuda",
    "train": {"preset": "gpt2", "context": 1024, "batch": 16, "steps": 10, "warmup": 3},
    "ddp": {"preset": "gpt2", "context": 1024, "steps": 20, "corpus_mb": 20, "batch_tokens": 65536, "micro": 16},
    "generate": {"preset": "gpt2", "prompt": 32, "new": 256, "batches": (1, 32)},
    "lambada": {"preset": "gpt2", "limit": 1000, "batch": 64},
}
SMOKE = {
    "device": "cpu",
    "train": {"preset": "cpu-25k", "context": 64, "batch": 2, "steps": 1, "warmup": 1},
    "ddp": {"preset": "cpu-25k", "context": 64, "steps": 4, "corpus_mb": 0.3, "batch_tokens": 512, "micro": 8},
    "generate": {"preset": "cpu-25k", "prompt": 8, "new": 8, "batches": (1, 2)},
    "lambada": {"preset": "cpu-25k", "limit": 8, "batch": 4},
}


def step_train(plan: dict, device) -> dict:
    import train as train_bench

    settings = plan["train"]
    args = argparse.Namespace(steps=settings["steps"], warmup=settings["warmup"], rounds=1)
    result = train_bench.run_case(settings["preset"], settings["context"], settings["batch"], args, device)
    mfu = (result["mfu"] or {}).get("gpt2kit")
    result["targets"] = {
        "mfu >= 45%": None if mfu is None else mfu >= 0.45,
        "ratio >= 1.2x": result["ratio_gpt2kit_over_transformers"] >= 1.2,
    }
    return result


def step_ddp(plan: dict, device, work: Path) -> dict:
    """A one-process torchrun run: proves the process group and DDP path (NCCL on a GPU) and that it learns."""
    settings = plan["ddp"]
    gpt2kit = [sys.executable, "-m", "gpt2kit"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = lambda command: subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)  # noqa: E731
    for command in (
        [*gpt2kit, "synth", "--out", str(work / "web"), "--size-mb", str(settings["corpus_mb"])],
        [*gpt2kit, "prepare", "--input", str(work / "web" / "train"), "--text-field", "text", "--tokenizer", "gpt2",
         "--out", str(work / "data"), "--quiet"],
    ):  # fmt: skip
        done = run(command)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command[:4])}: {done.stderr[-1500:]}")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "gpt2kit"]
    command += ["train", "--config", "cpu-smoke", "--preset", settings["preset"], "--data", str(work / "data")]
    command += ["--out", str(work / "run")]
    command += ["--max-steps", str(settings["steps"]), "--set", f"context_length={settings['context']}"]
    command += [f"batch_tokens={settings['batch_tokens']}", f"micro_batch_size={settings['micro']}", "log_interval=1"]
    command += ["eval_interval=1000", "checkpoint_interval=0", "progress=false", f"dtype={dtype}"]
    command += [f"device={device.type}", "parallelism=ddp", "optim.warmup_steps=2", "optim.lr=1e-3"]
    start = time.perf_counter()
    done = run(command)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"torchrun: {done.stderr[:1500]} ... {done.stderr[-1500:]}")
    records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    backend = (
        "nccl" if "process group: nccl" in done.stderr else "gloo" if "process group: gloo" in done.stderr else None
    )
    return {
        "process_group": backend,
        "steps": len(losses),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "tokens_per_s": records[-1].get("tokens_per_s"),
        "seconds": seconds,
        "targets": {
            "process group initialised": backend == ("nccl" if device.type == "cuda" else "gloo"),
            "loss falls": losses[-1] < losses[0],
        },
    }


def step_generate(plan: dict, device, work: Path) -> dict:
    import torch
    import transformers

    import gpt2kit
    from gpt2kit.generate import GenerationConfig, generate
    from gpt2kit.inference import prepare_for_decoding

    settings = plan["generate"]
    torch.manual_seed(0)
    directory = work / "generate-model"
    gpt2kit.save(gpt2kit.GPT(gpt2kit.preset_config(settings["preset"])), gpt2kit.Tokenizer.gpt2(), directory)
    ours = gpt2kit.load(directory, device=device)
    prepare_for_decoding(ours.model)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(directory).to(device).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    new = settings["new"]
    config = GenerationConfig(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    results = {}
    for batch in settings["batches"]:
        prompts = torch.randint(0, 50256, (batch, settings["prompt"]), generator=torch.Generator().manual_seed(batch))

        def run_ours(prompts=prompts, batch=batch):
            return generate(ours.model, ours.tokenizer, prompts.tolist(), config, max_batch_size=batch)

        def run_theirs(prompts=prompts):
            ids = prompts.to(device)
            with torch.no_grad():
                return theirs.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                    min_new_tokens=new, pad_token_id=50256, cache_implementation="static",
                )  # fmt: skip

        timings = {}
        for name, function in (("gpt2kit", run_ours), ("transformers", run_theirs)):
            function()  # warm-up (and the static cache's compilation)
            sync()
            start = time.perf_counter()
            output = function()
            sync()
            timings[name] = batch * new / (time.perf_counter() - start)
            if name == "gpt2kit":
                our_tokens = [c.token_ids for c in output]
            else:
                their_tokens = output[:, settings["prompt"] :].tolist()
        same = sum(a == b for a, b in zip(our_tokens, their_tokens, strict=True))
        results[f"batch {batch}"] = {
            "gpt2kit_tokens_per_s": timings["gpt2kit"],
            "transformers_tokens_per_s": timings["transformers"],
            "ratio": timings["gpt2kit"] / timings["transformers"],
            "identical_sequences": f"{same}/{batch}",
        }
    return results


def step_lambada(plan: dict, device) -> dict:
    import eval as eval_bench

    settings = plan["lambada"]
    return eval_bench.run(settings["preset"], settings["limit"], settings["batch"], str(device))


def table(results: dict) -> str:
    """One row per step that ran: gpt2kit's figure, the peer's, the ratio, and what to check."""
    row = lambda *cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    ok = lambda name: isinstance(results.get(name), dict) and "error" not in results[name]  # noqa: E731
    lines = [row("step", "gpt2kit", "peer", "ratio", "notes"), "|---|---:|---:|---:|---|"]
    if ok("train"):
        t = results["train"]
        mfu = f", MFU {t['mfu']['gpt2kit']:.1%}" if t["mfu"] else ""
        lines.append(row(
            f"train ({t['case']})", f"{t['tokens_per_s']['gpt2kit']:,.0f} tok/s{mfu}",
            f"{t['tokens_per_s']['transformers']:,.0f} tok/s", f"{t['ratio_gpt2kit_over_transformers']:.2f}x",
            f"targets {t['targets']}",
        ))  # fmt: skip
    if ok("ddp"):
        d = results["ddp"]
        losses = f"{d['steps']} steps, loss {d['first_loss']:.3f} -> {d['last_loss']:.3f}"
        lines.append(row("torchrun DDP, 1 process", losses, "-", "-", f"process group {d['process_group']}"))
    if ok("generate"):
        for batch, g in results["generate"].items():
            lines.append(row(
                f"generate, {batch}", f"{g['gpt2kit_tokens_per_s']:,.1f} tok/s",
                f"{g['transformers_tokens_per_s']:,.1f} tok/s (static cache)", f"{g['ratio']:.2f}x",
                f"identical {g['identical_sequences']}",
            ))  # fmt: skip
    if ok("lambada"):
        e = results["lambada"]
        lines.append(row(
            f"LAMBADA, {e['examples']} examples", f"{e['gpt2kit_examples_per_s']:,.1f} ex/s",
            f"{e['lm_eval_examples_per_s']:,.1f} ex/s (lm-eval HF)", f"{e['speedup']:.2f}x",
            f"acc {e['acc_last_word'][0]:.4f} vs {e['acc_last_word'][1]:.4f}",
        ))  # fmt: skip
    failed = {name: value["error"] for name, value in results.items() if isinstance(value, dict) and "error" in value}
    lines += [row(name, "failed", "", "", error) for name, error in failed.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every step on the CPU at tiny sizes")
    parser.add_argument("--out", default="gpu-results.json")
    parser.add_argument("--steps", default="train,ddp,generate,lambada")
    args = parser.parse_args()
    import torch

    plan = SMOKE if args.smoke else FULL
    device = torch.device(plan["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --smoke for the CPU rehearsal", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "step_seconds": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = {
            "train": lambda: step_train(plan, device),
            "ddp": lambda: step_ddp(plan, device, work),
            "generate": lambda: step_generate(plan, device, work),
            "lambada": lambda: step_lambada(plan, device),
        }
        for name in args.steps.split(","):
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            try:
                results[name] = steps[name]()
            except Exception as err:  # one failed step must not cost the others on a one-shot GPU
                traceback.print_exc()
                results[name] = {"error": f"{type(err).__name__}: {str(err)[-500:]}"}
            results["step_seconds"][name] = round(time.perf_counter() - start, 1)
            Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")  # after every step
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\n{results['device']}, torch {results['torch']}, {results['seconds']} s -> {args.out}")
    print(table(results))
    return 1 if any("error" in value for value in results.values() if isinstance(value, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
