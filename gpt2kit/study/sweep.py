"""`gpt2kit sweep`: the paper's capacity study. Train several model sizes on the same data with the same token
budget, evaluate each zero-shot with `gpt2kit eval`, draw samples, and write the capacity report.

A sweep directory holds `sweep.json` (its settings), one training run per size under `runs/SIZE/`, each
size's `eval.json` and `samples.json`, and the report. Running the same sweep again resumes it: finished
steps are skipped, an interrupted training run continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_write_text
from gpt2kit.outputs import SWEEP, claim_directory
from gpt2kit.study.report import (
    ModelReport,
    ScoreColumn,
    capacity_table,
    memorisation_table,
    trend_lines,
    write_report,
)

if TYPE_CHECKING:
    from gpt2kit.checkpoint import LoadedModel

logger = logging.getLogger(__name__)

SETTINGS_FILE = "sweep.json"
EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.json"
MEMORISATION_FILE = "memorisation.json"
TIMINGS_FILE = "timings.json"  # seconds each stage took when it ran, so a resumed sweep still reports them
# Settings that must not change when a sweep is resumed: they define what is being compared.
FIXED_SETTINGS = ("data", "tokens", "config", "overrides", "seed")


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: `task` from the eval registry, reported under `name` (a task may run on several data sets)."""

    name: str
    task: str
    data: str | None = None  # the task's data file (or SRC,REF); None: found by name under the data directory
    examples: str | None = None  # the few-shot example pool, where the task uses one
    limit: int | None = None  # examples to score; None: the sweep's eval_limit


