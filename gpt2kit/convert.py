"""`gpt2kit convert`: a model from any format gpt2kit reads to any it writes, through a `GPT` in memory.

It sits above both the native loader (`checkpoint`) and the foreign formats (`formats`)."""

from __future__ import annotations

import os
from pathlib import Path

from gpt2kit.checkpoint import load, save
from gpt2kit.formats import format_of_file, format_of_target
from gpt2kit.formats.base import SOURCE_FORMATS, TARGET_DTYPES, TARGET_FORMATS, CheckpointError
from gpt2kit.outputs import check_model_target


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
