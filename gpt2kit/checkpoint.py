"""Model directories in the HF GPT-2 layout: our native checkpoint format.

A directory holds config.json (transformers' GPT2Config fields), model.safetensors
(HF key names, Conv1D [in, out] weights), vocab.json, merges.txt and
generation_config.json, so transformers, lm-eval, vLLM and llama.cpp read it as is.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gpt2kit.config import config_from_dict
from gpt2kit.device import resolve_device
from gpt2kit.errors import GPT2KitError, short_repr
from gpt2kit.formats import read_model_file
from gpt2kit.formats.base import WEIGHT_DTYPES, CheckpointError, check_sizes, read_torch_file, state_dict_items
from gpt2kit.io import atomic_directory, read_json
from gpt2kit.model import GPT, GPTConfig, check_output_rows
from gpt2kit.outputs import check_model_target
from gpt2kit.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from gpt2kit.training_run import CHECKPOINT_DIR, FINAL_DIR, run_model

# HF's Conv1D stores [in, out]; nn.Linear stores [out, in].
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers that old GPT-2 checkpoints carry (causal masks), not parameters.
IGNORED_BUFFER = re.compile(r"h\.\d+\.attn\.(masked_)?bias")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


log = logging.getLogger(__name__)


class LoadedModel(NamedTuple):
    model: GPT
    tokenizer: Tokenizer
    path: Path
    notes: tuple[str, ...] = ()  # what loading assumed or changed (a converted format, zero biases, ...)


def hf_config(config: GPTConfig, eot_token: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": config.activation_function,
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
        "scale_attn_weights": config.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": eot_token,
        "eos_token_id": eot_token,
        "torch_dtype": "float32",
    }


# GPT2Config fields that change what the model computes and that gpt2kit cannot honour.
UNSUPPORTED_TRUE = ("add_cross_attention", "is_encoder_decoder")


def config_from_hf(values: dict, where: str) -> GPTConfig:
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(values).__name__}")
    if values.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{where}: model_type is {values.get('model_type')!r}, only 'gpt2' is supported")
    for flag in UNSUPPORTED_TRUE:
        if values.get(flag):
            raise CheckpointError(f"{where}: {flag}=true is not supported")
    missing = [name for name in ("vocab_size", "n_layer", "n_head", "n_embd") if name not in values]
    if missing:
        raise CheckpointError(f"{where}: missing field {missing[0]!r}")
    # transformers sizes wpe by n_positions; n_ctx is a legacy alias it no longer reads.
    fields = {"n_positions": values.get("n_positions", values.get("n_ctx", 1024))}
    for name in ("vocab_size", "n_layer", "n_head", "n_embd", "n_inner", "layer_norm_epsilon"):
        if name in values:
            fields[name] = values[name]
    for name in ("activation_function", "tie_word_embeddings", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"):
        if values.get(name) is not None:
            fields[name] = values[name]
    fields["dropout"] = values.get("resid_pdrop", 0.0)
    # reorder_and_upcast_attn only computes attention in fp32, which gpt2kit's fp32 path always does.
    try:
        return config_from_dict(GPTConfig, fields, where)
    except GPT2KitError as err:
        raise CheckpointError(str(err)) from None


def save(model: GPT, tokenizer: Tokenizer, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `model` and `tokenizer` to `directory` in the HF GPT-2 layout, atomically.

    `directory` must be new or empty; with `overwrite` it may hold a model, which is replaced whole (see
    `gpt2kit.outputs`: anything else there is never replaced).
    """
    directory = Path(directory)
    if model.inference_form is not None:
        raise CheckpointError(
            f"{directory}: the model is prepared for inference ({model.inference_form}); save the fp32 model"
        )
    check_output_rows(model.config, tokenizer.vocab_size, str(directory))
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        tensors[name if name == "lm_head.weight" else f"transformer.{name}"] = tensor.contiguous()
    eot = tokenizer.eot_token
    target = check_model_target(directory, "hf", overwrite)
    try:
        with atomic_directory(target) as tmp:
            save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
            os.chmod(tmp / "model.safetensors", 0o644)  # safetensors creates it 0600; the rest are 0644
            del tensors
            (tmp / "config.json").write_text(json.dumps(hf_config(model.config, eot), indent=2))
            generation = {"bos_token_id": eot, "eos_token_id": eot}
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
            tokenizer.save(tmp)
    except (OSError, SafetensorError) as err:  # a full disk, a read-only or missing parent, ...
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise CheckpointError(f"{directory}: cannot write the model ({reason})") from None
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
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{text}: not a local directory, and the hub download failed ({type(err).__name__}: {reason})"
        ) from None


