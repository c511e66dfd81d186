"""`gpt2kit prepare`: a corpus into token shards, the one place that decides how: streamed by one process and its
workers (`prepare_stream`), or as tasks on an executor with shards per input file (`prepare_tasks`)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from gpt2kit.config import config_from_dict
from gpt2kit.data.prepare_common import PrepareConfig, PrepareError, PrepareResult
from gpt2kit.executors import ExecutorConfig
from gpt2kit.outputs import PREPARED_DATA, claim_directory
from gpt2kit.tokenizer import Tokenizer


def prepare(
    inputs: list[str],
    tokenizer: str | Tokenizer,
    out: str | os.PathLike,
    executor: ExecutorConfig | None = None,
    tasks: int | None = None,
    **options,
) -> PrepareResult:
    """Tokenize `inputs` (and/or a HF dataset) into shards under `out`; `options` are PrepareConfig's fields.

    With `tasks`, or an `executor` other than local processes, the files are tokenized as tasks with shards per
    input file (`gpt2kit.data.prepare_tasks`); otherwise one process streams them into shard groups.
    """
    config = config_from_dict(PrepareConfig, options, "prepare options")
    if not inputs and not config.hf_dataset:
        raise PrepareError("nothing to prepare: give input files or a HF dataset")
    as_tasks = tasks is not None or (executor is not None and executor.kind != "local")
    if as_tasks and importlib.util.find_spec("datatrove") is None:
        raise PrepareError("tokenizing as tasks needs datatrove (pip install 'gpt2kit[webtext]')")
    with claim_directory(out, PREPARED_DATA):  # one writer: two runs with other settings would mix their shards
        if as_tasks:
            from gpt2kit.data.prepare_tasks import prepare_with_tasks

            executor = (executor or ExecutorConfig()).with_local_workers(config.workers)
            return prepare_with_tasks(inputs, tokenizer, Path(out), config, executor, tasks)
        from gpt2kit.data.prepare_stream import StreamingPreparation

        return StreamingPreparation(inputs, tokenizer, Path(out), config).run()


__all__ = ["PrepareConfig", "PrepareError", "PrepareResult", "prepare"]
