"""The training run's settings: `TrainConfig` (with its optimizer's `OptimConfig`), read through the config engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from gpt2kit.config import PER_CPU_LIMIT, Checked, ConfigError, cpu_limit, get_field
from gpt2kit.device import DEVICE_CHOICES, is_device_spec
from gpt2kit.model import PRESETS, preset_config


@dataclass
class OptimConfig:
    lr: float = 6e-4  # peak learning rate, reached after warmup
    min_lr: float = 6e-5  # the floor that cosine decay ends at
    warmup_steps: int = 100
    decay_steps: int | None = None  # steps from 0 to the floor; None means max_steps
    weight_decay: float = 0.1  # applied to matrices (>= 2-D parameters) only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global gradient norm limit; 0 disables clipping
    fused: bool = True  # the fused AdamW kernel where the device has one


@dataclass
class TrainConfig(Checked):
    data: str = ""  # a directory written by `gpt2kit prepare`
    out: str = ""  # the run directory: metrics.jsonl, checkpoints/, loss.png
    preset: str = "cpu-6m"  # model size, when not starting from init_from
    init_from: str | None = None  # a model directory or hub id to fine-tune (keeps its tokenizer)
    context_length: int | None = None  # tokens per window; None means the model's n_positions
    dropout: float = 0.0
    vocab_multiple: int = 1  # pad the embedding to a multiple of this (64 suits GPUs)
    seed: int = 1337  # the seed of initialisation, dropout and the data order
    max_steps: int = 1000  # optimizer steps to train for
    batch_tokens: int = 16384  # tokens per optimizer step, over all ranks and micro-batches
    micro_batch_size: int = 8  # sequences per forward pass on each rank
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_interval: int = 10  # steps between metrics.jsonl lines
    eval_interval: int = 100  # steps between validation runs; 0 disables them
    eval_windows: int = 64  # validation windows per evaluation, spread evenly over the val split
    checkpoint_interval: int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: int = 3  # the newest K checkpoints are kept
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 where computed natively, else fp32
    compile: bool = False  # torch.compile each block, applied from outside the model
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # how several ranks share the work (torchrun)
    max_bad_steps: int = 5  # non-finite steps in a row before the run stops
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True  # the progress bar
    tensorboard: bool = False  # also log to RUN_DIR/tensorboard, when tensorboard is installed
    wandb: bool = False  # also log to Weights & Biases, when wandb is installed
    wandb_project: str = "gpt2kit"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The settings that shape a run, in one line: model, context, steps, batch, learning rate, device."""
        model = f"init_from {self.init_from}" if self.init_from else f"preset {self.preset}"
        context = self.context_length or "the model's"
        return (
            f"{model}, context {context}, {self.max_steps:,} steps of {self.batch_tokens:,} tokens "
            f"(micro-batch {self.micro_batch_size}), lr {self.optim.lr:g}, device {self.device}, dtype {self.dtype}"
        )

    def problems(self) -> list[str]:
        """One line per bad field (empty when the config is valid)."""
        bad: list[str] = []

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                bad.append(f"{name} {rule}, got {get_field(self, name)!r}")

        need(bool(self.data), "data", "must name a prepared data directory")
        need(bool(self.out), "out", "must name a run directory")
        need(self.init_from is not None or self.preset in PRESETS, "preset", f"must be one of {', '.join(PRESETS)}")
        if self.context_length is not None and self.init_from is None and self.preset in PRESETS:
            # A fresh model is built for the context: bound it before anything of that size is allocated.
            # (A model to start from is checked against its own n_positions once its config is read.)
            n_positions = preset_config(self.preset).n_positions
            need(
                0 < self.context_length <= n_positions,
                "context_length",
                f"must be in 1..{n_positions} (the {self.preset} preset's n_positions)",
            )
        else:
            need(self.context_length is None or self.context_length > 0, "context_length", "must be positive")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.vocab_multiple >= 1, "vocab_multiple", "must be at least 1")
        need(self.max_steps >= 1, "max_steps", "must be at least 1")
        need(self.batch_tokens >= 1, "batch_tokens", "must be positive")
        need(self.micro_batch_size >= 1, "micro_batch_size", "must be at least 1")
        need(self.optim.lr > 0, "optim.lr", "must be positive")
        # Checked against lr only when lr itself is valid, so that one mistake gives one line.
        need(
            0 <= self.optim.min_lr and (self.optim.lr <= 0 or self.optim.min_lr <= self.optim.lr),
            "optim.min_lr",
            "must be in [0, optim.lr]",
        )
        need(self.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        need(
            self.optim.decay_steps is None or self.optim.decay_steps > self.optim.warmup_steps,
            "optim.decay_steps",
            "must exceed optim.warmup_steps",
        )
        need(self.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        need(0 <= self.optim.beta1 < 1, "optim.beta1", "must be in [0, 1)")
        need(0 <= self.optim.beta2 < 1, "optim.beta2", "must be in [0, 1)")
        need(self.optim.eps > 0, "optim.eps", "must be positive")
        need(self.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")
        need(self.log_interval >= 1, "log_interval", "must be at least 1")
        need(self.eval_interval >= 0, "eval_interval", "must be >= 0 (0 disables evaluation)")
        need(self.eval_windows >= 1, "eval_windows", "must be at least 1")
        need(self.checkpoint_interval >= 0, "checkpoint_interval", "must be >= 0 (0: only at the end)")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
        need(is_device_spec(self.device), "device", f"must be {DEVICE_CHOICES}")
        need(self.max_bad_steps >= 1, "max_bad_steps", "must be at least 1")
        limit = cpu_limit()
        need(
            0 <= self.num_threads <= limit,
            "num_threads",
            f"must be in 0..{limit} (at most {PER_CPU_LIMIT} per CPU of this machine; 0 keeps torch's default)",
        )
        return bad

    def accumulation_steps(self, context: int, world_size: int) -> int:
        """Micro-batches per rank per step, so that the step sees exactly batch_tokens tokens."""
        per_pass = self.micro_batch_size * context * world_size
        if self.batch_tokens % per_pass:
            raise ConfigError(
                f"config: batch_tokens ({self.batch_tokens}) must be a multiple of micro_batch_size x context x ranks "
                f"= {self.micro_batch_size} x {context} x {world_size} = {per_pass}"
            )
        return self.batch_tokens // per_pass
