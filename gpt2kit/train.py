"""Pretraining and fine-tuning: the objective -sum log p(s_i | s_<i) on prepared token shards.

One process or many under torchrun (DDP, or FSDP2 for models that do not fit
one device). Every step sees `batch_tokens` tokens: each rank runs
`accumulation_steps` micro-batches of its disjoint share of the step's windows.
AdamW (decay on matrices only), linear warmup then cosine decay to a floor,
global-norm clipping, a guard that skips non-finite steps, evaluation on the
validation shards, and checkpoints in the HF layout plus a training-state file
from which `resume=True` continues bit for bit (CPU, fixed seed).

Rank 0 alone writes metrics and checkpoints; every rank reads the checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError

from gpt2kit.checkpoint import CheckpointError, load, save
from gpt2kit.config import ConfigError
from gpt2kit.data.loader import TokenWindows, WindowLoader, eval_indices
from gpt2kit.data.shards import TOKENIZER_DIR, load_manifest
from gpt2kit.device import resolve_device, reuse_freed_cpu_memory, select_dtype
from gpt2kit.io import atomic_directory, atomic_write_text, remove_stale_temporaries
from gpt2kit.mfu import Utilisation, flops_per_token
from gpt2kit.model import GPT, preset_config
from gpt2kit.outputs import TRAINING_RUN, DirectoryClaim, claim_directory
from gpt2kit.parallelize import DistEnv, gradient_sync, init_distributed, parallelize, shutdown_distributed
from gpt2kit.tokenizer import Tokenizer
from gpt2kit.train_config import OptimConfig, TrainConfig
from gpt2kit.training_run import (
    CHECKPOINT_DIR,
    FINAL_DIR,
    METRICS_FILE,
    STATE_FILE,
    TrainingError,
    capture_rng,
    check_resumable,
    checkpoint_path,
    checkpoints,
    load_training_state,
    prune_checkpoints,
    publish_final,
    restore_rng,
    resume_checkpoint,
    write_training_state,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    loss: float | None
    val_loss: float | None
    checkpoint: Path | None


# -- schedule and optimizer ----------------------------------------------------------------


def learning_rate(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Linear warmup over steps 1..warmup_steps, then cosine decay to min_lr at decay_steps (default max_steps)."""
    if step <= optim.warmup_steps:
        return optim.lr * step / optim.warmup_steps
    decay_steps = optim.decay_steps or max_steps
    progress = min(1.0, (step - optim.warmup_steps) / max(1, decay_steps - optim.warmup_steps))
    return optim.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (>= 2-D: embeddings and linear weights), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = optim.fused and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=fused or None)


# -- metrics -------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (one JSON object per line), plus TensorBoard and W&B when asked for and installed."""

    def __init__(self, run_dir: Path, config: TrainConfig, resume_step: int | None):
        self.path = run_dir / METRICS_FILE
        if resume_step is None:
            self.path.write_text("")
        else:
            # Drop what the interrupted run logged after its last checkpoint: those steps are redone.
            kept = []
            if self.path.exists():
                for line in self.path.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        if json.loads(line).get("step", 0) <= resume_step:
                            kept.append(line + "\n")
            atomic_write_text(self.path, "".join(kept))
        self.handle = open(self.path, "a", encoding="utf-8")
        self.tensorboard = None
        self.wandb = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard=true but tensorboard is not installed; logging to metrics.jsonl only")
        if config.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=config.wandb_project, config=config.to_dict(), dir=str(run_dir))
            except ImportError:
                log.warning("wandb=true but wandb is not installed; logging to metrics.jsonl only")

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "tokens")}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])

    def close(self) -> None:
        self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


# -- the trainer ---------------------------------------------------------------------------------