@dataclass
class SweepConfig:
    data: str  # a prepared data directory (`gpt2kit prepare`)
    out: str
    sizes: list[str]  # model presets, trained in this order
    tokens: int  # training tokens per size
    eval_jobs: list[EvalJob]
    config: str | None = None  # a `gpt2kit train` config file; each size overrides its preset and max_steps
    overrides: list[str] = field(default_factory=list)  # `--set key=value` for every run
    eval_data_dir: str | None = None  # where the eval tasks' standard file names are looked for
    eval_limit: int | None = None  # examples per eval task; None: all
    eval_shots: int | None = None  # example pairs for translation and question answering; None: the task's
    eval_batch_size: int = 16
    device: str = "auto"  # where evaluation and sampling run: auto (CUDA when there is one), cpu, cuda, cuda:N
    no_detokenize: tuple[str, ...] = ()
    prompts: list[str] = field(default_factory=lambda: [""])  # "" samples unconditionally
    sample_tokens: int = 80
    seed: int = 0  # the seed of sampling and evaluation draws
    # Memorisation (the paper's section 4): training-set against held-out perplexity on as many windows of each,
    # and, given the training text's 8-gram filter (`gpt2kit overlap build`), how much unconditional samples repeat.
    memorisation_windows: int = 32  # windows of train and of val whose perplexities are compared
    train_filter: str | None = None  # the training text's 8-gram filter: how much samples repeat it
    memorisation_samples: int = 8

    def __post_init__(self) -> None:
        if not self.sizes:
            raise GPT2KitError("sweep: sizes is empty")
        from gpt2kit.model import PRESETS

        unknown = [size for size in self.sizes if size not in PRESETS]
        if unknown:
            raise GPT2KitError(f"sweep: unknown size {unknown[0]!r}; presets: {', '.join(PRESETS)}")
        if len(set(self.sizes)) != len(self.sizes):
            raise GPT2KitError(f"sweep: sizes names a size twice: {','.join(self.sizes)}")
        if self.tokens < 1:
            raise GPT2KitError(f"sweep: tokens must be positive, got {self.tokens}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise GPT2KitError(f"sweep: eval_limit must be positive, got {self.eval_limit}")
        if self.sample_tokens < 1:
            raise GPT2KitError(f"sweep: sample_tokens must be positive, got {self.sample_tokens}")
        if self.memorisation_windows < 1 or self.memorisation_samples < 1:
            raise GPT2KitError("sweep: memorisation_windows and memorisation_samples must be positive")
        if self.train_filter is not None and not Path(self.train_filter).is_file():
            raise GPT2KitError(f"{self.train_filter}: no such filter file (gpt2kit overlap build makes one)")

    def settings(self) -> dict:
        values = asdict(self)
        values["eval_jobs"] = [asdict(job) for job in self.eval_jobs]
        values["no_detokenize"] = list(self.no_detokenize)
        return values


@dataclass
class SizeResult:
    size: str
    model_dir: Path
    params: int
    results: dict[str, dict]
    samples: list[tuple[str, str]]
    metrics_path: Path
    seconds: dict[str, float]  # the stages run by this call
    timings: dict[str, float]  # every stage's seconds, including those of earlier calls
    memorisation: dict = field(default_factory=dict)


# -- the three stages, each a thin layer over the library that does the work -------------------------------------


def train_size(config: SweepConfig, size: str, run_dir: Path) -> tuple[Path, bool]:
    """Train `size` for the sweep's token budget, resuming from its last checkpoint if there is one.

    Returns the final model directory, and whether any training happened.
    """
    from gpt2kit.config import load_config
    from gpt2kit.device import resolve_device
    from gpt2kit.parallelize import DistEnv, init_distributed
    from gpt2kit.train import train
    from gpt2kit.train_config import TrainConfig
    from gpt2kit.training_run import CHECKPOINT_NAME, checkpoints

    flags = {"data": config.data, "out": str(run_dir), "preset": size, "seed": config.seed}
    train_config = load_config(TrainConfig, config.config, flags=flags, overrides=config.overrides, check=False)
    train_config.max_steps = max(1, math.ceil(config.tokens / train_config.batch_tokens))
    found = checkpoints(run_dir)
    if found and int(CHECKPOINT_NAME.fullmatch(found[-1].name).group(1)) >= train_config.max_steps:
        return found[-1], False
    env = DistEnv.from_environment()
    init_distributed(
        env, resolve_device(train_config.device, env.local_rank)
    )  # once for all sizes; run_sweep leaves it
    result = train(train_config, resume=bool(found))
    if result.checkpoint is None and env.is_main:
        raise GPT2KitError(f"{run_dir}: training finished without a checkpoint")
    return result.checkpoint or run_dir, True  # under torchrun only rank 0 learns the checkpoint's path


def evaluate_size(config: SweepConfig, loaded: LoadedModel) -> dict[str, dict]:
    """Run every eval job on the model with `gpt2kit eval`'s library; results keyed by job name."""
    from gpt2kit.evals import EvalOptions, evaluate

    options = EvalOptions(batch_size=config.eval_batch_size, seed=config.seed, no_detokenize=config.no_detokenize)
    if config.eval_shots is not None:
        options.shots = config.eval_shots
    results = {}
    for job in config.eval_jobs:
        data = {job.task: job.data} if job.data else {}
        if job.examples:
            data[f"{job.task}:examples"] = job.examples
        outcome = evaluate(
            loaded.model,
            loaded.tokenizer,
            [job.task],
            data,
            data_dir=config.eval_data_dir,
            options=options,
            limit=job.limit or config.eval_limit,
            model_name=str(loaded.path),
            job_name=job.name,
        )
        results[job.name] = outcome[job.task]
    return results


def sample_size(config: SweepConfig, loaded: LoadedModel) -> list[tuple[str, str]]:
    """One top-k 40 sample per prompt (the paper's sampling), seeded; "" samples from <|endoftext|>."""
    from gpt2kit.generate import GenerationConfig, generate
    from gpt2kit.sequences import PAPER_TOP_K

    eot = loaded.tokenizer.eot_token
    prompts = [loaded.tokenizer.encode(p) if p else [eot] for p in config.prompts]
    settings = GenerationConfig(
        max_new_tokens=config.sample_tokens, temperature=1.0, top_k=PAPER_TOP_K, seed=config.seed
    )
    completions = generate(loaded.model, loaded.tokenizer, prompts, settings)
    return [(p, c.text) for p, c in zip(config.prompts, completions, strict=True)]


def memorisation_size(config: SweepConfig, loaded: LoadedModel) -> dict:
    """Perplexity on training windows against held-out ones (the paper's Figure 4), and with a training filter, the
    8-gram overlap of unconditional samples with the training text (Figure 5)."""
    import numpy as np
    import torch

    from gpt2kit.data.loader import TokenWindows
    from gpt2kit.data.overlap import VERBATIM_WORDS, check_examples
    from gpt2kit.generate import GenerationConfig, generate
    from gpt2kit.sequences import PAPER_TOP_K

    model = loaded.model.eval()
    device = next(model.parameters()).device
    context = model.config.n_positions
    result: dict = {}
    for split, key in (("train", "train_ppl"), ("val", "heldout_ppl")):
        windows = TokenWindows(config.data, split, context)
        count = min(config.memorisation_windows, len(windows))
        if count == 0:
            raise GPT2KitError(f"{config.data}: the {split} split has no window of {context} tokens")
        indices = np.linspace(0, len(windows) - 1, count).astype(int)  # spread over the split, the same every time
        total = 0.0
        with torch.no_grad():
            for start in range(0, count, 8):
                x, y = windows.batch(indices[start : start + 8])
                total += float(model(x.to(device), targets=y.to(device))) * len(x)
        result[key] = math.exp(total / count)
        result["tokens_each"] = count * context
    if config.train_filter:
        from gpt2kit.data.bloom import BloomFilter

        settings = GenerationConfig(
            max_new_tokens=config.sample_tokens, temperature=1.0, top_k=PAPER_TOP_K, seed=config.seed + 1000
        )
        eot = [loaded.tokenizer.eot_token]
        samples = generate(model, loaded.tokenizer, [eot] * config.memorisation_samples, settings)
        row = check_examples(
            BloomFilter.open(config.train_filter), "samples", [c.text for c in samples], VERBATIM_WORDS
        )
        result |= {
            "samples": row.examples,
            "sample_8grams_in_training_percent": row.percent_ngrams,
            "samples_with_verbatim_percent": row.percent_verbatim,
            "verbatim_words": VERBATIM_WORDS,
            "longest_verbatim_words": row.longest_verbatim_words,
        }
    return result


# -- the sweep ---------------------------------------------------------------------------------------------------


def _check_settings(config: SweepConfig, out: Path) -> None:
    path = out / SETTINGS_FILE
    current = config.settings()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GPT2KitError(f"{path}: unreadable sweep settings ({err})") from None
        for key in FIXED_SETTINGS:
            if saved.get(key) != current[key]:
                raise GPT2KitError(
                    f"{out}: this sweep was started with {key}={saved.get(key)!r}, not {current[key]!r}; "
                    "use another output directory to compare different settings"
                )
        if saved.get("eval_jobs") != current["eval_jobs"] or saved.get("eval_limit") != current["eval_limit"]:
            logger.info("evaluation settings changed: every size is evaluated again")
            for eval_file in out.glob(f"runs/*/{EVAL_FILE}"):
                eval_file.unlink()
        if saved.get("prompts") != current["prompts"] or saved.get("sample_tokens") != current["sample_tokens"]:
            for samples_file in out.glob(f"runs/*/{SAMPLES_FILE}"):
                samples_file.unlink()
        memorisation_keys = ("memorisation_windows", "train_filter", "memorisation_samples", "sample_tokens")
        if any(saved.get(key) != current[key] for key in memorisation_keys):
            for memorisation_file in out.glob(f"runs/*/{MEMORISATION_FILE}"):
                memorisation_file.unlink()
    atomic_write_text(path, json.dumps(current, indent=2))


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GPT2KitError(f"{path}: unreadable ({err}); delete it to redo this step") from None


def finish_size(config: SweepConfig, size: str, out: Path, model_dir: Path, seconds: dict[str, float]) -> SizeResult:
    """Evaluate and sample one trained size, skipping what is already done."""
    run_dir = out / "runs" / size

    loaded = None  # the model, read once for the stages still to run

    def stage(name: str, file: str, compute):
        """A stage's result from its file when an earlier call wrote it, else computed, timed and written."""
        nonlocal loaded
        path = run_dir / file
        if path.exists():
            return _load_json(path)
        start = time.perf_counter()
        if loaded is None:
            from gpt2kit.checkpoint import load

            loaded = load(model_dir, device=config.device)
        value = compute(config, loaded)
        seconds[name] = time.perf_counter() - start
        atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False))
        return value

    results = stage("eval", EVAL_FILE, evaluate_size)
    samples = [tuple(pair) for pair in stage("samples", SAMPLES_FILE, sample_size)]
    memorisation = stage("memorisation", MEMORISATION_FILE, memorisation_size)
    params = next(iter(results.values()))["model_params"]  # every eval result records the model's size
    timings = record_timings(run_dir, seconds)
    return SizeResult(
        size, model_dir, params, results, samples, run_dir / "metrics.jsonl", seconds, timings, memorisation
    )


