"""`gpt2kit plot RUN_DIR`: train and validation loss against tokens seen, as RUN_DIR/loss.png."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_write_bytes


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GPT2KitError(f"{path}: missing (is {run_dir} a training run directory?)") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise GPT2KitError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return records


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the loss curves of a run to `out` (default RUN_DIR/loss.png) and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GPT2KitError("plotting needs matplotlib (pip install 'gpt2kit[plot]')") from None
    records = read_metrics(run_dir)
    train = [(r["tokens"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        raise GPT2KitError(f"{Path(run_dir) / 'metrics.jsonl'}: no loss values to plot yet")
    figure, axes = plt.subplots(figsize=(8, 5))
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", linewidth=1, alpha=0.8)
    if val:
        axes.plot(*zip(*val, strict=True), label="validation loss", marker="o", linewidth=2)
    axes.set_xlabel("tokens seen")
    axes.set_ylabel("cross-entropy (nats per token)")
    axes.set_title(f"{Path(run_dir).resolve().name}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    path = Path(out) if out else Path(run_dir) / "loss.png"
    atomic_write_bytes(path, buffer.getvalue())
    return path
