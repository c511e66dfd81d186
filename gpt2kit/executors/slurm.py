"""Stages on a Slurm cluster: one array job per stage, chained with `--dependency=afterok`, submitted from the
calling process, which then waits for them by reading the queue (`squeue`) and checks each task's completion.

datatrove writes and submits the job scripts (`SlurmPipelineExecutor`); each array task runs
`launch_pickled_pipeline` on the pickled stage. Stats are merged by the caller from the per-task files, so no
merge job is submitted: one that waits on a failed stage would stay queued.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

from datatrove.executor.slurm import SlurmPipelineExecutor

from gpt2kit.errors import GPT2KitError
from gpt2kit.executors.stages import ExecutorConfig, Stage, incomplete_ranks, stage_failure
from gpt2kit.io import atomic_write_text

log = logging.getLogger(__name__)


class SlurmStageExecutor(SlurmPipelineExecutor):
    """datatrove's Slurm executor without its stats-merging job."""

    def launch_merge_stats(self):
        pass


_FINISHED_BADLY = ("DependencyNeverSatisfied",)


def slurm_env_command(config: ExecutorConfig) -> str:
    """What each job runs first: the configured command, or the activation of the virtual environment this
    Python runs in (so `launch_pickled_pipeline` and gpt2kit are found on the compute node)."""
    if config.env_command:
        return config.env_command
    if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "activate").is_file():
        return f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}"
    return f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH"


def _slurm_chain(stages: list[Stage], config: ExecutorConfig) -> list:
    chain, previous = [], None
    for stage in stages:
        executor = SlurmStageExecutor(
            pipeline=stage.steps,
            tasks=stage.tasks,
            time=config.time,
            partition=config.partition,
            cpus_per_task=config.cpus_per_task,
            mem_per_cpu_gb=math.ceil(config.mem_per_cpu_gb),
            workers=config.workers or -1,
            job_name=f"{config.job_name}-{stage.name}",
            qos=config.qos or "",
            env_command=slurm_env_command(config),
            # sbatch takes whole units ("1.5G" is refused): memory in MB; the user's own options come last
            sbatch_args={"mem-per-cpu": f"{round(config.mem_per_cpu_gb * 1024)}M", **config.sbatch_args},
            depends=previous,
            logging_dir=str(stage.logging_dir),
            requeue_signals=None,
            mail_type="NONE",
        )
        chain.append(executor)
        previous = executor
    return chain


def _slurm(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GPT2KitError(f"the Slurm executor needs `{command[0]}` on PATH (run it on a Slurm login node)") from None


def _queued(job_ids: list[str]) -> list[list[str]]:
    """(job id, state, reason) of each of `job_ids` still in the queue."""
    if not job_ids:
        return []
    listed = _slurm(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(job_ids)])
    return [line.split("|") for line in listed.stdout.splitlines() if line.strip()]


def _jobs_file(stages: list[Stage]) -> Path:
    """Where the ids of the jobs submitted for these stages are kept, beside their logging folders."""
    return stages[0].logging_dir.parent / "slurm-jobs.json"


def _refuse_if_still_queued(stages: list[Stage]) -> None:
    """An earlier run's jobs still queued would run the same tasks twice beside a new submission."""
    path = _jobs_file(stages)
    if not path.is_file():
        return
    earlier = [str(job_id) for job_id in json.loads(path.read_text())]
    if rows := _queued(earlier):
        ids = " ".join(sorted({row[0].split("_")[0] for row in rows}))
        raise GPT2KitError(
            f"Slurm jobs {ids} of an earlier run are still queued; wait for them to end (then run this again to "
            f"finish), or stop them with `scancel {ids}`"
        )


def _wait_for_jobs(job_ids: list[str], config: ExecutorConfig) -> None:
    """Until none of `job_ids` is queued; jobs held by a dependency that failed are cancelled (Slurm keeps
    them pending forever unless the cluster sets kill_invalid_depend)."""
    while job_ids:
        rows = _queued(job_ids)
        if not rows:
            return
        if all(len(row) == 3 and row[1] == "PENDING" and row[2] in _FINISHED_BADLY for row in rows):
            _slurm(["scancel", *sorted({row[0].split("_")[0] for row in rows})])
            return
        time.sleep(config.poll_seconds)


def run_on_slurm(stages: list[Stage], config: ExecutorConfig, verbose: bool) -> None:
    _refuse_if_still_queued(stages)
    for attempt in range(1, config.retries + 2):
        chain = _slurm_chain(stages, config)
        try:
            for executor in chain:
                executor.run()  # outside a job this submits the array job (and, first, what it depends on)
        except FileNotFoundError:
            raise GPT2KitError("the Slurm executor needs `sbatch` on PATH (run it on a Slurm login node)") from None
        except subprocess.CalledProcessError as err:
            raise GPT2KitError(
                f"sbatch failed (exit {err.returncode}): {(err.output or b'').decode().strip()}"
            ) from None
        job_ids = [str(e.job_id) for e in chain if e.job_id not in (None, -1)]
        atomic_write_text(_jobs_file(stages), json.dumps(job_ids))
        log.info("submitted Slurm jobs %s; waiting for them", ", ".join(job_ids) or "(none: all tasks done)")
        try:
            _wait_for_jobs(job_ids, config)
        except KeyboardInterrupt:
            ids = " ".join(job_ids)
            raise GPT2KitError(
                f"stopped waiting; Slurm jobs {ids} keep running (stop them with `scancel {ids}`); run the same "
                "command again once they end to finish"
            ) from None
        failed = next(((s, incomplete_ranks(s)) for s in stages if incomplete_ranks(s)), None)
        if failed is None:
            return
        stage, missing = failed
        if attempt <= config.retries:
            log.warning(
                "stage %s: %d tasks failed; submitting them again (retry %d of %d)",
                stage.name,
                len(missing),
                attempt,
                config.retries,
            )
            continue
        raise stage_failure(stage, missing, attempt)
