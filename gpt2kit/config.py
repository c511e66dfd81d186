"""Training configuration: a typed dataclass, loaded from TOML or YAML, overridden with `--set key=value`.

Every field has a type annotation that drives parsing: `--set optim.lr=3e-4`
turns "3e-4" into a float, `--set compile=true` into a bool. Unknown names and
bad values are reported together, one line per field, naming the source.
"""

from __future__ import annotations

import difflib
import os
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(GPT2KitError):
    """A config file or override is unreadable, names an unknown field, or has a bad value."""


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
class TrainConfig:
    data: str = ""  # a directory written by `gpt2kit prepare`
    out: str = ""  # the run directory: metrics.jsonl, checkpoints/, loss.png
    preset: str = "cpu-6m"  # model size, when not starting from init_from
    init_from: str | None = None  # a model directory or hub id to fine-tune (keeps its tokenizer)
    context_length: int | None = None  # tokens per window; None means the model's n_positions
    dropout: float = 0.0
    vocab_multiple: int = 1  # pad the embedding to a multiple of this (64 suits GPUs)
    seed: int = 1337
    max_steps: int = 1000
    batch_tokens: int = 16384  # tokens per optimizer step, over all ranks and micro-batches
    micro_batch_size: int = 8  # sequences per forward pass on each rank
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_interval: int = 10  # steps between metrics.jsonl lines
    eval_interval: int = 100  # steps between validation runs; 0 disables them
    eval_windows: int = 64  # validation windows per evaluation, spread evenly over the val split
    checkpoint_interval: int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: int = 3  # the newest K checkpoints are kept
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
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

    def problems(self) -> list[str]:
        """One line per bad field (empty when the config is valid)."""
        bad: list[str] = []

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                bad.append(f"{name} {rule}, got {get_field(self, name)!r}")

        need(bool(self.data), "data", "must name a prepared data directory (--data)")
        need(bool(self.out), "out", "must name a run directory (--out)")
        need(self.init_from is not None or self.preset in PRESETS, "preset", f"must be one of {', '.join(PRESETS)}")
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
        need(
            self.device in ("auto", "cpu", "mps", "cuda") or self.device.startswith("cuda:"),
            "device",
            "must be auto, cpu, cuda, cuda:N or mps",
        )
        need(self.max_bad_steps >= 1, "max_bad_steps", "must be at least 1")
        need(self.num_threads >= 0, "num_threads", "must be >= 0")
        return bad

    def validate(self, source: str = "config") -> TrainConfig:
        bad = self.problems()
        if bad:
            raise ConfigError("\n".join(f"{source}: {line}" for line in bad))
        return self

    def accumulation_steps(self, context: int, world_size: int) -> int:
        """Micro-batches per rank per step, so that the step sees exactly batch_tokens tokens."""
        per_pass = self.micro_batch_size * context * world_size
        if self.batch_tokens % per_pass:
            raise ConfigError(
                f"config: batch_tokens ({self.batch_tokens}) must be a multiple of micro_batch_size x context x ranks "
                f"= {self.micro_batch_size} x {context} x {world_size} = {per_pass}"
            )
        return self.batch_tokens // per_pass

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        config = cls()
        errors: list[str] = []
        for name, value in _flatten(values):
            _assign(config, name, value, source, errors, from_text=False)
        if errors:
            raise ConfigError("\n".join(errors))
        return config


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def get_field(config: object, dotted: str) -> Any:
    """The value of a dotted field name, e.g. `optim.lr`."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _field_names(cls: type, prefix: str = "") -> list[str]:
    names = []
    hints = _type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            names.extend(_field_names(hints[f.name], f"{prefix}{f.name}."))
        else:
            names.append(prefix + f.name)
    return names


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in values.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def _coerce(value: Any, kind: Any, from_text: bool) -> Any:
    """`value` as type `kind`, or ValueError with the reason."""
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (from_text and str(value).lower() in ("none", "null")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, from_text)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {', '.join(map(str, args))}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in TRUE_WORDS + FALSE_WORDS:
            return str(value).lower() in TRUE_WORDS
        raise ValueError("must be true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", "")) if from_text else value
        except ValueError:
            raise ValueError("must be an integer") from None
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ValueError("must be an integer")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        if isinstance(value, (int, float)):
            return float(value)
        try:
            if from_text:
                return float(value)
        except ValueError:
            pass
        raise ValueError("must be a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("must be text")
    raise ValueError(f"has an unsupported type {kind}")


def _assign(config: object, dotted: str, value: Any, source: str, errors: list[str], from_text: bool) -> None:
    parts = dotted.split(".")
    target = config
    for part in parts[:-1]:
        if not is_dataclass(target) or part not in {f.name for f in fields(target)}:
            target = None
            break
        target = getattr(target, part)
    name = parts[-1]
    if target is None or not is_dataclass(target) or name not in {f.name for f in fields(target)}:
        close = difflib.get_close_matches(dotted, _field_names(type(config)), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        errors.append(f"{source}: unknown field {dotted!r}{hint}")
        return
    kind = _type_hints(type(target))[name]
    if is_dataclass(kind):
        errors.append(f"{source}: {dotted} is a section; set its fields, e.g. {dotted}.{fields(kind)[0].name}")
        return
    try:
        setattr(target, name, _coerce(value, kind, from_text))
    except ValueError as err:
        errors.append(f"{source}: {dotted} {err}, got {value!r}")


def read_config_file(path: str | os.PathLike, section: str | None = None) -> dict:
    """The mapping in a TOML or YAML file: its top level, or its `section` table when it has one.

    Every config file in gpt2kit (train, sample, serve, eval, webtext) is read here, so each gets the same
    one-line errors for a missing file, bad UTF-8, bad syntax or the wrong shape.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: unreadable config file ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 (byte {err.start})") from None
    if path.suffix.lower() == ".toml":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML ({err})") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    else:
        raise ConfigError(f"{path}: config files must end in .toml, .yaml or .yml")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of setting names to values at the top level")
    if section is not None and isinstance(values.get(section), dict):
        values = values[section]
    return values


def dataclass_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """`cls(**values)` for a flat config dataclass, with one line naming an unknown key or a bad value."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def apply_overrides(config: TrainConfig, overrides: list[str], source: str = "--set") -> TrainConfig:
    """Apply `key=value` strings (dotted names for nested fields), parsing each value by the field's type."""
    errors: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"{source} {item!r}: expected key=value")
            continue
        _assign(config, key.strip(), value.strip(), source, errors, from_text=True)
    if errors:
        raise ConfigError("\n".join(errors))
    return config


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the file's values, then the overrides; not yet validated (the caller adds CLI values)."""
    config = TrainConfig.from_dict(read_config_file(path), str(path)) if path else TrainConfig()
    return apply_overrides(config, overrides or [])
