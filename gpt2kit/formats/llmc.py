"""llm.c's model file, as its train_gpt2.py writes gpt2_124M.bin and its C trainer reads it.

A header of 256 int32: magic 20240326, version (3: fp32, 5: bf16), max context, vocab size,
layers, heads, channels, padded vocab size (a multiple of 128). Then every parameter, in one
fixed order, each layer's tensors stacked: wte (Vp, C), wpe (T, C), ln_1 w and b, c_attn w
(3C, C) and b, attn c_proj w and b, ln_2 w and b, c_fc w (4C, C) and b, mlp c_proj w (C, 4C)
and b, ln_f w and b. Weights are nn.Linear [out, in]; the output layer is wte; the MLP is 4C
wide with GPT-2's tanh GELU; LayerNorm's epsilon is 1e-5.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from gpt2kit.config import ConfigError
from gpt2kit.formats.base import LLMC_MAGIC, CheckpointError, ForeignModel, require
from gpt2kit.io import atomic_open
from gpt2kit.model import GPT, TANH_GELUS, GPTConfig

HEADER_INTS = 256
VERSIONS = {3: torch.float32, 5: torch.bfloat16}
VOCAB_MULTIPLE = 128


def _layout(config: GPTConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in file order; per-layer names hold `{}` for the layer index, their shape has L first."""
    C, L, T, V = config.n_embd, config.n_layer, config.n_positions, config.vocab_size
    per_layer = [
        ("h.{}.ln_1.weight", (C,)),
        ("h.{}.ln_1.bias", (C,)),
        ("h.{}.attn.c_attn.weight", (3 * C, C)),
        ("h.{}.attn.c_attn.bias", (3 * C,)),
        ("h.{}.attn.c_proj.weight", (C, C)),
        ("h.{}.attn.c_proj.bias", (C,)),
        ("h.{}.ln_2.weight", (C,)),
        ("h.{}.ln_2.bias", (C,)),
        ("h.{}.mlp.c_fc.weight", (4 * C, C)),
        ("h.{}.mlp.c_fc.bias", (4 * C,)),
        ("h.{}.mlp.c_proj.weight", (C, 4 * C)),
        ("h.{}.mlp.c_proj.bias", (C,)),
    ]
    return (
        [("wte.weight", (V, C)), ("wpe.weight", (T, C))]
        + [(n, (L, *s)) for n, s in per_layer]
        + [
            ("ln_f.weight", (C,)),
            ("ln_f.bias", (C,)),
        ]
    )


def read(path: Path) -> ForeignModel:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = np.frombuffer(handle.read(HEADER_INTS * 4), dtype="<i4")
        if len(header) < HEADER_INTS:
            raise CheckpointError(f"{path}: truncated llm.c header ({size} bytes, expected at least 1024)")
        if header[0] != LLMC_MAGIC:
            raise CheckpointError(f"{path}: not an llm.c model file (magic {header[0]}, expected {LLMC_MAGIC})")
        version = int(header[1])
        if version not in VERSIONS:
            raise CheckpointError(f"{path}: llm.c version {version} is not supported (3: fp32, 5: bf16)")
        max_t, vocab, n_layer, n_head, n_embd, padded_vocab = (int(v) for v in header[2:8])
        try:
            config = GPTConfig(
                vocab_size=padded_vocab, n_positions=max_t, n_layer=n_layer, n_head=n_head, n_embd=n_embd
            )
        except ConfigError as err:
            raise CheckpointError(f"{path}: header: {err}") from None
        if not 0 < vocab <= padded_vocab:
            raise CheckpointError(f"{path}: header: vocab size {vocab} does not fit the padded size {padded_vocab}")
        dtype = VERSIONS[version]
        layout = _layout(config)
        numel = sum(math.prod(shape) for _, shape in layout)  # Python ints: header sizes can overflow int64
        expected = HEADER_INTS * 4 + numel * dtype.itemsize
        if size != expected:
            raise CheckpointError(
                f"{path}: {size} bytes, but its header describes {expected} ({'truncated' if size < expected else 'trailing data'})"
            )
        tensors: dict[str, torch.Tensor] = {}
        for name, shape in layout:  # one tensor in memory at a time, beyond the result
            count = math.prod(shape)
            block = torch.frombuffer(bytearray(handle.read(count * dtype.itemsize)), dtype=dtype).view(shape).float()
            if "{}" in name:
                for layer in range(n_layer):
                    tensors[name.format(layer)] = block[layer].clone()
            else:
                tensors[name] = block
    notes = [f"llm.c vocabulary: {vocab} tokens padded to {padded_vocab} rows"] if padded_vocab != vocab else []
    if version == 5:
        notes.append("bf16 weights widened to fp32")
    return ForeignModel(config, tensors, notes)


def write(model: GPT, path: Path, vocab_size: int, dtype: str = "f32") -> list[str]:
    """Write `model` as llm.c's model file; `vocab_size` is the tokenizer's (the rows past it are padding)."""
    config = model.config
    require(config, "llm.c", str(path), activation_function=TANH_GELUS, tie_word_embeddings=True,
            n_inner=(None, 4 * config.n_embd), layer_norm_epsilon=1e-5, scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False)  # fmt: skip
    if dtype not in ("f32", "bf16"):
        raise CheckpointError(f"{path}: llm.c files hold f32 or bf16, not {dtype!r}")
    torch_dtype = torch.float32 if dtype == "f32" else torch.bfloat16
    padded = -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [LLMC_MAGIC, 3 if dtype == "f32" else 5, config.n_positions, vocab_size, config.n_layer,
                  config.n_head, config.n_embd, padded]  # fmt: skip
    state = {name: t.detach().cpu().float() for name, t in model.state_dict().items()}
    wte = torch.zeros(padded, config.n_embd)
    wte[:vocab_size] = state["wte.weight"][:vocab_size]  # llm.c pads with zero rows
    state["wte.weight"] = wte
    with atomic_open(path) as handle:
        handle.write(header.tobytes())
        for name, _ in _layout(GPTConfig(**{**config.to_dict(), "vocab_size": padded})):
            names = [name.format(layer) for layer in range(config.n_layer)] if "{}" in name else [name]
            for each in names:
                tensor = state[each].to(torch_dtype).contiguous()
                handle.write(tensor.view(torch.int16 if dtype == "bf16" else torch.int32).numpy().tobytes())
    return [f"vocabulary padded from {vocab_size} to {padded} rows"] if padded != vocab_size else []