def record_timings(directory: Path, seconds: dict[str, float]) -> dict[str, float]:
    """Merge `seconds` into `directory`'s timings file; returns every stage's seconds recorded there."""
    path = directory / TIMINGS_FILE
    timings = _load_json(path) if path.exists() else {}
    timings.update(seconds)
    atomic_write_text(path, json.dumps(timings, indent=2))
    return timings


def default_columns(jobs: list[EvalJob]) -> list[ScoreColumn]:
    """Each job's headline metric, as the eval registry names and shows it."""
    from gpt2kit.evals import get_task

    columns = []
    for job in jobs:
        spec_column = get_task(job.task).columns[0]
        label = spec_column.header if job.name == job.task else f"{job.name} ({spec_column.metric})"
        columns.append(
            ScoreColumn(
                job.name,
                spec_column.metric,
                label,
                percent=spec_column.unit == "acc",
                higher_is_better=spec_column.unit not in ("ppl", "bpb"),
            )
        )
    return columns


def run_sweep(
    config: SweepConfig,
    *,
    columns: list[ScoreColumn] | None = None,
    baselines: dict[str, float] | None = None,
    baseline_notes: dict[str, str] | None = None,
    title: str = "Capacity sweep",
    intro: str = "",
    timings: dict[str, float] | None = None,
    extra_sections: list[tuple[str, str]] | None = None,
    on_size: Callable[[SizeResult], None] | None = None,
) -> tuple[Path | None, list[SizeResult]]:
    """Run (or resume) the sweep and write its report; returns the report's path and each size's result.

    Every size is trained first, then each is evaluated and sampled. Under torchrun every rank trains, and
    rank 0 alone evaluates and reports (the other ranks return None and no results).
    """
    out = Path(config.out)
    rank = int(os.environ.get("RANK", "0"))
    with contextlib.ExitStack() as held:
        if rank == 0:
            held.enter_context(claim_directory(out, SWEEP))  # one writer; under torchrun, rank 0 writes
            _check_settings(config, out)
        else:
            out.mkdir(parents=True, exist_ok=True)
        return _train_evaluate_report(
            config,
            out,
            rank,
            columns=columns,
            baselines=baselines,
            baseline_notes=baseline_notes,
            title=title,
            intro=intro,
            timings=timings,
            extra_sections=extra_sections,
            on_size=on_size,
        )


