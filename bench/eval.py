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
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import gpt2kit
    from gpt2kit.evals import EvalOptions, evaluate

    torch.manual_seed(0)
    tokenizer = gpt2kit.Tokenizer.gpt2()
    passages = lambada_passages(args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / args.preset
        gpt2kit.save(gpt2kit.GPT(gpt2kit.preset_config(args.preset)), tokenizer, model_dir)
        data = Path(tmp) / "lambada_test.jsonl"
        data.write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))

        loaded = gpt2kit.load(model_dir)
        options = EvalOptions(batch_size=args.batch_size)
        evaluate(loaded.model, loaded.tokenizer, ["lambada"], {"lambada": data}, options=options, limit=4)  # warm-up
        start = time.perf_counter()
        ours = evaluate(loaded.model, loaded.tokenizer, ["lambada"], {"lambada": data}, options=options)["lambada"]
        ours_time = time.perf_counter() - start

        hf = HFLM(pretrained=str(model_dir), device="cpu", batch_size=args.batch_size)
        requests = [
            Instance("loglikelihood", {}, (p.rsplit(" ", 1)[0], " " + p.rsplit(" ", 1)[1]), i)
            for i, p in enumerate(passages)
        ]
        hf.loglikelihood(requests[:4], disable_tqdm=True)  # warm-up
        start = time.perf_counter()
        theirs = hf.loglikelihood(requests, disable_tqdm=True)
        theirs_time = time.perf_counter() - start

    n = len(passages)
    tokens = sum(len(tokenizer.encode(p)) for p in passages)
    their_acc = sum(greedy for _, greedy in theirs) / n
    their_ppl = math.exp(-sum(logprob for logprob, _ in theirs) / n)
    threads = torch.get_num_threads()
    print(
        f"LAMBADA, {n} passages ({tokens:,} tokens), preset {args.preset} (random weights), batch {args.batch_size}, {threads} threads"
    )
    print(f"  gpt2kit evaluate      {n / ours_time:8.1f} examples/s  {tokens / ours_time:9.0f} tokens/s")
    print(f"  lm-eval HFLM          {n / theirs_time:8.1f} examples/s  {tokens / theirs_time:9.0f} tokens/s")
    print(f"  speedup               {theirs_time / ours_time:8.2f}x")
    print(
        f"  agreement: acc_last_word {ours['metrics']['acc_last_word']:.4f} vs {their_acc:.4f}, "
        f"ppl {ours['metrics']['ppl']:.6g} vs {their_ppl:.6g}"
    )


if __name__ == "__main__":
    main()
