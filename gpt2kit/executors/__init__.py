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
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from gpt2kit.config import Checked
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_write_text
from gpt2kit.outputs import OWN_HIDDEN, WORK_FOLDER, check_owner

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class Stage:
    """One datatrove pipeline: `steps` run as `tasks` tasks, with completions, stats and logs in `logging_dir`."""

    name: str
    tasks: int
    steps: list
    logging_dir: Path


@dataclass
class ExecutorConfig(Checked):
    kind: str = "local"
    workers: int | None = None  # tasks at once; None: all local cores, or no limit on Ray and Slurm
    retries: int = 1  # a failed task is run again this many times before the job stops
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None starts one here
    partition: str = "cpu"  # Slurm
    time: str = "24:00:00"  # Slurm time limit per array job
    qos: str | None = None  # Slurm
    cpus_per_task: int = 1  # Ray and Slurm
    mem_per_cpu_gb: float = 2.0  # Ray and Slurm
    job_name: str = "gpt2kit"  # Slurm jobs are named JOB_NAME-STAGE
    env_command: str | None = None  # run in each Slurm job before its task; default: activate this Python's venv
    sbatch_args: dict[str, str] = field(default_factory=dict)  # more #SBATCH options, e.g. {"account": "lm"}
    poll_seconds: float = 10.0  # how often the Slurm queue is read while waiting

    def with_local_workers(self, workers: int | None) -> ExecutorConfig:
        """This config, with `workers` local processes when it runs locally and names no count of its own."""
        if self.kind == "local" and self.workers is None:
            return dataclasses.replace(self, workers=workers)
        return self

    def problems(self) -> list[str]:
        bad = []
        if self.kind not in EXECUTORS:
            bad.append(f"executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        if self.workers is not None and self.workers < 1:
            bad.append(f"workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            bad.append(f"retries must be >= 0, got {self.retries}")
        if self.cpus_per_task < 1 or self.mem_per_cpu_gb <= 0:
            bad.append("cpus_per_task and mem_per_cpu_gb must be positive")
        if self.poll_seconds <= 0:
            bad.append(f"poll_seconds must be > 0, got {self.poll_seconds}")
        return bad


def work_fingerprint(settings: object, inputs: list[str | os.PathLike]) -> str:
    """What decides a job's work files: its settings and each input file's path, size and modification time."""
    stamps = []
    for name in inputs:
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stamps.extend((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return hashlib.sha256(json.dumps([settings, stamps], sort_keys=True, default=str).encode()).hexdigest()


def reset_work_folder(work: Path, fingerprint: str, keep: tuple[str, ...] = ()) -> None:
    """Start a job's work over (all but the entries named in `keep`) when its fingerprint changed since the last
    run; with the same fingerprint, completed tasks are skipped."""
    check_owner(work, WORK_FOLDER)  # a folder of the user's is never cleared
    stamp = work / "fingerprint"
    if stamp.is_file() and stamp.read_text() == fingerprint:
        return
    if work.is_dir():
        for child in work.iterdir():
            if child.name not in keep and child.name not in OWN_HIDDEN:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, fingerprint)


def completed_ranks(stage: Stage) -> set[int]:
    folder = stage.logging_dir / "completions"
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def incomplete_ranks(stage: Stage) -> list[int]:
    done = completed_ranks(stage)
    return [rank for rank in range(stage.tasks) if rank not in done]


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


def stage_failure(stage: Stage, ranks: list[int], attempts: int, error: BaseException | None = None) -> GPT2KitError:
    shown = ", ".join(map(str, ranks[:8])) + (", ..." if len(ranks) > 8 else "")
    why = f" ({type(error).__name__}: {error})" if error is not None else ""
    return GPT2KitError(
        f"stage {stage.name}: {len(ranks)} of {stage.tasks} tasks failed {attempts} time{'s' * (attempts != 1)} "
        f"(task {shown}){why}; "
        f"logs in {stage.logging_dir / 'logs'}; run the same command again to resume"
    )


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


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
