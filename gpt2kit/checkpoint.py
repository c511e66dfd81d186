"""Model directories in the HF GPT-2 layout: our native checkpoint format.

A directory holds config.json (transformers' GPT2Config fields), model.safetensors
(HF key names, Conv1D [in, out] weights), vocab.json, merges.txt and
generation_config.json, so transformers, lm-eval, vLLM and llama.cpp read it as is.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gpt2kit.config import config_from_dict
from gpt2kit.device import resolve_device
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_directory
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.tokenizer import Tokenizer, TokenizerError

# HF's Conv1D stores [in, out]; nn.Linear stores [out, in].
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers that old GPT-2 checkpoints carry (causal masks), not parameters.
IGNORED_BUFFER = re.compile(r"h\.\d+\.attn\.(masked_)?bias")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class CheckpointError(GPT2KitError):
    """A model directory is missing, incomplete or corrupt; the message names the file and key."""


class LoadedModel(NamedTuple):
    model: GPT
    tokenizer: Tokenizer
    path: Path


def hf_config(config: GPTConfig, eot_token: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.n_inner,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eot_token,
        "eos_token_id": eot_token,
        "torch_dtype": "float32",
    }


def config_from_hf(values: dict, where: str) -> GPTConfig:
    if values.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{where}: model_type is {values.get('model_type')!r}, only 'gpt2' is supported")
    activation = values.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise CheckpointError(f"{where}: activation_function {activation!r} is not GPT-2's tanh GELU")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if values.get(flag):
            raise CheckpointError(f"{where}: {flag}=true is not supported")
    missing = [name for name in ("vocab_size", "n_layer", "n_head", "n_embd") if name not in values]
    if missing:
        raise CheckpointError(f"{where}: missing field {missing[0]!r}")
    fields = {
        "vocab_size": values["vocab_size"],
        "n_positions": values.get("n_positions", values.get("n_ctx", 1024)),
        "n_layer": values["n_layer"],
        "n_head": values["n_head"],
        "n_embd": values["n_embd"],
        "n_inner": values.get("n_inner"),
        "dropout": values.get("resid_pdrop", 0.0),
        "layer_norm_epsilon": values.get("layer_norm_epsilon", 1e-5),
    }
    return config_from_dict(GPTConfig, fields, where)


def save(model: GPT, tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write `model` and `tokenizer` to `directory` in the HF GPT-2 layout, atomically."""
    directory = Path(directory)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        tensors[f"transformer.{name}"] = tensor.contiguous()
    eot = tokenizer.eot_token
    with atomic_directory(directory) as tmp:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        del tensors
        (tmp / "config.json").write_text(json.dumps(hf_config(model.config, eot), indent=2))
        generation = {"bos_token_id": eot, "eos_token_id": eot}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        tokenizer.save(tmp)
    return directory


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local model directory, or a hub id downloaded (or found in the HF cache)."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    text = str(path_or_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise CheckpointError(f"{text}: not a model directory")
    try:
        from huggingface_hub import snapshot_download

        patterns = [
            "config.json",
            "generation_config.json",
            "*.safetensors",
            "*.json",
            "merges.txt",
            "pytorch_model.bin",
        ]
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo or hub error all mean: not available
        raise CheckpointError(
            f"{text}: not a local directory, and the hub download failed ({type(err).__name__}: {err})"
        ) from None


def _weight_sources(directory: Path) -> list[Path]:
    if (directory / "model.safetensors").exists():
        return [directory / "model.safetensors"]
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: malformed index ({err})") from None
        return [directory / name for name in sorted(set(weight_map.values()))]
    if (directory / "pytorch_model.bin").exists():
        return [directory / "pytorch_model.bin"]
    raise CheckpointError(f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")


def _iter_tensors(source: Path):
    """Yield (name, tensor) one at a time so only one tensor is materialised beyond the model."""
    if source.suffix == ".bin":
        try:
            state = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise CheckpointError(f"{source}: unreadable PyTorch weights ({err})") from None
        yield from state.items()
        return
    try:
        with safe_open(source, framework="pt") as handle:
            names = list(handle.keys())
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{source}: corrupt or truncated safetensors file ({err})") from None
    for name in names:
        # Reopen per tensor: the mapping is released at once, so RSS holds one copy of the weights.
        try:
            with safe_open(source, framework="pt") as handle:
                tensor = handle.get_tensor(name)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{source}: tensor {name!r} is unreadable ({err})") from None
        yield name, tensor


def load_weights(model: GPT, directory: Path, dtype: torch.dtype = torch.float32) -> GPT:
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    loaded: dict[str, torch.Tensor] = {}
    for source in _weight_sources(directory):
        for raw_name, tensor in _iter_tensors(source):
            name = raw_name.removeprefix("transformer.")
            if name == "lm_head.weight" or IGNORED_BUFFER.fullmatch(name):
                continue  # the output layer is tied to wte
            if name not in expected:
                raise CheckpointError(f"{source}: unexpected tensor {raw_name!r}")
            if name.endswith(CONV1D_SUFFIXES):
                tensor = tensor.t()
            if tuple(tensor.shape) != expected[name]:
                raise CheckpointError(
                    f"{source}: tensor {raw_name!r} has shape {list(tensor.shape)}, expected {list(expected[name])}"
                )
            loaded[name] = tensor.to(dtype).contiguous()
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(
            f"{directory}: missing tensor {missing[0]!r}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    model.load_state_dict(loaded, assign=True)
    return model


def load_tokenizer_for(directory: Path, vocab_size: int) -> Tokenizer:
    if (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        return Tokenizer.from_vocab_merges(directory / "vocab.json", directory / "merges.txt")
    if vocab_size == 50257:
        return Tokenizer.gpt2()
    raise CheckpointError(f"{directory}: no tokenizer (vocab.json and merges.txt are missing)")


def load(
    path_or_id: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load a model and its tokenizer from a directory or hub id."""
    directory = resolve(path_or_id)
    config_path = directory / "config.json"
    try:
        values = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{config_path}: missing") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    config = config_from_hf(values, str(config_path))
    with torch.device("meta"):
        model = GPT(config)
    load_weights(model, directory, dtype)
    # Tied output layer: assign=True replaced wte's parameter object, so nothing else to re-tie.
    try:
        tokenizer = load_tokenizer_for(directory, config.vocab_size)
    except TokenizerError as err:
        raise CheckpointError(str(err)) from None
    return LoadedModel(model.to(resolve_device(device)).eval(), tokenizer, directory)
