"""Checkpoints made elsewhere: nanoGPT's ckpt.pt and llm.c's .bin in and out, GGUF out.

The HF GPT-2 directory is gpt2kit's own format (checkpoint.py); everything here
converts to or from it through a `GPT` in memory. Readers return a `ForeignModel`
(config plus tensors under GPT's own names, nn.Linear [out, in] layout);
writers take the model and, where the format embeds one, the tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt2kit.formats.base import LLMC_MAGIC, CheckpointError, ForeignModel


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
