"""What `gpt2kit info` shows: every preset's shape and parameter counts, or one model's (a preset or a
checkpoint), counted on the meta device so that nothing is allocated."""

from __future__ import annotations

from pathlib import Path

import torch

from gpt2kit.checkpoint import CheckpointError, load
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT, PRESETS, preset_config


def _meta_model(name: str, **overrides) -> GPT:
    with torch.device("meta"):
        return GPT(preset_config(name, **overrides))


def preset_table(vocab_size: int = 50257) -> str:
    """Every preset with its shape and parameter counts (names give the count without embeddings)."""
    if vocab_size < 1:
        raise GPT2KitError(f"vocab_size must be positive, got {vocab_size}")
    rows = [("preset", "layers", "width", "heads", "context", f"params (vocab {vocab_size:,})", "without embeddings")]
    for name in PRESETS:
        model = _meta_model(name, vocab_size=vocab_size)
        config = model.config
        rows.append((name, str(config.n_layer), str(config.n_embd), str(config.n_head), str(config.n_positions),
                     f"{model.num_parameters():,}", f"{model.num_parameters(non_embedding=True):,}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]  # fmt: skip
    return (
        "\n".join(lines)
        + "\ncpu-* names are roughly the parameter count without embeddings; gpt2* names are the paper's models"
    )


def model_summary(name_or_path: str) -> str:
    """A preset's or a model's shape and parameter counts, as lines."""
    if name_or_path in PRESETS:
        model = _meta_model(name_or_path)
        source = f"preset {name_or_path}"
    else:
        try:
            model = load(name_or_path).model
        except CheckpointError as err:
            if Path(name_or_path).exists():
                raise
            raise GPT2KitError(f"{name_or_path}: not a preset (the preset table lists them), and {err}") from None
        source = str(name_or_path)
    config = model.config
    return "\n".join(
        [
            f"model: {source}",
            f"layers: {config.n_layer}  width: {config.n_embd}  heads: {config.n_head}  context: {config.n_positions}",
            f"vocab: {config.vocab_size}",
            f"parameters: {model.num_parameters():,} ({model.num_parameters(non_embedding=True):,} non-embedding)",
        ]
    )
