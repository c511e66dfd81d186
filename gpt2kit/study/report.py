"""The capacity report: a Table-3-shaped table, training curves, score-vs-parameters plots and samples.

Input is one `ModelReport` per model size (its parameter count, its `gpt2kit eval` results, the path of
its training `metrics.jsonl`, and samples) and a list of `ScoreColumn`s saying which metric of which task to
show. `write_report` writes `report.md`, `loss.png` and `capacity.png` into a directory.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_write_bytes, atomic_write_text, read_jsonl
from gpt2kit.outputs import PNG, check_file_output


@dataclass(frozen=True)
class ScoreColumn:
    """One column of the table: `metric` of `task` in the results, shown under `label`.

    `percent` shows a fraction in [0, 1] as a percentage, the paper's unit for accuracies. Perplexities
    (`higher_is_better=False`) are fitted and plotted on a log scale.
    """

    task: str
    metric: str
    label: str
    percent: bool = False
    higher_is_better: bool = True

    def display(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if self.percent:
            return f"{100 * value:.1f}"
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:,.0f}"

    def scaled(self, value: float) -> float:
        return 100 * value if self.percent else value


@dataclass
class ModelReport:
    """Everything the report shows about one trained model."""

    name: str
    params: int
    results: dict[str, dict] = field(default_factory=dict)  # task -> {"metrics": {...}, "protocol": ..., "n": ...}
    metrics_path: Path | None = None  # the training run's metrics.jsonl
    samples: list[tuple[str, str]] = field(default_factory=list)  # (prompt, completion)
    memorisation: dict = field(default_factory=dict)  # train_ppl, heldout_ppl, and sample overlap when measured

    def metric(self, column: ScoreColumn) -> float | None:
        value = self.results.get(column.task, {}).get("metrics", {}).get(column.metric)
        return float(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class Trend:
    """score = intercept + slope * log10(params); for lower-is-better metrics, log10(score) is fitted."""

    slope: float
    intercept: float
    log_score: bool

    def predict(self, params: float) -> float:
        value = self.intercept + self.slope * math.log10(params)
        return 10**value if self.log_score else value

    def describe(self, column: ScoreColumn) -> str:
        if self.log_score:
            return f"x{10**self.slope:.2f} per 10x params"
        unit = " points" if column.percent else ""
        return f"{self.slope:+.2f}{unit} per 10x params"


def read_metrics(run: str | Path) -> list[dict]:
    """The JSON objects of a training run's metrics.jsonl: `run` is the run directory or the file itself."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise GPT2KitError(f"{path}: training metrics not found (not a training run?)")
    return read_jsonl(path)


def fit_trend(params: list[int], scores: list[float], column: ScoreColumn) -> Trend | None:
    """Least-squares fit of the score against log10(params); None with fewer than two points."""
    import numpy as np

    points = [(p, s) for p, s in zip(params, scores, strict=True) if s is not None and p > 0]
    log_score = not column.higher_is_better
    if log_score:
        points = [(p, s) for p, s in points if s > 0]
    if len({p for p, _ in points}) < 2:
        return None
    x = np.log10([p for p, _ in points])
    y = np.array([column.scaled(s) for _, s in points], dtype=float)
    if log_score:
        y = np.log10(y)
    slope, intercept = np.polyfit(x, y, 1)
    return Trend(float(slope), float(intercept), log_score)