class Trainer:
    """One training run (or its continuation); `run()` trains to `config.max_steps`."""

    def __init__(self, config: TrainConfig, resume: bool = False, env: DistEnv | None = None):
        self.claim: DirectoryClaim | None = None
        try:
            self._init(config, resume, env)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let another process write the run directory (run() ends with this)."""
        if self.claim is not None:
            self.claim.release()

    def _init(self, config: TrainConfig, resume: bool, env: DistEnv | None) -> None:
        config.check()
        self.config = config
        self.env = env or DistEnv.from_environment()
        self.device = resolve_device(config.device, self.env.local_rank)
        self.dtype, why = select_dtype(config.dtype, self.device)
        if self.env.is_main:
            name = str(self.dtype).removeprefix("torch.")
            log.info("dtype %s: %s", name if self.dtype == torch.float32 else f"{name} autocast", why)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if self.device.type == "cpu":
            reuse_freed_cpu_memory()  # a step's large tensors reuse the last step's pages (see its notes)
        init_distributed(self.env, self.device)
        self.run_dir = Path(config.out)
        if self.env.is_main:
            # One writer per run directory: the lock is held until close(), and taken before anything is cleared.
            self.claim = claim_directory(self.run_dir, TRAINING_RUN)
            removed = remove_stale_temporaries(self.run_dir / CHECKPOINT_DIR)
            removed += remove_stale_temporaries(self.run_dir, [FINAL_DIR])
            if removed:
                log.info("%s: removed %d partial checkpoints of an interrupted run", self.run_dir, removed)
        self.state: dict | None = None
        self.checkpoint: Path | None = None
        self._load_resume_state(resume)

        self.manifest = load_manifest(config.data)
        self.model, self.tokenizer = self._build_model()
        n_positions = self.model.config.n_positions
        self.context = config.context_length or n_positions
        if self.context > n_positions:
            raise ConfigError(f"config: context_length {self.context} exceeds the model's context of {n_positions}")
        self.accumulation = config.accumulation_steps(self.context, self.env.world_size)
        self.model.to(self.device)
        self.train_module = parallelize(
            self.model,
            self.env,
            self.device,
            strategy=config.parallelism,
            compile=config.compile,
            param_dtype=self.dtype if self.dtype != torch.float32 else None,
        )
        self.optimizer = build_optimizer(self.model, config.optim, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.scaler_skipped = False  # whether the last step's update was skipped by the grad scaler

        windows = TokenWindows(config.data, "train", self.context, self.manifest)
        self.loader = WindowLoader(
            windows,
            config.batch_tokens // self.context,
            seed=config.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
        )
        self.val_windows = None
        if config.eval_interval:
            self.val_windows = TokenWindows(config.data, "val", self.context, self.manifest)
            if len(eval_indices(len(self.val_windows), config.eval_windows, 0, self.env.world_size)) == 0:
                raise TrainingError(
                    f"{config.data}: the validation split has too few windows of {self.context} tokens; "
                    "prepare it with a larger val_fraction, or set eval_interval=0"
                )
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.bad_steps = 0
        if self.state is not None:
            self._restore(self.state)
        else:
            torch.manual_seed(config.seed + self.env.rank)  # dropout masks differ between ranks
        self.flops_per_token = flops_per_token(self.model.config, self.context)
        self.utilisation = Utilisation(self.device, self.dtype) if self.env.is_main else None

    # -- setup ------------------------------------------------------------------------------------
    def _load_resume_state(self, resume: bool) -> None:
        self.checkpoint = resume_checkpoint(self.run_dir, resume)
        if self.checkpoint is not None:
            self.state = load_training_state(self.checkpoint)
            saved = TrainConfig.from_dict(self.state["config"], f"{self.checkpoint / STATE_FILE}")
            self._keep_schedule(saved)
            self._fit_warmup()
            check_resumable(saved, self.config)
        else:
            self._fit_warmup()

    def _keep_schedule(self, saved: TrainConfig) -> None:
        """A resumed run with a new max_steps keeps the schedule it was trained with: the cosine still ends
        where it did (decay_steps pinned to the old end) and the run goes on at min_lr from there, rather than
        jumping back up a new cosine. Setting optim.decay_steps yourself re-plans it."""
        optim, before = self.config.optim, saved.optim
        horizon = before.decay_steps or saved.max_steps
        if optim.decay_steps and optim.decay_steps != horizon:
            log.warning(
                "resume: optim.decay_steps %d re-plans the learning-rate decay (it was %d)", optim.decay_steps, horizon
            )
            before.decay_steps = optim.decay_steps  # an explicit re-plan is allowed
            return
        if self.config.max_steps != saved.max_steps or before.decay_steps:
            optim.decay_steps = before.decay_steps = horizon  # the same schedule, said explicitly
        if self.config.max_steps != saved.max_steps:
            if self.config.max_steps > horizon:
                log.warning(
                    "resume: max_steps %d -> %d: the learning rate keeps its schedule, which ends at step %d, and "
                    "stays at min_lr %.3g after it (set optim.decay_steps to re-plan the decay)",
                    saved.max_steps, self.config.max_steps, horizon, optim.min_lr,
                )  # fmt: skip
            else:
                log.warning("resume: max_steps %d -> %d: the run stops before its schedule ends (step %d)",
                            saved.max_steps, self.config.max_steps, horizon)  # fmt: skip

    def _fit_warmup(self) -> None:
        """A run shorter than its warmup never reaches its peak learning rate: warm up for a tenth of it."""
        optim = self.config.optim
        horizon = optim.decay_steps or self.config.max_steps
        if optim.warmup_steps >= horizon:
            fitted = max(1, horizon // 10)
            log.warning(
                "optim.warmup_steps %d is not shorter than the %d-step schedule, so the learning rate would never "
                "reach optim.lr; warming up for %d step%s (a tenth) instead",
                optim.warmup_steps, horizon, fitted, "" if fitted == 1 else "s",
            )  # fmt: skip
            optim.warmup_steps = fitted

    def _data_tokenizer(self) -> Tokenizer:
        tokenizer = Tokenizer.from_dir(Path(self.config.data) / TOKENIZER_DIR)
        if tokenizer.sha256 != self.manifest.tokenizer["sha256"]:
            raise TrainingError(f"{self.config.data}/{TOKENIZER_DIR}: does not match the manifest's tokenizer")
        return tokenizer

    def _build_model(self) -> tuple[GPT, Tokenizer]:
        config = self.config
        source = self.checkpoint if self.checkpoint is not None else config.init_from
        if source is not None:
            try:
                loaded = load(source)
            except CheckpointError as err:
                raise TrainingError(f"cannot load the model to start from: {err}") from None
            # Rebuild with this run's dropout; the weights move over without a copy.
            with torch.device("meta"):
                model = GPT(replace(loaded.model.config, dropout=config.dropout))
            model.load_state_dict(loaded.model.state_dict(), assign=True)
            tokenizer = loaded.tokenizer
        else:
            tokenizer = self._data_tokenizer()
            multiple = config.vocab_multiple
            vocab = -(-tokenizer.vocab_size // multiple) * multiple
            overrides = {"vocab_size": vocab, "dropout": config.dropout}
            if config.context_length:
                overrides["n_positions"] = config.context_length
            torch.manual_seed(config.seed)  # every rank builds the same initial weights
            model = GPT(preset_config(config.preset, **overrides))
        if tokenizer.sha256 != self.manifest.tokenizer["sha256"]:
            raise TrainingError(
                f"{config.data}: tokenized with {self.manifest.tokenizer['name']!r} "
                f"(sha256 {self.manifest.tokenizer['sha256'][:12]}...), but the model's tokenizer "
                f"{tokenizer.name!r} differs (sha256 {tokenizer.sha256[:12]}...); "
                "prepare the data with the model directory as its tokenizer"
            )
        return model, tokenizer

    def _restore(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        rng = state["rng"]
        restore_rng(rng[self.env.rank] if self.env.rank < len(rng) else rng[0], self.device)
        self.step = state["step"]
        self.tokens = state["tokens"]
        self.elapsed = state["elapsed_s"]
        self.bad_steps = state["bad_steps"]
        if self.step >= self.config.max_steps:
            log.warning(
                "the checkpoint is at step %d, max_steps is %d: nothing to do", self.step, self.config.max_steps
            )

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.env.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    # -- steps --------------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, bool]:
        """One optimizer step; returns (loss, grad norm, whether the update was applied)."""
        inputs, targets = self.loader.next_batch()
        micro = self.config.micro_batch_size
        loss_sum = torch.zeros((), device=self.device)
        for i in range(self.accumulation):
            x = inputs[i * micro : (i + 1) * micro].to(self.device, non_blocking=True)
            y = targets[i * micro : (i + 1) * micro].to(self.device, non_blocking=True)
            with gradient_sync(self.train_module, enabled=i == self.accumulation - 1):
                with self._autocast():
                    loss = self.train_module(x, targets=y)
                self.scaler.scale(loss / self.accumulation).backward()
            loss_sum += loss.detach().float()
        loss_mean = self._all_reduce_sum(loss_sum / self.accumulation) / self.env.world_size
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip or math.inf)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 shards the norm as a DTensor
            grad_norm = grad_norm.full_tensor()
        loss_value, norm_value = loss_mean.item(), grad_norm.item()
        # The fp16 grad scaler skips steps with inf gradients itself; only the loss decides there.
        finite = math.isfinite(loss_value) and (self.scaler.is_enabled() or math.isfinite(norm_value))
        self.scaler_skipped = False
        if finite:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if scale is not None and self.scaler.get_scale() < scale:  # it found inf gradients and backed off
                self.scaler_skipped, finite = True, False
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, finite

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over eval_windows validation windows spread over the split, with perplexity and bits per byte."""
        indices = eval_indices(len(self.val_windows), self.config.eval_windows, self.env.rank, self.env.world_size)
        module = self.model  # unwrapped: no gradient hooks (FSDP2 shards it in place, so it still gathers)
        module.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for start in range(0, len(indices), self.config.micro_batch_size):
            x, y = self.val_windows.batch(indices[start : start + self.config.micro_batch_size])
            with self._autocast():
                loss = module(x.to(self.device), targets=y.to(self.device))
            total[0] += loss.double() * y.numel()
            total[1] += y.numel()
        module.train()
        total = self._all_reduce_sum(total)
        val_loss = (total[0] / total[1]).item()
        bytes_per_token = self.manifest.split_stats("val").bytes_per_token
        return {
            "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 700.0)),
            "val_bpb": val_loss / math.log(2) / bytes_per_token if bytes_per_token else None,
        }

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step-N (HF layout + training state) atomically; keep the newest K. Rank 0 writes."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        sharded = self.config.parallelism == "fsdp" and self.env.distributed
        weights = get_model_state_dict(self.model, options=options) if sharded else None
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        rng = [capture_rng(self.device)]
        if self.env.distributed:
            gathered: list = [None] * self.env.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        path = None
        if self.env.is_main:
            model = self.model
            if sharded:
                with torch.device("meta"):
                    model = GPT(self.model.config)
                model.load_state_dict(weights, assign=True)
            path = checkpoint_path(self.run_dir, self.step)
            try:
                self._write_checkpoint(path, model, optimizer_state, rng)
            except (OSError, RuntimeError, SafetensorError, CheckpointError) as err:
                # A full disk surfaces as any of these; the atomic write left older checkpoints as they were.
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise TrainingError(
                    f"{path}: cannot write the checkpoint ({reason}); older checkpoints are intact"
                ) from None
            prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        if self.env.distributed:
            dist.barrier()
        return path

    def _write_checkpoint(self, path: Path, model: GPT, optimizer_state: dict, rng: list) -> None:
        with atomic_directory(path) as tmp:
            save(model, self.tokenizer, tmp)
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "elapsed_s": self.elapsed,
                "bad_steps": self.bad_steps,
                "config": self.config.to_dict(),
                "optimizer": optimizer_state,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": rng,
                "loader": self.loader.state_dict(),
                "world_size": self.env.world_size,
            }
            write_training_state(tmp, state)

    def _step_record(self, loss: float, lr: float, grad_norm: float, tokens_per_s: float, applied: bool) -> dict:
        mfu = None
        if self.utilisation is not None:
            mfu = self.utilisation(tokens_per_s * self.flops_per_token / self.env.world_size)
        record = {
            "step": self.step,
            "tokens": self.tokens,
            "loss": loss if math.isfinite(loss) else None,
            "lr": lr,
            "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "elapsed": self.elapsed,
        }
        if not applied:
            record["skipped"] = True
        return record

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> TrainResult:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        config = self.config
        main = self.env.is_main
        metrics = None
        if main:
            atomic_write_text(self.run_dir / "train_config.json", json.dumps(config.to_dict(), indent=2))
            metrics = MetricsLog(self.run_dir, config, self.step if self.state is not None else None)
            if self.state is not None:
                log.info("resumed from %s (step %d)", self.checkpoint, self.step)
        bar = tqdm(
            total=config.max_steps, initial=self.step, desc="train", unit="step", disable=not (main and config.progress)
        )
        last_loss = last_val = None
        # tokens/s covers training only: time spent evaluating and checkpointing is set aside.
        interval_start, interval_tokens, paused = time.perf_counter(), 0, 0.0
        segment_start, elapsed_before = time.perf_counter(), self.elapsed
        with contextlib.ExitStack() as cleanup:
            if main and config.progress:  # log lines (validation loss, warnings) above the bar, not through it
                cleanup.enter_context(logging_redirect_tqdm())
            if metrics is not None:
                cleanup.callback(metrics.close)
            cleanup.callback(bar.close)
            self.model.train()
            while self.step < config.max_steps:
                self.step += 1
                lr = learning_rate(self.step, config.optim, config.max_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, grad_norm, applied = self.train_step()
                self.tokens += config.batch_tokens
                interval_tokens += config.batch_tokens
                self.elapsed = elapsed_before + time.perf_counter() - segment_start
                # An fp16 overflow is the grad scaler finding its scale, not a bad step.
                self.bad_steps = 0 if applied or self.scaler_skipped else self.bad_steps + 1
                if applied:
                    last_loss = loss
                elif self.scaler_skipped:
                    log.info(
                        "step %d: fp16 gradients overflowed: update skipped, loss scale now %g",
                        self.step, self.scaler.get_scale(),
                    )  # fmt: skip
                else:
                    log.warning(
                        "step %d: loss %s, gradient norm %s: update skipped (%d bad in a row)",
                        self.step,
                        loss,
                        grad_norm,
                        self.bad_steps,
                    )
                last_step = self.step == config.max_steps
                if main and (self.step % config.log_interval == 0 or last_step or not applied):
                    seconds = max(time.perf_counter() - interval_start - paused, 1e-9)
                    metrics.write(self._step_record(loss, lr, grad_norm, interval_tokens / seconds, applied))
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                    interval_start, interval_tokens, paused = time.perf_counter(), 0, 0.0
                if self.bad_steps >= config.max_bad_steps:
                    raise TrainingError(
                        f"stopping at step {self.step}: {self.bad_steps} steps in a row had a non-finite loss "
                        "or gradient; lower optim.lr, check the data, or resume from an earlier checkpoint"
                    )
                pause_start = time.perf_counter()
                if self.val_windows is not None and (self.step % config.eval_interval == 0 or last_step):
                    values = self.evaluate()
                    last_val = values["val_loss"]
                    if main:
                        metrics.write({"step": self.step, "tokens": self.tokens, **values, "elapsed": self.elapsed})
                        bpb = f", {values['val_bpb']:.3f} bits/byte" if values["val_bpb"] is not None else ""
                        log.info("step %d: val_loss %.4f (ppl %.2f%s)", self.step, last_val, values["val_ppl"], bpb)
                if (config.checkpoint_interval and self.step % config.checkpoint_interval == 0) or last_step:
                    self.save_checkpoint()
                paused += time.perf_counter() - pause_start
                bar.update(1)
        found = checkpoints(self.run_dir) if main else []
        if main and found and self.step == config.max_steps:
            log.info("final model: %s", publish_final(self.run_dir, found[-1]))
        return TrainResult(self.run_dir, self.step, self.tokens, last_loss, last_val, found[-1] if found else None)


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or continue) training as `config` says.

    Under torchrun it joins the process group and leaves it at the end, unless the caller had already joined
    (as a sweep does: a group destroyed and re-created on torchrun's store can hang on stale rendezvous keys).
    """
    joins_group = not dist.is_initialized()
    try:
        return Trainer(config, resume=resume).run()
    finally:
        if joins_group:
            shutdown_distributed()