def _train_evaluate_report(
    config: SweepConfig,
    out: Path,
    rank: int,
    *,
    columns: list[ScoreColumn] | None,
    baselines: dict[str, float] | None,
    baseline_notes: dict[str, str] | None,
    title: str,
    intro: str,
    timings: dict[str, float] | None,
    extra_sections: list[tuple[str, str]] | None,
    on_size: Callable[[SizeResult], None] | None,
) -> tuple[Path | None, list[SizeResult]]:
    seconds: dict[str, dict[str, float]] = {}
    model_dirs: dict[str, Path] = {}
    from gpt2kit.parallelize import shutdown_distributed

    try:
        for size in config.sizes:
            logger.info("sweep: training %s", size)
            start = time.perf_counter()
            model_dirs[size], trained = train_size(config, size, out / "runs" / size)
            seconds[size] = {"train": time.perf_counter() - start} if trained else {}
            if trained and rank == 0:
                record_timings(out / "runs" / size, seconds[size])
    finally:
        shutdown_distributed()
    if rank != 0:
        return None, []
    results = []
    for size in config.sizes:
        logger.info("sweep: evaluating %s", size)
        result = finish_size(config, size, out, model_dirs[size], seconds[size])
        results.append(result)
        if on_size:
            on_size(result)
    timings = dict(timings or {})
    for stage in ("train", "eval", "samples"):
        for result in results:
            if stage in result.timings:
                timings[f"{stage} {result.size}"] = result.timings[stage]
    models = [ModelReport(r.size, r.params, r.results, r.metrics_path, r.samples, r.memorisation) for r in results]
    report = write_report(
        out,
        models,
        columns or default_columns(config.eval_jobs),
        baselines,
        title=title,
        intro=intro,
        baseline_notes=baseline_notes,
        timings=timings,
        extra_sections=extra_sections,
    )
    return report, results


def sweep_summary(config: SweepConfig, results: list[SizeResult]) -> str:
    """The sweep's tables for the console: scores by size, the trends, and memorisation."""
    models = [ModelReport(r.size, r.params, r.results, memorisation=r.memorisation) for r in results]
    columns = default_columns(config.eval_jobs)
    return "\n".join(
        [capacity_table(models, columns, {}), *trend_lines(models, columns, {}), memorisation_table(models)]
    )