def _curve(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(row.get("tokens", row.get("step", len(xs))))
            ys.append(value)
    return xs, ys


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GPT2KitError("plotting needs matplotlib (pip install 'gpt2kit[plot]')") from None
    return plt


def _save_figure(plt, fig, path: Path, dpi: int = 110) -> None:
    """Write the figure as PNG atomically, then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """`gpt2kit plot`: one run's train and validation loss (default RUN_DIR/loss.png); returns the PNG's path."""
    run = Path(run_dir)
    metrics = run / "metrics.jsonl"
    path = check_file_output(Path(out) if out else run / "loss.png", PNG)
    if not plot_loss([ModelReport(run.resolve().name, 0, metrics_path=metrics)], path):
        raise GPT2KitError(f"{metrics}: no loss values to plot yet")
    return path


def plot_loss(models: list[ModelReport], path: Path) -> bool:
    """Training (and validation) loss against tokens seen, one colour per model; False if no curves."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for index, model in enumerate(models):
        if model.metrics_path is None:
            continue
        rows = read_metrics(model.metrics_path)
        colour = f"C{index}"
        xs, ys = _curve(rows, "loss")
        if xs:
            size = f" ({_params(model.params)})" if model.params else ""
            ax.plot(xs, ys, color=colour, alpha=0.8, label=f"{model.name}{size} train")
            drawn = True
        xs, ys = _curve(rows, "val_loss")
        if xs:
            ax.plot(xs, ys, "o--", color=colour, label=f"{model.name} val")
            drawn = True
    if drawn:
        uses_tokens = any("tokens" in row for m in models if m.metrics_path for row in read_metrics(m.metrics_path))
        ax.set_xlabel("tokens seen" if uses_tokens else "step")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.set_title("Training curves")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        _save_figure(plt, fig, path)
    else:
        plt.close(fig)
    return drawn


def _params_axis(ax, params: list[int]) -> None:
    """A log x axis with one labelled tick per model: readable whatever the span (1.5x or 1000x)."""
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(set(params))))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: _params(int(round(value)))))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis="x", labelrotation=30)


def _log_values_axis(ax, values: list[float]) -> None:
    """A log y axis with readable labels, also when the values span less than a decade."""
    import matplotlib.ticker
    import numpy as np

    ax.set_yscale("log")
    low, high = min(values), max(values)
    if high / low < 3:  # a log axis this narrow has no decade ticks: three labelled values instead
        ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(np.geomspace(low, high, 3 if high > low else 1)))
    else:
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5), numticks=8))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: _short_number(value)))


def plot_capacity(
    models: list[ModelReport], columns: list[ScoreColumn], baselines: dict[str, float], path: Path
) -> None:
    """One panel per column: score against parameters on a log axis, the fitted trend, the baseline."""

    plt = _pyplot()
    import numpy as np

    n = len(columns)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    params = [m.params for m in models]
    for ax, column in zip(axes.flat, columns, strict=False):
        scores = [m.metric(column) for m in models]
        shown = [(p, column.scaled(s)) for p, s in zip(params, scores, strict=True) if s is not None]
        if shown:
            ax.plot([p for p, _ in shown], [s for _, s in shown], "o", color="C0", label="models")
        trend = fit_trend(params, scores, column)
        if trend is not None:
            xs = np.logspace(math.log10(min(params)), math.log10(max(params)), 50)
            ax.plot(
                xs, [trend.predict(x) for x in xs], "-", color="C0", alpha=0.6, label=f"fit: {trend.describe(column)}"
            )
        if column.label in baselines:
            baseline = column.scaled(baselines[column.label])
            values = [s for _, s in shown]
            # On a log axis a far-off baseline would flatten the models' points: name it instead of drawing it.
            far = not column.higher_is_better and values and not min(values) / 3 <= baseline <= max(values) * 3
            if far:
                ax.plot([], [], " ", label=f"baseline: {column.display(baselines[column.label])} (off the chart)")
            else:
                ax.axhline(baseline, color="C3", linestyle="--", label="baseline")
        _params_axis(ax, params)
        if not column.higher_is_better:
            _log_values_axis(ax, [s for _, s in shown] or [1.0])
        ax.set_title(column.label, fontsize=10)
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Zero-shot score against model size")
    fig.tight_layout()
    _save_figure(plt, fig, path)


