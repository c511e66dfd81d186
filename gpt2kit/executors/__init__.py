"""Where the data jobs' tasks run: local processes, a Ray cluster or a Slurm cluster, through datatrove's executors.

`webtext build`, `prepare` (with tasks) and `overlap build` (with shards) describe their work as stages: datatrove
pipeline steps run as N tasks, each task a deterministic slice of the work that records its completion under the
stage's logging folder. `run_stages` runs the stages in order on one executor, chained with datatrove's
`depends` (on Slurm, `--dependency=afterok` between array jobs), and returns when every task of every stage has
completed. A failed task is run again (`retries`); tasks that completed are never run twice, so running the same
command again after a crash resumes where it stopped.

Every path a stage uses must be absolute and on a file system all workers share.
"""

from __future__ import annotations

import contextlib
import logging
import os

from gpt2kit.errors import GPT2KitError
from gpt2kit.executors.stages import (
    EXECUTORS,
    ExecutorConfig,
    Stage,
    completed_ranks,
    default_workers,
    incomplete_ranks,
    reset_work_folder,
    stage_failure,
    work_fingerprint,
)

__all__ = [
    "EXECUTORS",
    "ExecutorConfig",
    "Stage",
    "completed_ranks",
    "default_workers",
    "incomplete_ranks",
    "reset_work_folder",
    "run_stages",
    "stage_failure",
    "work_fingerprint",
]

log = logging.getLogger(__name__)


def run_stages(stages: list[Stage], config: ExecutorConfig, verbose: bool | None = None) -> None:
    """Run `stages` in order on `config.kind`; raise GPT2KitError naming the stage and tasks that kept failing.

    datatrove prints banners and per-task stats on stderr; they are in its task logs either way. `verbose`
    (default: whether the datatrove logger is at INFO, the CLI's -v) shows them.
    """
    config.check("executor")
    for stage in stages:
        if not stage.logging_dir.is_absolute():
            raise GPT2KitError(f"stage {stage.name}: its folder {stage.logging_dir} must be an absolute path")
    if verbose is None:
        verbose = logging.getLogger("datatrove").isEnabledFor(logging.INFO)
    if config.kind == "slurm":
        from gpt2kit.executors.slurm import run_on_slurm as runner
    else:
        runner = {"local": _run_local, "ray": _run_ray}[config.kind]
    with contextlib.ExitStack() as stack:
        if not verbose:
            sink = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stderr(sink))
            if config.kind != "local":  # local tasks fork from here and log to their task files through loguru
                stack.enter_context(_datatrove_logs_off())
        runner(stages, config, verbose)


@contextlib.contextmanager
def _datatrove_logs_off():
    """datatrove logs with loguru, whose console handler holds the stderr of import time: turn it off here."""
    from loguru import logger

    logger.disable("datatrove")
    try:
        yield
    finally:
        logger.enable("datatrove")


def _retrying(stage: Stage, config: ExecutorConfig, run_once) -> None:
    """Run a stage until every task completed, at most 1 + retries times. Bad input (GPT2KitError) is not retried."""
    for attempt in range(1, config.retries + 2):
        error = None
        try:
            run_once()
        except GPT2KitError:
            raise
        except Exception as err:  # a task's crash: its rank stays incomplete and is run again
            error = err
        missing = incomplete_ranks(stage)
        if not missing:
            return
        if attempt <= config.retries:
            log.warning(
                "stage %s: %d tasks failed; running them again (retry %d of %d)",
                stage.name,
                len(missing),
                attempt,
                config.retries,
            )
            continue
        raise stage_failure(stage, missing, attempt, error)


# -- local processes -----------------------------------------------------------------------------------------------


def _run_local(stages: list[Stage], config: ExecutorConfig, verbose: bool) -> None:
    from datatrove.executor import LocalPipelineExecutor

    for stage in stages:
        workers = min(config.workers or default_workers(), stage.tasks)
        log.info("stage %s: %d tasks on %d local processes", stage.name, stage.tasks, workers)

        def run_once(stage=stage, workers=workers):
            LocalPipelineExecutor(
                pipeline=stage.steps,
                tasks=stage.tasks,
                workers=workers,
                logging_dir=str(stage.logging_dir),
                start_method="fork" if os.name == "posix" else "spawn",
            ).run()

        _retrying(stage, config, run_once)


# -- Ray ----------------------------------------------------------------------------------------------------------


def _run_ray(stages: list[Stage], config: ExecutorConfig, verbose: bool) -> None:
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError:
        raise GPT2KitError("the Ray executor needs ray (pip install 'gpt2kit[scale]')") from None

    started = not ray.is_initialized()
    if started:
        options = {"address": config.ray_address} if config.ray_address else {"num_cpus": config.workers}
        try:
            ray.init(**options, include_dashboard=False, log_to_driver=verbose, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise GPT2KitError(f"cannot start or reach Ray at {config.ray_address or 'this machine'}: {err}") from None
    try:
        launched: list = []  # the previous stage's executor: each stage `depends` on it (complete by then)
        for stage in stages:
            log.info("stage %s: %d tasks on Ray", stage.name, stage.tasks)

            def run_once(stage=stage, depends=launched[-1] if launched else None):
                executor = RayPipelineExecutor(
                    pipeline=stage.steps,
                    tasks=stage.tasks,
                    workers=config.workers or -1,
                    depends=depends,
                    logging_dir=str(stage.logging_dir),
                    cpus_per_task=config.cpus_per_task,
                    mem_per_cpu_gb=config.mem_per_cpu_gb,
                )
                launched.append(executor)
                executor.run()

            _retrying(stage, config, run_once)
    finally:
        if started:
            ray.shutdown()
