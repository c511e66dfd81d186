"""bench/gpu.sh --smoke: the GPU acceptance script runs every step on the CPU, so it is ready when a GPU is lent."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_gpu_script_smoke_runs_every_step(tmp_path):
    out = tmp_path / "gpu-results.json"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["smoke"] is True and results["device"] == "cpu (smoke)"
    for step in ("train", "ddp", "generate", "lambada"):
        assert "error" not in results[step], results[step]
    train = results["train"]
    assert train["tokens_per_s"]["gpt2kit"] > 0 and train["tokens_per_s"]["transformers"] > 0
    assert 0 < train["mfu"]["gpt2kit"] < 1
    ddp = results["ddp"]
    assert ddp["process_group"] == "gloo" and ddp["targets"]["loss falls"] and ddp["steps"] == 4
    for row in (value for key, value in results["generate"].items() if key.startswith("batch")):
        same, total = map(int, row["identical_sequences"].split("/"))
        assert same == total and row["ratio"] > 0  # greedy tokens equal transformers'
    lambada = results["lambada"]
    assert abs(lambada["ppl"][0] - lambada["ppl"][1]) <= 1e-3 * lambada["ppl"][1]  # the same scores as lm-eval
    assert "| torchrun DDP, 1 process |" in done.stdout and "| LAMBADA, 8 examples |" in done.stdout
