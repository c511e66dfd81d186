"""The GPU path's parts that a CPU can prove: bf16 autocast, the fp16 grad scaler, torch.compile, FSDP2 mixed
precision against DDP (and resuming across them), and the arithmetic of the 8-GPU config."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import CONTEXT, losses, read_metrics, tiny_config

from gpt2kit.config import load_config
from gpt2kit.train import Trainer
from gpt2kit.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_fp16_grad_scaler_skips_an_overflowing_step_and_recovers(data_dir, tmp_path, caplog):
    trainer = Trainer(tiny_config(data_dir, tmp_path / "fp16", max_steps=12, dtype="float16"))
    assert trainer.scaler.is_enabled()
    # A scale of 2^40 makes the fp16 gradients overflow: the scaler must skip that update and back off.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, backoff_factor=2.0**-28)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    loss, _, applied = trainer.train_step()
    assert not applied and trainer.scaler_skipped and math.isfinite(loss)
    assert all(torch.equal(before[name], p) for name, p in trainer.model.named_parameters())  # untouched
    assert trainer.scaler.get_scale() == 2.0**12
    # The run goes on: overflow skips are the scaler finding its scale, not bad steps that stop training.
    result = trainer.run()
    records = [r for r in read_metrics(result.run_dir) if "loss" in r]
    assert len(records) == 12 and sum(bool(r.get("skipped")) for r in records) <= 2
    assert records[-1]["loss"] < records[0]["loss"] - 0.5


@pytest.mark.slow
def test_compile_trains_like_eager(data_dir, tmp_path):
    eager = losses(Trainer(tiny_config(data_dir, tmp_path / "eager", max_steps=5, eval_interval=5)).run().run_dir)
    compiled = Trainer(tiny_config(data_dir, tmp_path / "compiled", max_steps=5, eval_interval=5, compile=True))
    result = losses(compiled.run().run_dir)
    for step in eager:
        assert result[step] == pytest.approx(eager[step], abs=1e-4), step


def torchrun(data_dir: Path, out: Path, steps: int, parallelism: str, *extra: str) -> subprocess.CompletedProcess:
    config = out.parent / f"{out.name}.toml"
    config.write_text('preset = "cpu-1m"\ndevice = "cpu"\nprogress = false\n')
    overrides = [
        f"context_length={CONTEXT}", f"batch_tokens={8 * CONTEXT}", "micro_batch_size=4", "log_interval=1",
        f"eval_interval={steps}", "eval_windows=8", "checkpoint_interval=4", "optim.lr=3e-3", "optim.min_lr=3e-4",
        "optim.warmup_steps=3", f"parallelism={parallelism}", "dtype=bfloat16",
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2kit"]
    command += ["train", "--config", str(config), "--data", str(data_dir), "--out", str(out)]
    command += ["--max-steps", str(steps), *extra, "--set", *overrides]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_fsdp_mixed_precision_matches_ddp_and_resumes_across_them(data_dir, tmp_path):
    """bf16 under FSDP2 (MixedPrecisionPolicy: bf16 parameters, fp32 reduction) against DDP with bf16 autocast."""
    torchrun(data_dir, tmp_path / "ddp", 8, "ddp")
    torchrun(data_dir, tmp_path / "fsdp", 8, "fsdp")
    ddp, fsdp = losses(tmp_path / "ddp"), losses(tmp_path / "fsdp")
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=0.02), step
    # a checkpoint written under one resumes under the other: steps 5-8 continue from step 4's state
    for first, then in (("ddp", "fsdp"), ("fsdp", "ddp")):
        run = tmp_path / f"{first}-then-{then}"
        shutil.copytree(tmp_path / first, run)  # its step-4 checkpoint, written under `first`
        shutil.rmtree(run / "checkpoints" / "step-00000008")
        shutil.rmtree(run / "final")
        torchrun(data_dir, run, 8, then, "--resume")
        resumed = losses(run)
        for step in range(5, 9):
            assert resumed[step] == pytest.approx(losses(tmp_path / then)[step], rel=0.02), (first, then, step)


def test_the_8_gpu_config_adds_up():
    config = load_config(TrainConfig, "gpt2-124m-owt-8gpu", check=False)
    assert config.context_length == 1024 and config.batch_tokens == 512 * 1024  # the paper's 512 x 1024
    # every rank count gives the same tokens per step, through accumulation
    for ranks, accumulation in ((1, 32), (2, 16), (4, 8), (8, 4)):
        assert config.accumulation_steps(config.context_length, ranks) == accumulation
        assert accumulation * config.micro_batch_size * config.context_length * ranks == config.batch_tokens
    vocab = -(-50257 // config.vocab_multiple) * config.vocab_multiple
    assert vocab == 50304 and vocab % 64 == 0
    assert (config.dtype, config.compile, config.parallelism) == ("bfloat16", True, "ddp")
    with pytest.raises(Exception, match="batch_tokens"):
        config.accumulation_steps(config.context_length, 3)  # 3 ranks cannot split 524,288 tokens evenly
    config.data, config.out = "data", "run"  # as a run records it in train_config.json and its training state
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
