"""What every foreign-format reader and writer shares, and what the native loader shares with them: the error,
the in-memory form of a foreign model, the formats' names, and the checks on a state dict read from a file
(weights-only unpickling, names and dense tensors, sizes against the config before anything is built).

A leaf: it imports no reader, writer or loader, so `checkpoint` and `formats.*` both build on it.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2kit.errors import GPT2KitError, short_repr
from gpt2kit.model import GPTConfig

LLMC_MAGIC = 20240326
# What each format is called on the command line, and how a path says which one it is.
SOURCE_FORMATS = ("hf", "nanogpt", "llmc")
TARGET_FORMATS = ("hf", "nanogpt", "llmc", "gguf")
TARGET_DTYPES = {"hf": ("f32",), "nanogpt": ("f32",), "llmc": ("f32", "bf16"), "gguf": ("f32", "f16")}


@dataclass
class ForeignModel:
    config: GPTConfig
    tensors: dict[str, torch.Tensor]  # GPT's state_dict names, [out, in] weights
    notes: list[str] = field(default_factory=list)  # what the conversion changed or assumed, for the user


# The floating-point types a weight may be stored in. Integers, bool, complex and fp8 are no GPT-2 weights:
# casting them to the model's type would load something other than what was trained.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# A block's tensor name, h.N.*; longer numbers are no layer of any model (and int() refuses huge ones).
LAYER_NAME = re.compile(r"h\.(\d{1,9})\.")


class CheckpointError(GPT2KitError):
    """A model directory is missing, incomplete or corrupt; the message names the file and key."""


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


def state_dict_items(state, where: str) -> list[tuple[str, torch.Tensor]]:
    """The entries of a state dict torch.load gave, refused (naming the key) unless each is a name and a dense
    tensor: the name and shape checks, tie detection and casts that follow assume no less."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: expected a dict of tensors, got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{where}: key {short_repr(name)} is not a tensor name (a string)")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{where}: {short_repr(name)} is not a tensor ({type(tensor).__name__})")
        if tensor.layout != torch.strided or tensor.is_quantized:
            kind = "quantized" if tensor.is_quantized else f"not dense ({tensor.layout})"
            raise CheckpointError(f"{where}: tensor {short_repr(name)} is {kind}; weights are dense tensors")
    return list(state.items())


def check_sizes(config: GPTConfig, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Compare the config's sizes with the shapes of the tensors present (GPT's names) before anything is built:
    a config that claims 10^12 layers should fail at once, not after building modules without end."""
    layers = {int(m.group(1)) for name in shapes if (m := LAYER_NAME.match(name))}
    if len(layers) != config.n_layer:
        raise CheckpointError(f"{where}: n_layer is {config.n_layer}, but the weights hold {len(layers)} layers")
    if layers and max(layers) != config.n_layer - 1:
        raise CheckpointError(
            f"{where}: the weights' layers are numbered up to {max(layers)}, not 0..{config.n_layer - 1}"
        )
    for name, expected, fields in (
        ("wte.weight", (config.vocab_size, config.n_embd), "vocab_size, n_embd"),
        ("wpe.weight", (config.n_positions, config.n_embd), "n_positions, n_embd"),
    ):
        if name in shapes and shapes[name] != expected:
            raise CheckpointError(f"{where}: ({fields}) is {expected}, but the weights' {name} is {shapes[name]}")


def read_torch_file(path: Path, what: str):
    """torch.load with weights_only=True: tensors and plain containers only, so nothing in the file runs."""
    try:
        with warnings.catch_warnings():  # torch's deprecation notes on what a file holds (quantized tensors, ...)
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        detail = str(err).splitlines()
        found = next((line.strip() for line in detail if "GLOBAL" in line or "Unsupported" in line), "")
        raise CheckpointError(
            f"{path}: refused: a pickle that needs more than tensors ({found or 'not weights-only'}); nothing in it ran"
        ) from None
    except Exception as err:  # truncated zip, not a torch file, ...
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: unreadable {what} ({first})") from None
