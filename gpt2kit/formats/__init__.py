"""Checkpoints made elsewhere: nanoGPT's ckpt.pt and llm.c's .bin in and out, GGUF out.

The HF GPT-2 directory is gpt2kit's own format (checkpoint.py); everything here
converts to or from it through a `GPT` in memory. Readers return a `ForeignModel`
(config plus tensors under GPT's own names, nn.Linear [out, in] layout);
writers take the model and, where the format embeds one, the tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2kit.checkpoint import CheckpointError
from gpt2kit.model import GPTConfig

LLMC_MAGIC = 20240326
# What each format is called on the command line, and how a path says which one it is.
SOURCE_FORMATS = ("hf", "nanogpt", "llmc")
TARGET_FORMATS = ("hf", "nanogpt", "llmc", "gguf")
TARGET_DTYPES = {"hf": ("f32",), "nanogpt": ("f32",), "llmc": ("f32", "bf16"), "gguf": ("f32", "f16")}
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", "gelu_python_tanh")


@dataclass
class ForeignModel:
    config: GPTConfig
    tensors: dict[str, torch.Tensor]  # GPT's state_dict names, [out, in] weights
    notes: list[str] = field(default_factory=list)  # what the conversion changed or assumed, for the user


def is_llmc_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return int.from_bytes(handle.read(4), "little") == LLMC_MAGIC
    except OSError:
        return False


def format_of_file(path: Path) -> str | None:
    """Which model file format `path` holds, from its first bytes (None: not a model file)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    if head == b"GGUF":
        return "gguf"
    if len(head) == 4 and int.from_bytes(head, "little") == LLMC_MAGIC:
        return "llmc"
    if head == b"PK\x03\x04":  # torch.save's zip archive, as nanoGPT writes ckpt.pt
        return "nanogpt"
    return None


def format_of_source(path: str | os.PathLike) -> str:
    """hf for a directory or hub id, llmc for a .bin with llm.c's magic, nanogpt for a .pt/.ckpt file."""
    path = Path(path)
    if path.is_file():
        if is_llmc_file(path):
            return "llmc"
        if path.suffix in (".pt", ".pth", ".ckpt"):
            return "nanogpt"
        raise CheckpointError(
            f"{path}: not a model file gpt2kit knows (an llm.c .bin, a nanoGPT .pt, or an HF directory)"
        )
    return "hf"


def format_of_target(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix
    return {".bin": "llmc", ".gguf": "gguf", ".pt": "nanogpt", ".pth": "nanogpt", ".ckpt": "nanogpt"}.get(suffix, "hf")


def read_model_file(path: Path, kind: str | None = None) -> ForeignModel:
    kind = kind or format_of_source(path)
    if kind == "llmc":
        from gpt2kit.formats import llmc

        return llmc.read(path)
    if kind == "nanogpt":
        from gpt2kit.formats import nanogpt

        return nanogpt.read(path)
    raise CheckpointError(f"{path}: cannot read format {kind!r} from a file (one of: llmc, nanogpt)")


def require(config: GPTConfig, fmt: str, where: str, **wanted) -> None:
    """Refuse, naming the field, a config that `fmt` cannot express."""
    for name, allowed in wanted.items():
        value = getattr(config, name)
        if value not in (allowed if isinstance(allowed, tuple) else (allowed,)):
            raise CheckpointError(f"{where}: {fmt} cannot hold {name}={value!r}")


def zero_missing_biases(config: GPTConfig, tensors: dict[str, torch.Tensor], notes: list[str]) -> None:
    """Bias-free models (nanoGPT's bias=False) have no HF GPT-2 equivalent: their biases become zeros."""
    added = 0
    parts = ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    prefixes = ["ln_f"] + [f"h.{layer}.{part}" for layer in range(config.n_layer) for part in parts]
    for prefix in prefixes:
        weight = tensors.get(f"{prefix}.weight")
        if weight is not None and weight.dim() > 0 and f"{prefix}.bias" not in tensors:
            tensors[f"{prefix}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
            added += 1
    if added:
        notes.append(
            f"the model has no biases (bias=False); {added} zero bias tensors were added, which changes nothing"
        )


def convert(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    source_format: str | None = None,
    target_format: str | None = None,
    dtype: str = "f32",
    tokenizer: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Convert a model between formats; returns notes on what the conversion assumed or changed.

    `target` must be new (or an empty directory); with `overwrite` it may hold a model of the target format,
    which is replaced whole. Anything else there is refused (`gpt2kit.outputs`).
    """
    from gpt2kit.checkpoint import load, save
    from gpt2kit.outputs import check_model_target

    target = Path(target)
    target_format = target_format or format_of_target(target)
    if source_format is not None and source_format not in SOURCE_FORMATS:
        raise CheckpointError(f"source format {source_format!r}: choose one of {', '.join(SOURCE_FORMATS)}")
    if target_format not in TARGET_FORMATS:
        raise CheckpointError(f"target format {target_format!r}: choose one of {', '.join(TARGET_FORMATS)}")
    if target_format != "hf" and target.is_dir():
        raise CheckpointError(f"{target}: is a directory, but {target_format} is written to a file")
    if dtype not in TARGET_DTYPES[target_format]:
        allowed = " or ".join(TARGET_DTYPES[target_format])
        raise CheckpointError(f"{target}: {target_format} output is written in {allowed}, not {dtype!r}")
    check_model_target(target, target_format, overwrite, format_of_file)  # before the (possibly long) load
    loaded = load(source, tokenizer=tokenizer, source_format=source_format)
    notes = list(loaded.notes)
    if target_format == "hf":
        save(loaded.model, loaded.tokenizer, target, overwrite=overwrite)
    elif target_format == "nanogpt":
        from gpt2kit.formats import nanogpt

        notes += nanogpt.write(loaded.model, target)
    elif target_format == "llmc":
        from gpt2kit.formats import llmc

        notes += llmc.write(loaded.model, target, loaded.tokenizer.vocab_size, dtype)
    else:
        from gpt2kit.formats import gguf

        notes += gguf.write(loaded.model, loaded.tokenizer, target, dtype)
    return notes
