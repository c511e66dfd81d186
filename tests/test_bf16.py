"""Training in bf16 on CPUs that compute it: the `auto` dtype's choice, bf16 against fp32, exact resume in bf16,
MFU against the peak of the dtype trained in, and a stored bf16 loss trajectory.

The golden file holds gpt2kit's losses for test_parity's setup (seeded weights and batch, ten AdamW steps) under
bf16 autocast on the CPU. Regenerate it only after checking why it moved:
GPT2KIT_UPDATE_GOLDEN=1 pytest tests/test_bf16.py
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from test_train import losses, read_metrics, restore_threads, tiny_config  # noqa: F401  (restore_threads: fixture)

import gpt2kit
from gpt2kit import device as device_module
from gpt2kit import mfu
from gpt2kit.device import cpu_flags, select_dtype
from gpt2kit.train import Trainer

GOLDEN = Path(__file__).parent / "golden" / "parity_adamw_10_steps_bf16.json"
CPU = torch.device("cpu")


@pytest.fixture
def peak_cache(tmp_path, monkeypatch):
    """A private peak cache: tests neither read nor write the user's measured peaks."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cpu_peak_flops.json"


def stub_flags(monkeypatch, flags: set[str]) -> None:
    monkeypatch.setattr(device_module, "cpu_flags", lambda: set(flags))


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"avx512f", "amx_tile", "amx_bf16"}, torch.bfloat16),
        ({"avx2", "avx512f", "avx512_vnni"}, torch.float32),  # AVX-512 without BF16: torch emulates bf16
        (set(), torch.float32),  # no /proc/cpuinfo: nothing proves bf16
    ],
)
def test_auto_picks_bf16_exactly_when_the_cpu_computes_it(monkeypatch, flags, expected):
    stub_flags(monkeypatch, flags)
    dtype, why = select_dtype("auto", CPU)
    assert dtype == expected
    assert ("natively" in why) == (expected == torch.bfloat16)
    # A dtype set explicitly is kept whatever the CPU.
    assert select_dtype("float32", CPU)[0] == torch.float32
    assert select_dtype("bfloat16", CPU)[0] == torch.bfloat16


@pytest.mark.parametrize("native", [True, False])
def test_the_run_log_says_which_dtype_and_why(data_dir, tmp_path, monkeypatch, caplog, peak_cache, native):
    stub_flags(monkeypatch, {"avx512f", "avx512_bf16"} if native else {"avx512f"})
    caplog.set_level(logging.INFO, logger="gpt2kit.train")
    trainer = Trainer(tiny_config(data_dir, tmp_path / "run", max_steps=1, dtype="auto"))
    assert trainer.dtype == (torch.bfloat16 if native else torch.float32)
    expected = (
        "dtype bfloat16 autocast: auto, this CPU computes bf16 natively (avx512_bf16)"
        if native
        else "dtype float32: auto, this CPU has no native bf16 (none of amx_bf16, avx512_bf16)"
    )
    assert expected in caplog.messages
    trainer.close()


def test_bf16_loss_tracks_fp32_over_30_steps(data_dir, tmp_path, monkeypatch, peak_cache):
    stub_flags(monkeypatch, {"avx512_bf16"})
    steps = 30

    def config(name, **fields):
        # A 10-step warmup: with 3, the tiny model's loss spikes at the peak rate, and where the spike lands is
        # chaotic in any rounding (fp32 with another thread count moves it too), not a measure of bf16.
        config = tiny_config(data_dir, tmp_path / name, max_steps=steps, **fields)
        config.optim.warmup_steps = 10
        return config

    fp32_run = Trainer(config("fp32", dtype="float32")).run().run_dir
    auto = Trainer(config("auto", dtype="auto"))
    assert auto.dtype == torch.bfloat16
    bf16_run = auto.run().run_dir
    fp32, bf16 = losses(fp32_run), losses(bf16_run)
    assert bf16[steps] < bf16[1] - 3.0  # it learns
    assert any(bf16[step] != fp32[step] for step in fp32)  # it really ran in bf16
    for step in range(1, steps + 1):
        assert bf16[step] == pytest.approx(fp32[step], rel=0.02), step
    fp32_val, bf16_val = (
        [r["val_loss"] for r in read_metrics(run) if "val_loss" in r][-1] for run in (fp32_run, bf16_run)
    )
    assert bf16_val == pytest.approx(fp32_val, rel=0.02)


def test_resume_in_bf16_is_exact(data_dir, tmp_path, peak_cache):
    settings = dict(max_steps=20, eval_interval=10, checkpoint_interval=10, dtype="bfloat16")

    def config(run, **fields):
        config = tiny_config(data_dir, run, **{**settings, **fields})
        config.optim.decay_steps = 20  # the same schedule for the run stopped at 10 and the whole one
        return config

    expected = losses(Trainer(config(tmp_path / "whole")).run().run_dir)
    run = tmp_path / "resumed"
    Trainer(config(run, max_steps=10)).run()
    result = Trainer(config(run), resume=True).run()
    assert result.step == 20
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, 21))
    assert all(resumed[step] == expected[step] for step in range(1, 21))  # bit for bit