def _weight_sources(directory: Path) -> list[Path]:
    if (directory / "model.safetensors").exists():
        return [directory / "model.safetensors"]
    index = directory / "model.safetensors.index.json"
    if index.exists():
        values = read_json(index, CheckpointError)
        weight_map = values.get("weight_map") if isinstance(values, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: malformed index (no 'weight_map' object)")
        for name, file in weight_map.items():
            if not (isinstance(file, str) and file not in ("", ".", "..") and Path(file).name == file):
                raise CheckpointError(f"{index}: weight_map[{short_repr(name)}] is not a file name in {directory}")
        return [directory / name for name in sorted(set(weight_map.values()))]
    if (directory / "pytorch_model.bin").exists():
        return [directory / "pytorch_model.bin"]
    raise CheckpointError(f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")


def _iter_tensors(source: Path):
    """Yield (name, tensor) one at a time so only one tensor is materialised beyond the model."""
    if source.suffix == ".bin":
        yield from state_dict_items(read_torch_file(source, "PyTorch weights"), str(source))
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


def _check_sizes_against_weights(config: GPTConfig, directory: Path, where: str) -> None:
    """`check_sizes` against the weight files' shapes: safetensors headers, or a pytorch_model.bin's tensors
    (memory-mapped, so nothing is read but the pickle)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for source in _weight_sources(directory):
        if source.suffix != ".safetensors":
            for name, tensor in _iter_tensors(source):
                shapes[name.removeprefix("transformer.")] = tuple(tensor.shape)
            continue
        try:
            with safe_open(source, framework="pt") as handle:
                for name in handle.keys():
                    shapes[name.removeprefix("transformer.")] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{source}: corrupt or truncated safetensors file ({err})") from None
    check_sizes(config, shapes, where)


def load_weights(model: GPT, directory: Path, dtype: torch.dtype = torch.float32) -> GPT:
    named = ((str(source), *item) for source in _weight_sources(directory) for item in _iter_tensors(source))
    return assign_tensors(model, named, str(directory), dtype)


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf: both show in the extremes, found in one pass without a tensor-sized temporary."""
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def assign_tensors(model: GPT, named, where: str, dtype: torch.dtype = torch.float32, conv1d: bool = True) -> GPT:
    """Fill `model` (built on the meta device) from (source, name, tensor) triples, checking every name and shape.

    Names may carry HF's or nanoGPT's `transformer.` prefix; `conv1d` says the projection weights are
    HF Conv1D's [in, out] rather than nn.Linear's [out, in].
    """
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    loaded: dict[str, torch.Tensor] = {}
    for source, raw_name, tensor in named:
        name = raw_name.removeprefix("transformer.")
        if IGNORED_BUFFER.fullmatch(name) or (name == "lm_head.weight" and model.config.tie_word_embeddings):
            continue  # a tied output layer is wte
        if name not in expected:
            raise CheckpointError(f"{source}: unexpected tensor {raw_name!r}")
        if name in loaded:
            raise CheckpointError(f"{source}: tensor {raw_name!r} is given twice (with and without its prefix)")
        if conv1d and name.endswith(CONV1D_SUFFIXES) and tensor.dim() == 2:  # other shapes fail the check below
            tensor = tensor.t()
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{source}: tensor {raw_name!r} has shape {list(tensor.shape)}, expected {list(expected[name])}"
            )
        if tensor.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(
                f"{source}: tensor {raw_name!r} is {str(tensor.dtype).removeprefix('torch.')}; weights must be "
                "float16, bfloat16, float32 or float64"
            )
        if not all_finite(tensor):  # NaN or inf weights would only show as garbage text and a NaN loss
            raise CheckpointError(f"{source}: tensor {raw_name!r} holds NaN or infinite values")
        loaded[name] = tensor.to(dtype).contiguous()
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(
            f"{where}: missing tensor {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    model.load_state_dict(loaded, assign=True)
    return model


def load_tokenizer_for(directory: Path, vocab_size: int) -> Tokenizer:
    if any((directory / name).exists() for name in ("tokenizer.json", "vocab.json", "merges.txt")):
        return Tokenizer.from_dir(directory)
    if vocab_size in (50257, 50304):  # GPT-2's vocabulary, or it padded as nanoGPT and llm.c pad it
        return Tokenizer.gpt2()
    raise CheckpointError(f"{directory}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")


def load(
    path_or_id: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    source_format: str | None = None,
    quantize: str | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer: an HF directory or hub id, a nanoGPT ckpt.pt, or an llm.c .bin.

    `tokenizer` replaces the directory's own; files from nanoGPT and llm.c carry none, and get GPT-2's
    unless it is given. `source_format` (hf, nanogpt, llmc) overrides what the path suggests.
    `quantize="int8"` gives int8 weights for inference (see gpt2kit.inference).
    """
    path = Path(path_or_id)
    notes: list[str] = []
    if source_format in ("nanogpt", "llmc") or (source_format is None and path.is_file()):
        foreign = read_model_file(path, source_format)
        config, notes = foreign.config, list(foreign.notes)
        with torch.device("meta"):
            model = GPT(config)
        assign_tensors(model, ((str(path), n, t) for n, t in foreign.tensors.items()), str(path), dtype, conv1d=False)
        directory = path
        if tokenizer is None:
            tokenizer = "gpt2"
            notes.append(f"{path.name} carries no tokenizer: GPT-2's vocabulary is assumed")
    else:
        directory = resolve(path_or_id)
        if not (directory / "config.json").exists() and (picked := run_model(directory)) is not None:
            which = "its final model" if picked.name == FINAL_DIR else f"its newest checkpoint, {picked.name}"
            notes.append(f"{directory} is a training run: using {which}")
            directory = picked
        elif not (directory / "config.json").exists() and (directory / CHECKPOINT_DIR).is_dir():
            raise CheckpointError(f"{directory}: a training run without a finished checkpoint yet")
        config_path = directory / "config.json"
        if not config_path.exists():
            raise CheckpointError(f"{config_path}: missing")
        config = config_from_hf(read_json(config_path, CheckpointError), str(config_path))
        _check_sizes_against_weights(config, directory, str(config_path))
        with torch.device("meta"):
            model = GPT(config)
        # Tied output layer: assign=True replaces wte's parameter object, so nothing else to re-tie.
        load_weights(model, directory, dtype)
    try:
        if isinstance(tokenizer, Tokenizer):
            pass
        elif tokenizer is not None:
            tokenizer = load_tokenizer(tokenizer)
        else:
            tokenizer = load_tokenizer_for(directory, config.vocab_size)
    except TokenizerError as err:
        raise CheckpointError(str(err)) from None
    for note in notes:
        log.info("%s", note)
    model = model.to(resolve_device(device)).eval()
    pair_up(model, tokenizer, str(directory))
    if quantize is not None:
        from gpt2kit.inference import quantize as quantize_model

        quantize_model(model, quantize)
    return LoadedModel(model, tokenizer, directory, tuple(notes))


def pair_up(model: GPT, tokenizer: Tokenizer, where: str) -> None:
    """Check that `tokenizer` fits `model`, and mask the output rows that are no token (padding, id gaps)."""
    check_output_rows(model.config, tokenizer.vocab_size, where)
    unused = [*tokenizer.missing_ids, *range(tokenizer.vocab_size, model.config.vocab_size)]
    if unused:
        model.mask_logits(unused)