def _short_number(value: float) -> str:
    """9.2M, 12.3k, 45.6, 0.93: three significant digits and no exponent, for axis labels."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _params(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def capacity_table(models: list[ModelReport], columns: list[ScoreColumn], baselines: dict[str, float]) -> str:
    """Rows: the baseline (when there is one), then each model by size; columns: the tasks. Like the paper's Table 3."""
    arrows = ["(higher is better)" if c.higher_is_better else "(lower is better)" for c in columns]
    header = "| model | parameters | " + " | ".join(c.label for c in columns) + " |"
    rule = "|---|---:|" + "---:|" * len(columns)
    lines = [header, rule, "| | | " + " | ".join(arrows) + " |"]
    if baselines:
        lines.append(
            "| trivial baseline | - | " + " | ".join(c.display(baselines.get(c.label)) for c in columns) + " |"
        )
    for model in sorted(models, key=lambda m: m.params):
        cells = [c.display(model.metric(c)) for c in columns]
        lines.append(f"| {model.name} | {model.params:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trend_lines(models: list[ModelReport], columns: list[ScoreColumn], baselines: dict[str, float]) -> list[str]:
    """One line per column: the fitted log-linear slope and whether the scores rise with size above the baseline."""
    lines = []
    ordered = sorted(models, key=lambda m: m.params)
    for column in columns:
        scores = [m.metric(column) for m in ordered]
        trend = fit_trend([m.params for m in ordered], scores, column)
        if trend is None:
            lines.append(f"- **{column.label}**: fewer than two sizes scored, no trend")
            continue
        known = [s for s in scores if s is not None]
        better = (lambda a, b: a > b) if column.higher_is_better else (lambda a, b: a < b)
        monotone = all(better(b, a) for a, b in zip(known, known[1:], strict=False))
        baseline = baselines.get(column.label)
        beats = baseline is not None and better(known[-1], baseline)
        verdict = "improves with every size" if monotone else "does not improve monotonically"
        if baseline is not None:
            verdict += "; the largest model " + ("beats" if beats else "does not beat") + " the baseline"
        lines.append(f"- **{column.label}**: {trend.describe(column)}; {verdict}")
    return lines


def memorisation_table(models: list[ModelReport]) -> str:
    """Per size: perplexity on training and held-out windows (Figure 4), and how much samples repeat (Figure 5)."""
    with_samples = any("sample_8grams_in_training_percent" in m.memorisation for m in models)
    header = "| model | parameters | training PPL | held-out PPL | held-out / training |"
    rule = "|---|---:|---:|---:|---:|"
    if with_samples:
        words = next(m.memorisation["verbatim_words"] for m in models if "verbatim_words" in m.memorisation)
        header += f" sample 8-grams in training text | samples repeating >= {words} words | longest run |"
        rule += "---:|---:|---:|"
    rows = [header, rule]
    for model in models:
        m = model.memorisation
        if not m:
            continue
        row = f"| {model.name} | {model.params:,} | {m['train_ppl']:.2f} | {m['heldout_ppl']:.2f} | "
        row += f"{m['heldout_ppl'] / m['train_ppl']:.3f} |"
        if with_samples and "sample_8grams_in_training_percent" in m:
            row += (
                f" {m['sample_8grams_in_training_percent']:.1f}% | {m['samples_with_verbatim_percent']:.1f}% "
                f"of {m['samples']} | {m['longest_verbatim_words']} words |"
            )
        rows.append(row)
    tokens = next(m.memorisation["tokens_each"] for m in models if m.memorisation)
    rows += ["", f"Both perplexities are over {tokens:,} tokens of windows spread over each split. A held-out "
             "perplexity close to the training one, as in the paper's Figure 4, means the model is not "
             "memorising its training text."]  # fmt: skip
    return "\n".join(rows)


def plot_memorisation(models: list[ModelReport], path: Path) -> Path:
    """Training-set and held-out perplexity against parameters (the paper's Figure 4), log-log."""
    plt = _pyplot()
    measured = [m for m in models if m.memorisation]
    params = [m.params for m in measured]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(params, [m.memorisation["train_ppl"] for m in measured], "o-", label="training set")
    ax.plot(params, [m.memorisation["heldout_ppl"] for m in measured], "s--", label="held out")
    _params_axis(ax, params)
    _log_values_axis(ax, [m.memorisation[k] for m in measured for k in ("train_ppl", "heldout_ppl")])
    ax.set_xlabel("parameters")
    ax.set_ylabel("perplexity")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    out_dir: str | Path,
    models: list[ModelReport],
    columns: list[ScoreColumn],
    baselines: dict[str, float] | None = None,
    *,
    title: str = "Capacity report",
    intro: str = "",
    baseline_notes: dict[str, str] | None = None,
    timings: dict[str, float] | None = None,
    extra_sections: list[tuple[str, str]] | None = None,
) -> Path:
    """Write report.md, loss.png and capacity.png under `out_dir`; returns the report's path.

    `baselines` maps a column label to the trivial baseline's score (same unit as the results);
    `baseline_notes` says what each baseline is.
    """
    if not models:
        raise GPT2KitError("report: no models to report on")
    if not columns:
        raise GPT2KitError("report: no task columns to report")
    baselines = baselines or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(models, key=lambda m: m.params)
    has_loss = plot_loss(ordered, out_dir / "loss.png")
    plot_capacity(ordered, columns, baselines, out_dir / "capacity.png")

    parts = [f"# {title}", ""]
    if intro:
        parts += [intro.strip(), ""]
    parts += ["## Zero-shot results by model size", "", capacity_table(ordered, columns, baselines), ""]
    parts += ["Accuracies, exact match and ROUGE are percentages; BLEU is sacreBLEU's corpus score.", ""]
    if baseline_notes:
        parts += ["Trivial baselines:", ""]
        parts += [f"- {label}: {note}" for label, note in baseline_notes.items()] + [""]
    parts += ["## Log-linear trends", "", *trend_lines(ordered, columns, baselines), ""]
    parts += ["![score against parameters](capacity.png)", ""]
    if has_loss:
        parts += ["## Training curves", "", "![training loss](loss.png)", ""]
    if any(m.memorisation for m in ordered):
        plot_memorisation(ordered, out_dir / "memorisation.png")
        parts += ["## Memorisation (the paper's section 4)", "", memorisation_table(ordered), ""]
        parts += ["![training-set and held-out perplexity](memorisation.png)", ""]
    protocols = _protocols(ordered)
    if protocols:
        parts += ["## Protocols", "", *[f"- `{task}`: {text}" for task, text in protocols.items()], ""]
    if any(m.samples for m in ordered):
        parts += ["## Samples", ""]
        for model in ordered:
            if not model.samples:
                continue
            parts += [f"### {model.name} ({model.params:,} parameters)", ""]
            for prompt, completion in model.samples:
                parts += ["```text", _fence_safe(prompt) + "⟨" + _fence_safe(completion) + "⟩", "```", ""]
        parts += ["Text between ⟨ ⟩ is the model's; the rest is the prompt.", ""]
    for heading, body in extra_sections or []:
        parts += [f"## {heading}", "", body.strip(), ""]
    if timings:
        parts += ["## Timing", "", "| step | seconds |", "|---|---:|"]
        parts += [f"| {step} | {seconds:.1f} |" for step, seconds in timings.items()]
        parts += [f"| total | {sum(timings.values()):.1f} |", ""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path


def _protocols(models: list[ModelReport]) -> dict[str, str]:
    found: dict[str, str] = {}
    for model in models:
        for task, result in model.results.items():
            protocol = result.get("protocol")
            if isinstance(protocol, str) and task not in found:
                found[task] = protocol
    return found


def _fence_safe(text: str) -> str:
    return text.replace("```", "'''")