def test_cpu_peak_is_measured_and_cached_per_dtype(monkeypatch, peak_cache):
    measured = {torch.float32: 2e11, torch.bfloat16: 8e11}
    calls = []

    def measure(dtype=torch.float32):
        calls.append(dtype)
        return measured[dtype]

    monkeypatch.setattr(mfu, "measure_cpu_peak_flops", measure)
    assert mfu.peak_flops(CPU, torch.float32) == 2e11
    assert mfu.peak_flops(CPU, torch.bfloat16) == 8e11
    assert mfu.peak_flops(CPU, torch.bfloat16) == 8e11  # from the cache
    assert calls == [torch.float32, torch.bfloat16]
    cache = json.loads(peak_cache.read_text())
    assert sorted(value for value in cache.values()) == [2e11, 8e11]
    assert any("dtype=bfloat16" in key for key in cache) and any("dtype=float32" in key for key in cache)


def test_gpu_peak_follows_the_dtype():
    assert mfu.gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert mfu.gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.float32) == 494e12


def test_mfu_never_passes_one_when_the_cached_peak_read_low(monkeypatch, peak_cache):
    # A peak measured while the cores were busy: training then runs faster than it.
    readings = iter([1e11, 3e11])
    monkeypatch.setattr(mfu, "measure_cpu_peak_flops", lambda dtype=torch.float32: next(readings))
    utilisation = mfu.Utilisation(CPU, torch.bfloat16)
    assert utilisation.peak == 1e11
    assert utilisation(5e10) == 0.5
    assert utilisation(2e11) == pytest.approx(2 / 3)  # measured again: 3e11
    assert utilisation(4e11) == 1.0  # still above: the rate itself is the peak this CPU reached
    assert utilisation(2e11) == 0.5
    assert max(json.loads(peak_cache.read_text()).values()) == 3e11


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trainer_mfu_is_against_its_own_dtype_peak_and_at_most_one(data_dir, tmp_path, peak_cache, dtype):
    trainer = Trainer(tiny_config(data_dir, tmp_path / "run", max_steps=5, eval_interval=0, dtype=dtype))
    assert trainer.utilisation.peak == mfu.cpu_peak_flops(getattr(torch, dtype))
    records = [r for r in read_metrics(trainer.run().run_dir) if "loss" in r]
    assert len(records) == 5 and all(0 < r["mfu"] <= 1 for r in records)


def test_ten_bf16_adamw_steps_follow_the_golden_losses(tmp_path, gpt2_tokenizer):
    from test_parity import GOLDEN as FP32_GOLDEN
    from test_parity import LR, STEPS, adamw_losses, batch, hf_reference

    hf = hf_reference(gpt2_tokenizer, tmp_path)
    ours = gpt2kit.load(tmp_path).model.train()
    idx = batch(gpt2_tokenizer.vocab_size)

    def forward(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(idx[:, :-1], targets=idx[:, 1:])

    def hf_forward(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(idx, labels=idx).loss

    our_losses = adamw_losses(ours, forward)
    hf_losses = adamw_losses(hf, hf_forward)
    if os.environ.get("GPT2KIT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"steps": STEPS, "lr": LR, "losses": our_losses}, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    fp32 = json.loads(FP32_GOLDEN.read_text())["losses"]
    assert golden["steps"] == STEPS and golden["lr"] == LR
    assert our_losses[-1] < our_losses[0] - 0.5  # it learns the batch
    for step, (ours_, theirs, stored, full) in enumerate(
        zip(our_losses, hf_losses, golden["losses"], fp32, strict=True)
    ):
        # bf16 kernels may round differently on another CPU generation (AMX against AVX-512 BF16).
        assert abs(ours_ - stored) < 2e-3 * stored, f"step {step}: gpt2kit {ours_} vs golden {stored}"
        assert abs(theirs - stored) < 1e-2 * stored, f"step {step}: transformers {theirs} vs golden {stored}"
        assert abs(stored - full) < 2e-2 * full, f"step {step}: bf16 golden {stored} vs fp32 golden {full}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_fused_loss_under_autocast_matches_autocasts_own_path(monkeypatch, dtype):
    from gpt2kit import model as model_module

    monkeypatch.setattr(model_module, "LOSS_CHUNK_LOGITS", 3 * 97)  # chunks of 3 rows: 14 rows make 5, one short
    torch.manual_seed(0)
    model = model_module.GPT(model_module.GPTConfig(vocab_size=97, n_positions=8, n_layer=1, n_head=2, n_embd=16))
    hidden = torch.randn(2, 7, 16)
    targets = torch.randint(0, 97, (2, 7))

    def loss_and_grads(fused: bool):
        model.zero_grad(set_to_none=True)
        h = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            if fused:
                loss = model.head(h, targets)
            else:
                logits = torch.nn.functional.linear(h, model.output_weight).float()
                loss = torch.nn.functional.cross_entropy(logits.view(-1, 97), targets.reshape(-1))
        (loss * 3.0).backward()  # a gradient scale, as a grad scaler would apply
        return loss.detach(), h.grad, model.output_weight.grad

    for got, want in zip(loss_and_grads(True), loss_and_grads(False), strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)
