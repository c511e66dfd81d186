"""nanoGPT's `ckpt.pt`: the dict its train.py saves.

{'model': state_dict, 'model_args': {n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout},
'optimizer': ..., 'iter_num': int, 'best_val_loss': ..., 'config': {...}}. State-dict names are
GPT's with a `transformer.` prefix (and `_orig_mod.` when the model was torch.compile'd), weights
are nn.Linear [out, in], the output layer `lm_head.weight` is tied to wte, and the MLP uses the
exact GELU (nn.GELU()), not GPT-2's tanh approximation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpt2kit.config import ConfigError
from gpt2kit.formats.base import (
    CheckpointError,
    ForeignModel,
    check_sizes,
    read_torch_file,
    state_dict_items,
    zero_missing_biases,
)
from gpt2kit.io import atomic_open
from gpt2kit.model import GPT, GPTConfig

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
# gpt2kit writes its full config under this key, so a round trip keeps what model_args cannot say.
OWN_CONFIG_KEY = "gpt2kit_config"


def read(path: Path) -> ForeignModel:
    checkpoint = read_torch_file(path, "nanoGPT checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{path}: not a nanoGPT checkpoint (expected a dict with 'model' and 'model_args')")
    args = checkpoint.get("model_args")
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: not a nanoGPT checkpoint ('model_args' is missing)")
    missing = [name for name in MODEL_ARGS if name not in args]
    if missing:
        raise CheckpointError(f"{path}: model_args lacks {missing[0]!r}")
    notes = []
    own = checkpoint.get(OWN_CONFIG_KEY)
    try:
        if isinstance(own, dict):
            config = GPTConfig.from_dict(own, f"{path}: {OWN_CONFIG_KEY}")
        else:
            config = GPTConfig(
                vocab_size=args["vocab_size"],
                n_positions=args["block_size"],
                n_layer=args["n_layer"],
                n_head=args["n_head"],
                n_embd=args["n_embd"],
                activation_function="gelu",  # nanoGPT's nn.GELU() is the exact one
            )
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict_items(checkpoint["model"], f"{path}: model"):
        name = key.removeprefix("_orig_mod.").removeprefix("transformer.")
        if name in tensors:
            raise CheckpointError(f"{path}: model entry {key!r} is given twice (with and without its prefix)")
        tensors[name] = tensor
    check_sizes(config, {name: tuple(t.shape) for name, t in tensors.items()}, str(path))
    head = tensors.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in tensors and not tied(head, tensors["wte.weight"]):
        config.tie_word_embeddings = False
        tensors["lm_head.weight"] = head
    if not args.get("bias", True):
        zero_missing_biases(config, tensors, notes)
    return ForeignModel(config, tensors, notes)


def tied(head: torch.Tensor, wte: torch.Tensor) -> bool:
    """Whether lm_head is wte: one storage (as torch.save keeps a tied parameter), or the same values, where NaN
    equals NaN (value equality would call a tied model with one NaN untied)."""
    if head.shape != wte.shape or head.dtype != wte.dtype:
        return False
    if (head.untyped_storage().data_ptr(), head.storage_offset(), head.stride()) == (
        wte.untyped_storage().data_ptr(), wte.storage_offset(), wte.stride()
    ):  # fmt: skip
        return True
    return bool(((head == wte) | (head.isnan() & wte.isnan())).all())


def write(model: GPT, path: Path) -> list[str]:
    """Write `model` as a nanoGPT ckpt.pt that nanoGPT's train.py resumes from (init_from='resume')."""
    config = model.config
    state = {f"transformer.{name}": t.detach().cpu().float() for name, t in model.state_dict().items()}
    state["lm_head.weight"] = model.output_weight.detach().cpu().float()
    state.pop("transformer.lm_head.weight", None)
    model_args = dict(
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        block_size=config.n_positions,
        bias=True,
        vocab_size=config.vocab_size,
        dropout=config.dropout,
    )
    checkpoint = {
        "model": state,
        "model_args": model_args,
        "iter_num": 0,
        "best_val_loss": 1e9,
        "config": {},
        OWN_CONFIG_KEY: config.to_dict(),
    }
    with atomic_open(path) as handle:
        torch.save(checkpoint, handle)
    notes = []
    if config.activation_function != "gelu":
        notes.append(
            f"nanoGPT's model.py uses the exact GELU; this model uses {config.activation_function!r}, so nanoGPT's "
            "own forward differs slightly (gpt2kit reads the file back exactly)"
        )
    if not config.tie_word_embeddings or config.n_inner not in (None, 4 * config.n_embd):
        notes.append("nanoGPT's model.py ties lm_head to wte and uses a 4x MLP; this model does not")
    return notes
