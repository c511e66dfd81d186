"""`overlap build`: the one place that decides between building the 8-gram filter in one process pool
(`bloom.build_filter`) and as map and reduce tasks on an executor (`bloom_tasks.build_sharded_filter`), as
`prepare()` decides for tokenizing."""

from __future__ import annotations

import os
from collections.abc import Iterable

from gpt2kit.data.bloom import BuildResult, build_filter
from gpt2kit.errors import GPT2KitError
from gpt2kit.executors import ExecutorConfig, default_workers


def build_overlap_filter(
    corpus: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    fpr: float = 1e-8,
    text_field: str = "text",
    workers: int | None = None,
    expected_ngrams: int | None = None,
    shards: int | None = None,
    tasks: int | None = None,
    executor: ExecutorConfig | None = None,
):
    """The corpus's 8-gram filter at `out`: as tasks when `shards`, `tasks` or an `executor` is given (a sharded
    filter), else in `workers` local processes (one filter file). Returns the build's result (`.summary()`)."""
    if shards is None and tasks is None and executor is None:
        return build_filter(
            list(corpus),
            out,
            fpr=fpr,
            workers=workers or default_workers(),
            text_field=text_field,
            expected_ngrams=expected_ngrams,
        )
    if expected_ngrams is not None:
        raise GPT2KitError(
            "expected_ngrams: a sharded build counts each shard's 8-grams exactly", setting="expected_ngrams"
        )
    from gpt2kit.data.bloom_tasks import build_sharded_filter

    return build_sharded_filter(
        list(corpus),
        out,
        shards=1 if shards is None else shards,
        fpr=fpr,
        text_field=text_field,
        executor=(executor or ExecutorConfig()).with_local_workers(workers),
        tasks=tasks,
    )


__all__ = ["BuildResult", "build_overlap_filter"]
