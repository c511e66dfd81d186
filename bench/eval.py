"""LAMBADA scoring throughput: gpt2kit's `evaluate` vs lm-evaluation-harness's HF backend, in one run.

Both read the same model directory (a CPU preset with random weights and the
GPT-2 vocabulary, saved in the HF layout) and score the same passages
(OpenAI-style "context" + " last word" requests). gpt2kit is timed through
`evaluate(["lambada"])`, which also reads the file and computes both
accuracies; lm-eval is timed on `HFLM.loglikelihood` alone. The two must agree
on the last-word accuracy and the target perplexity.

Usage: python bench/eval.py [--preset cpu-6m] [--limit 200] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED  # noqa: E402


def lambada_passages(limit: int) -> list[str]:
    """The shared LAMBADA dev passages, detokenized as OpenAI's test file is."""
    from gpt2kit.evals.detokenize import PTB_QUOTES

    lines = (SHARED / "lambada" / "lambada_development_plain_text.txt").read_text(encoding="utf-8").splitlines()
    return [PTB_QUOTES.detokenize_line(line) for line in lines if line.strip()][:limit]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="cpu-6m")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    run(args.preset, args.limit, args.batch_size, args.device)


def run(preset: str, limit: int, batch_size: int, device: str = "cpu") -> dict:
    """Score the same LAMBADA passages with both; print and return examples/s, the speed-up and the agreement."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import gpt2kit
    from gpt2kit.evals import EvalOptions, evaluate

    torch.manual_seed(0)
    tokenizer = gpt2kit.Tokenizer.gpt2()
    passages = lambada_passages(limit)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / preset
        gpt2kit.save(gpt2kit.GPT(gpt2kit.preset_config(preset)), tokenizer, model_dir)
        data = Path(tmp) / "lambada_test.jsonl"
        data.write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))

        loaded = gpt2kit.load(model_dir, device=device)
        options = EvalOptions(batch_size=batch_size)
        evaluate(loaded.model, loaded.tokenizer, ["lambada"], {"lambada": data}, options=options, limit=4)  # warm-up
        sync()
        start = time.perf_counter()
        ours = evaluate(loaded.model, loaded.tokenizer, ["lambada"], {"lambada": data}, options=options)["lambada"]
        sync()
        ours_time = time.perf_counter() - start
        del loaded

        hf = HFLM(pretrained=str(model_dir), device=device, batch_size=batch_size)
        requests = [
            Instance("loglikelihood", {}, (p.rsplit(" ", 1)[0], " " + p.rsplit(" ", 1)[1]), i)
            for i, p in enumerate(passages)
        ]
        hf.loglikelihood(requests[:4], disable_tqdm=True)  # warm-up
        sync()
        start = time.perf_counter()
        theirs = hf.loglikelihood(requests, disable_tqdm=True)
        sync()
        theirs_time = time.perf_counter() - start

    n = len(passages)
    tokens = sum(len(tokenizer.encode(p)) for p in passages)
    their_acc = sum(greedy for _, greedy in theirs) / n
    their_ppl = math.exp(-sum(logprob for logprob, _ in theirs) / n)
    threads = torch.get_num_threads()
    print(f"LAMBADA, {n} passages ({tokens:,} tokens), preset {preset} (random weights), batch {batch_size}, {device}, {threads} threads")  # fmt: skip
    print(f"  gpt2kit evaluate      {n / ours_time:8.1f} examples/s  {tokens / ours_time:9.0f} tokens/s")
    print(f"  lm-eval HFLM          {n / theirs_time:8.1f} examples/s  {tokens / theirs_time:9.0f} tokens/s")
    print(f"  speedup               {theirs_time / ours_time:8.2f}x")
    print(
        f"  agreement: acc_last_word {ours['metrics']['acc_last_word']:.4f} vs {their_acc:.4f}, "
        f"ppl {ours['metrics']['ppl']:.6g} vs {their_ppl:.6g}"
    )
    return {
        "examples": n,
        "gpt2kit_examples_per_s": n / ours_time,
        "lm_eval_examples_per_s": n / theirs_time,
        "speedup": theirs_time / ours_time,
        "acc_last_word": [ours["metrics"]["acc_last_word"], their_acc],
        "ppl": [ours["metrics"]["ppl"], their_ppl],
    }


if __name__ == "__main__":
    main()
