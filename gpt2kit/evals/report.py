"""Human-readable output: the results as a table laid out like the paper's Table 3, and the task list."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from gpt2kit.evals.registry import TASKS
from gpt2kit.evals.task import Column

PAPER_SIZES = ("117M", "345M", "762M", "1542M")


def format_value(value: float | None, unit: str) -> str:
    """Fractions become percentages, as the paper prints them; perplexities and bits keep their scale."""
    if value is None:
        return "—"
    if unit == "acc":
        return f"{100 * value:.2f}"
    if unit == "bpb":
        return f"{value:.3f}"
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.2f}"  # an untrained model's PPL runs to millions


# Metrics that are fractions, shown as percentages; the rest by what they measure.
_FRACTION_PREFIXES = ("acc", "em", "f1", "rouge")
_DIGITS = {"loss": 4, "bpb": 3, "bpc": 3}
_SPLIT_WORDS = {"valid": "validation", "validation": "validation", "val": "validation", "dev": "dev",
                "development": "dev", "test": "test", "train": "train"}  # fmt: skip


def format_metrics(metrics: Mapping[str, float]) -> str:
    """`ppl 29.41, bpb 1.234, acc 45.60%`: each metric with the digits its kind needs (JSON keeps them all)."""
    parts = []
    for name, value in metrics.items():
        if name.startswith(_FRACTION_PREFIXES):
            parts.append(f"{name} {100 * value:.2f}%")
        elif name in _DIGITS:
            parts.append(f"{name} {value:.{_DIGITS[name]}f}")
        else:
            parts.append(f"{name} {value:,.2f}")
    return ", ".join(parts)


def split_of(description: str) -> str:
    """The split a data set's name says it is (`wiki.valid.tokens` -> validation, `...@test` -> test), else its name."""
    if description.startswith("hf:") and "@" in description:
        split = description.rsplit("@", 1)[1]
        return _SPLIT_WORDS.get(split.lower(), split)
    name = PurePath(description.split(",")[0]).name
    for word in re.findall(r"[a-z]+", name.lower()):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return name


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Rows: the evaluated model, its runtime, then the paper's GPT-2 sizes; columns: each task's metrics."""
    columns: list[tuple[str, Column]] = [
        (name, column) for name, spec in TASKS.items() if name in results for column in spec.columns
    ]
    if not columns:
        return ""
    first = next(iter(results.values()))
    label = f"{first.get('model', 'model')} ({first.get('model_params', 0) / 1e6:.1f}M params)"
    header = "| Model | " + " | ".join(column.header for _, column in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = [header, rule]
    rows.append(
        f"| {label} | "
        + " | ".join(format_value(results[name]["metrics"].get(column.metric), column.unit) for name, column in columns)
        + " |"
    )
    rows.append(
        "| n / runtime (s) | "
        + " | ".join(f"{results[name]['n']} / {results[name]['runtime_s']:.1f}" for name, _ in columns)
        + " |"
    )
    rows.append(
        "| split scored here | " + " | ".join(split_of(results[name].get("data", "")) for name, _ in columns) + " |"
    )
    paper_rows = []
    for size in PAPER_SIZES:
        values = [column.paper.get(size) for _, column in columns]
        if any(v is not None for v in values):
            shown = [
                "—" if v is None else (f"{v:.3f}" if column.unit == "bpb" else f"{v:.2f}")
                for v, (_, column) in zip(values, columns, strict=True)
            ]
            paper_rows.append(f"| GPT-2 {size} (paper) | " + " | ".join(shown) + " |")
    if paper_rows:
        rows.append("| paper's split | " + " | ".join(TASKS[name].paper_split for name, _ in columns) + " |")
    return "\n".join(rows + paper_rows)


def task_listing() -> str:
    """Every task: its family, protocol, the data it expects, and where a HF copy lives."""
    lines = []
    for name, spec in TASKS.items():
        lines.append(f"{name}  [{spec.family}]  metrics: {', '.join(spec.metrics)}")
        lines.append(f"    protocol: {spec.protocol}")
        lines.append(f"    data:     {spec.file_format}")
        if spec.hf_dataset:
            lines.append(f"    or:       --data {name}={spec.hf_dataset.describe()} (or --data {name}=hf)")
    return "\n".join(lines)
