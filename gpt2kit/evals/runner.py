"""`evaluate`: run tasks on a model and return one result per task; writing results and samples."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.data import DataSource, resolve
from gpt2kit.evals.registry import get_task
from gpt2kit.evals.report import format_metrics
from gpt2kit.evals.scoring import Scorer
from gpt2kit.evals.task import EvalOptions, TaskContext, TaskSpec
from gpt2kit.io import atomic_write_jsonl, atomic_write_text
from gpt2kit.outputs import EVAL_RESULTS, EVAL_SAMPLES, check_file_output

logger = logging.getLogger(__name__)


def _resolve_task_data(
    spec: TaskSpec, data: Mapping[str, str | os.PathLike], data_dir: str | os.PathLike | None
) -> tuple[DataSource, DataSource | None]:
    source = resolve(spec.name, spec.name, data, data_dir, spec.data_files, spec.hf_dataset)
    if spec.complete_data:
        source = spec.complete_data(source)
    examples = None
    if spec.uses_examples:
        examples = resolve(
            spec.name, f"{spec.name}:examples", data, data_dir, spec.example_files, spec.hf_examples, required=False
        )
        if examples is not None and spec.complete_data:
            examples = spec.complete_data(examples)
    return source, examples


def evaluate(
    model,
    tokenizer,
    tasks: Sequence[str],
    data: Mapping[str, str | os.PathLike] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    options: EvalOptions | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    model_name: str = "model",
    samples: list[dict[str, Any]] | None = None,
    job_name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate `model` on `tasks`; returns {task: {metrics, protocol, n, data_sha256, ...}}.

    `data` maps a task name (or `TASK:examples`) to a file, `SRC,REF` pair,
    directory, or `hf`/`hf:NAME[:CONFIG][@SPLIT]`; tasks not in it are looked up
    by standard file name under `data_dir`. `limit` and `batch_size` override
    `options`. Per-example records are appended to `samples` when it is given. `job_name` names the
    evaluation in the log when it is not the task's own name (one task scoring several data sets).
    All data is located before any task runs, so a missing file fails at once.
    """
    options = options or EvalOptions()
    overrides = {k: v for k, v in (("limit", limit), ("batch_size", batch_size)) if v is not None}
    if overrides:
        options = dataclasses.replace(options, **overrides)
    data = dict(data or {})
    specs = [get_task(name) for name in dict.fromkeys(tasks)]
    if not specs:
        raise GPT2KitError("no tasks to evaluate")
    names = {spec.name for spec in specs}
    for key in data:
        if key.split(":")[0] not in names:
            raise GPT2KitError(f"data {key!r}: {key.split(':')[0]!r} is not one of the tasks being run")
        if ":" in key and key.split(":", 1)[1] != "examples":
            raise GPT2KitError(f"data {key!r}: the only sub-key is TASK:examples")
    sources = {spec.name: _resolve_task_data(spec, data, data_dir) for spec in specs}
    scorer = Scorer(model, options.batch_size, options.context_length)
    parameters = model.num_parameters()
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        source, examples = sources[spec.name]
        context = TaskContext(spec.name, model, tokenizer, options, source, examples, scorer)
        label = spec.name if job_name in (None, spec.name) else f"{job_name} ({spec.name})"
        logger.info("%s: evaluating on %s", label, source.describe())
        start = time.perf_counter()
        output = spec.run(context)
        runtime = time.perf_counter() - start
        results[spec.name] = {
            "metrics": {k: float(v) for k, v in output.metrics.items()},
            "protocol": output.protocol,
            "n": output.n,
            "data_sha256": source.sha256,
            "data": source.describe(),
            "examples_data": examples.describe() if examples else None,
            "counts": output.counts,
            "model": model_name,
            "model_params": parameters,
            "runtime_s": round(runtime, 3),
            "options": options.to_dict(),
        }
        logger.info("%s: %s (n=%d, %.1f s)", label, format_metrics(output.metrics), output.n, runtime)
        if samples is not None:
            samples.extend({"task": spec.name, **sample} for sample in output.samples)
    return results


def write_results(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    path = check_file_output(path, EVAL_RESULTS)
    atomic_write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


def write_samples(samples: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    path = check_file_output(path, EVAL_SAMPLES)
    atomic_write_jsonl(path, samples)
    return path
