import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import small_train_config

from gpt2kit.data.loader import TokenWindows, WindowLoader
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.train import Trainer, build_optimizer, learning_rate
from gpt2kit.train_config import TrainConfig
from gpt2kit.training_run import STATE_FILE, TrainingError, checkpoints

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 32


def tiny_config(data_dir: Path, out: Path, **fields) -> TrainConfig:
    """`small_train_config` grown to a cpu-1m model that learns in 30 steps (two micro-batches a step), with
    validation and checkpoints every 10."""
    config = small_train_config(data_dir, out, preset="cpu-1m", context_length=CONTEXT, max_steps=30,
                                batch_tokens=8 * CONTEXT, eval_interval=10, eval_windows=8, checkpoint_interval=10,
                                keep_checkpoints=2)  # fmt: skip
    config.optim.lr, config.optim.min_lr, config.optim.warmup_steps = 3e-3, 3e-4, 3
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture(autouse=True)
def restore_threads():
    """Runs set torch's thread count (num_threads=1); give the rest of the session its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_schedule_and_optimizer_groups():
    config = TrainConfig()
    config.optim.lr, config.optim.min_lr, config.optim.warmup_steps = 1.0, 0.1, 10
    assert learning_rate(5, config.optim, 110) == pytest.approx(0.5)
    assert learning_rate(10, config.optim, 110) == pytest.approx(1.0)
    assert learning_rate(60, config.optim, 110) == pytest.approx(0.55)
    assert learning_rate(110, config.optim, 110) == pytest.approx(0.1)
    assert learning_rate(500, config.optim, 110) == pytest.approx(0.1)  # the floor
    model = GPT(GPTConfig(vocab_size=50, n_positions=16, n_layer=2, n_head=2, n_embd=16))
    optimizer = build_optimizer(model, config.optim, torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["fused"] is True


def test_fused_loss_matches_logits_and_cross_entropy():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, n_positions=32, n_layer=2, n_head=2, n_embd=32))
    idx, targets = torch.randint(0, 300, (3, 20)), torch.randint(0, 300, (3, 20))
    fused = model(idx, targets=targets)
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(idx)
    assert logits.shape == (3, 20, 300)
    plain = F.cross_entropy(logits.view(-1, 300), targets.view(-1))
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), abs=1e-6)
    for name, param in model.named_parameters():
        assert torch.allclose(fused_grads[name], param.grad, atol=1e-6), name
    with torch.no_grad():
        assert model(idx, targets=targets).item() == pytest.approx(plain.item(), abs=1e-6)


def test_short_run_loss_falls_and_writes_metrics_checkpoints(data_dir, tmp_path, caplog):
    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="gpt2kit")
    result = Trainer(tiny_config(data_dir, run)).run()
    records = read_metrics(run)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 31))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed"):
        assert key in train[0]
    assert train[-1]["tokens"] == 30 * 8 * CONTEXT
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(math.isclose(r["val_ppl"], math.exp(r["val_loss"])) and r["val_bpb"] > 0 for r in evals)
    shown = [r.getMessage() for r in caplog.records if "val_loss" in r.getMessage()]  # on the console too
    assert shown[0] == (
        f"step 10: val_loss {evals[0]['val_loss']:.4f} (ppl {evals[0]['val_ppl']:.2f}, {evals[0]['val_bpb']:.3f} bits/byte)"
    )
    assert len(shown) == 3
    assert train[-1]["loss"] < train[0]["loss"] - 1.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert result.step == 30 and result.val_loss == evals[-1]["val_loss"]
    kept = checkpoints(run)
    assert [p.name for p in kept] == ["step-00000020", "step-00000030"]  # keep_checkpoints=2
    import gpt2kit

    loaded = gpt2kit.load(kept[-1])
    assert loaded.model.config.n_positions == CONTEXT and loaded.tokenizer.vocab_size == 372
    state = torch.load(kept[-1] / STATE_FILE, weights_only=True)
    assert state["step"] == 30 and state["loader"]["cursor"] > 0 and "optimizer" in state

    from gpt2kit.study.report import plot_run

    png = plot_run(run)
    assert png == run / "loss.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from gpt2kit.cli import main

    png.unlink()
    assert main(["plot", str(run)]) == 0 and png.exists()


def test_sigkill_then_resume_gives_bit_identical_losses(data_dir, tmp_path):
    settings = dict(max_steps=60, eval_interval=20, checkpoint_interval=10, keep_checkpoints=10)
    reference = tmp_path / "uninterrupted"
    Trainer(tiny_config(data_dir, reference, **settings)).run()

    run = tmp_path / "killed"
    config = tiny_config(data_dir, run, **settings)
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(config.to_dict()))
    command = [sys.executable, "-c", "import json,sys; from gpt2kit.train_config import TrainConfig; from gpt2kit.train import train; "
               "train(TrainConfig.from_dict(json.load(open(sys.argv[1]))))", str(config_file)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run / "checkpoints" / "step-00000010" / STATE_FILE
    deadline = time.monotonic() + 300
    while not first.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.005)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert still_running and process.returncode == -signal.SIGKILL
    saved = [int(p.name.split("-")[1]) for p in checkpoints(run)]
    assert saved and max(saved) < 60

    result = Trainer(tiny_config(data_dir, run, **settings), resume=True).run()
    assert result.step == 60
    resumed, expected = losses(run), losses(reference)
    assert sorted(resumed) == list(range(1, 61))  # no step logged twice, none missing
    assert resumed == expected  # every step, bit for bit
    vals = lambda d: [r["val_loss"] for r in read_metrics(d) if "val_loss" in r]
    assert vals(run) == vals(reference)


def test_resume_refuses_changed_config_and_corrupt_weights(data_dir, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(data_dir, run, max_steps=10, eval_interval=0)).run()
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        Trainer(tiny_config(data_dir, run, max_steps=20, eval_interval=0))
    changed = tiny_config(data_dir, run, max_steps=20, eval_interval=0)
    changed.optim.lr = 1e-2
    with pytest.raises(TrainingError, match=r"optim.lr differs from the checkpoint's config \(0.003 there, 0.01 now\)"):
        Trainer(changed, resume=True)
    extended = Trainer(tiny_config(data_dir, run, max_steps=15, eval_interval=0), resume=True).run()
    assert extended.step == 15
    latest = checkpoints(run)[-1]
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(TrainingError, match="not the weights this training state was saved with"):
        Trainer(tiny_config(data_dir, run, max_steps=20, eval_interval=0), resume=True)
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        Trainer(tiny_config(data_dir, tmp_path / "fresh"), resume=True)


def test_nan_guard_skips_bad_steps_then_stops(data_dir, tmp_path, caplog):
    config = tiny_config(data_dir, tmp_path / "run", max_steps=20, eval_interval=0, max_bad_steps=3, tensorboard=True)
    trainer = Trainer(config)
    model = trainer.model
    bad_steps = {3, 6, 7, 8}
    calls = {"n": 0}

    def poisoned(x, targets):
        calls["n"] += 1
        loss = model(x, targets=targets)
        step = (calls["n"] + 1) // trainer.accumulation
        return loss * float("nan") if step in bad_steps else loss

    trainer.train_module = poisoned
    before_bad = {}
    original_step = trainer.train_step

    def watched_step():
        if trainer.step == 3:
            before_bad.update({n: p.detach().clone() for n, p in model.named_parameters()})
        result = original_step()
        if trainer.step == 3:
            assert not result[2]
            assert all(torch.equal(before_bad[n], p) for n, p in model.named_parameters())  # no update applied
        return result

    trainer.train_step = watched_step
    with pytest.raises(TrainingError, match="stopping at step 8: 3 steps in a row had a non-finite loss"):
        trainer.run()
    records = read_metrics(tmp_path / "run")
    skipped = [r["step"] for r in records if r.get("skipped")]
    assert skipped == [3, 6, 7, 8]
    assert all(r["loss"] is None for r in records if r.get("skipped"))
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())
    assert "step 3: loss nan, gradient norm nan: update skipped (1 bad in a row)" in caplog.text
    # TensorBoard is optional: used when installed, a warning otherwise.
    if importlib.util.find_spec("tensorboard") is None:
        assert "tensorboard=true but tensorboard is not installed" in caplog.text
    else:
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_fine_tune_a_saved_transformers_model(data_dir, tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=tiny_tokenizer.vocab_size + 3, n_positions=CONTEXT, n_embd=64, n_layer=2, n_head=2
    )
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    tiny_tokenizer.save(tmp_path / "hf")
    config = tiny_config(data_dir, tmp_path / "run", init_from=str(tmp_path / "hf"), max_steps=15, eval_interval=15)
    Trainer(config).run()
    train = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    # Step 1 sees the loaded weights: its loss is the transformers model's loss on the first batch.
    windows = TokenWindows(data_dir, "train", CONTEXT)
    x, y = WindowLoader(windows, 8, seed=config.seed).next_batch()
    with torch.no_grad():
        logits = hf_model(x).logits
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    assert train[0]["loss"] == pytest.approx(expected, abs=1e-4)
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    import gpt2kit

    tuned = gpt2kit.load(checkpoints(tmp_path / "run")[-1])
    assert tuned.model.config.n_embd == 64 and tuned.tokenizer.sha256 == tiny_tokenizer.sha256


def test_init_from_with_another_tokenizer_is_refused(data_dir, tmp_path, gpt2_tokenizer):
    import gpt2kit

    model = GPT(GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=CONTEXT, n_layer=1, n_head=2, n_embd=16))
    gpt2kit.save(model, gpt2_tokenizer, tmp_path / "m")
    with pytest.raises(TrainingError, match=r"tokenized with 'trained' .*, but the model's tokenizer 'm' differs"):
        Trainer(tiny_config(data_dir, tmp_path / "run", init_from=str(tmp_path / "m")))


@pytest.mark.slow  # torchrun end to end: run by `make test-slow`, which CI runs too
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(data_dir, tmp_path, parallelism):
    steps = 8
    single = tmp_path / "single"
    Trainer(tiny_config(data_dir, single, max_steps=steps, eval_interval=steps, checkpoint_interval=0)).run()
    config = tmp_path / "c.toml"
    config.write_text('preset = "cpu-1m"\ndevice = "cpu"\ndtype = "float32"\nprogress = false\n')  # as tiny_config
    overrides = [
        f"context_length={CONTEXT}",
        f"batch_tokens={8 * CONTEXT}",
        "micro_batch_size=4",  # 2 ranks x 4 windows: one micro-batch each, the same 8 windows per step
        "log_interval=1",
        f"eval_interval={steps}",
        "eval_windows=8",
        "checkpoint_interval=0",
        "optim.lr=3e-3",
        "optim.min_lr=3e-4",
        "optim.warmup_steps=3",
        f"parallelism={parallelism}",
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2kit"]
    command += ["train", "--config", str(config), "--data", str(data_dir), "--out", str(tmp_path / "ddp")]
    command += ["--max-steps", str(steps), "--set", *overrides]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = losses(single), losses(tmp_path / "ddp")
    assert sorted(two) == list(range(1, steps + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
    val = lambda d: [r["val_loss"] for r in read_metrics(d) if "val_loss" in r]
    assert val(tmp_path / "ddp") == pytest.approx(val(single), abs=1e-5)
    assert checkpoints(tmp_path / "ddp")  # rank 0 wrote the final checkpoint


def test_cli_train_reports_config_errors_in_one_line_each(data_dir, tmp_path, capsys):
    from gpt2kit.cli import main

    config = tmp_path / "c.toml"
    config.write_text('preset = "cpu-1m"\n')
    argv = ["train", "--config", str(config), "--data", str(data_dir), "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", "optim.lr=-1", "dropout=2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "gpt2kit train: error: config: dropout must be in [0, 1), got 2.0",
        "config: optim.lr must be positive, got -1.0",
    ]
    assert main([*argv, "--set", "context_length=32", "batch_tokens=100"]) == 2
    assert "batch_tokens (100) must be a multiple of" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"gpt2kit plot: error: {tmp_path / 'nowhere' / 'metrics.jsonl'}: training metrics not found (not a training run?)"
    )


def lrs(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(run_dir) if "lr" in r}


def test_extending_a_finished_run_keeps_its_schedule(data_dir, tmp_path, caplog):
    import logging

    run = tmp_path / "run"
    Trainer(tiny_config(data_dir, run, max_steps=10, checkpoint_interval=5)).run()
    end_lr = lrs(run)[10]
    with caplog.at_level(logging.WARNING, logger="gpt2kit"):
        Trainer(tiny_config(data_dir, run, max_steps=16, checkpoint_interval=5), resume=True).run()
    assert "max_steps 10 -> 16" in caplog.text and "ends at step 10" in caplog.text
    after = lrs(run)
    assert all(after[step] == pytest.approx(3e-4) for step in range(11, 17))  # min_lr, no restarted cosine
    assert end_lr == pytest.approx(3e-4)
    # Resumed again with the original config file: the pinned schedule is kept, not refused.
    Trainer(tiny_config(data_dir, run, max_steps=18, checkpoint_interval=5), resume=True).run()
    assert lrs(run)[18] == pytest.approx(3e-4)
    # An explicit decay_steps re-plans the decay.
    config = tiny_config(data_dir, run, max_steps=24, checkpoint_interval=5)
    config.optim.decay_steps = 24
    Trainer(config, resume=True).run()
    assert lrs(run)[19] > 3e-4


def test_a_run_shorter_than_its_warmup_warms_up_for_a_tenth(data_dir, tmp_path, caplog):
    import logging

    config = tiny_config(data_dir, tmp_path / "run", max_steps=20, checkpoint_interval=0)
    config.optim.warmup_steps = 50
    with caplog.at_level(logging.WARNING, logger="gpt2kit"):
        Trainer(config).run()
    assert "warming up for 2 steps" in caplog.text
    rates = lrs(tmp_path / "run")
    assert rates[2] == pytest.approx(3e-3) and max(rates.values()) == pytest.approx(3e-3)


def test_a_cpu_training_step_reuses_the_last_steps_pages(data_dir, tmp_path, monkeypatch):
    # Fresh mmaps for large tensors fault in page by page every step; after the allocator setting a freed block can
    # be reused. Whether one block lands where the next fits depends on the heap's layout (in 10 processes, 8
    # reused it), so the setting must take effect in some of 5 processes and never without it. In child processes:
    # the setting is process-wide.
    probe = (
        "import resource, sys, torch\n"
        "from gpt2kit.device import reuse_freed_cpu_memory\n"
        "applied = sys.argv[1] == '1' and reuse_freed_cpu_memory()\n"
        "for _ in range(3): torch.zeros(40_000_000)\n"  # 160 MB, freed at once: three 'steps'
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "torch.zeros(40_000_000)\n"
        "print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def faults(setting: str) -> tuple[bool, int]:
        out = subprocess.run(
            [sys.executable, "-c", probe, setting], env=env, capture_output=True, text=True, check=True
        )
        applied, count = out.stdout.split()
        return applied == "True", int(count)

    without = [faults("0") for _ in range(2)]
    with_setting = [faults("1") for _ in range(5)]
    if all(applied for applied, _ in with_setting):  # glibc: without it, here 39,063 pages of 4 KiB fault in again
        # relative: huge pages or 64 KiB pages change the counts, not the gap
        assert min(count for _, count in with_setting) * 10 < min(count for _, count in without)
    calls = []
    monkeypatch.setattr("gpt2kit.train.reuse_freed_cpu_memory", lambda: calls.append(True))
    Trainer(tiny_config(data_dir, tmp_path / "run", max_steps=1)).close()
    assert calls == [True]
