"""What a data job is made of, apart from where it runs: stages of tasks, the executor settings, the work folder
and its fingerprint, which tasks completed, and the one-line failure (the Slurm runner and the local and Ray ones
in `gpt2kit.executors` share these)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from gpt2kit.config import Checked
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_write_text
from gpt2kit.outputs import OWN_HIDDEN, WORK_FOLDER, check_owner

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
    kind: str = "local"  # where the tasks run: local, ray or slurm
    workers: int | None = None  # tasks at once; None: all local cores, or no limit on Ray and Slurm
    retries: int = 1  # a failed task is run again this many times before the job stops
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None starts one here
    partition: str = "cpu"  # the Slurm partition
    time: str = "24:00:00"  # Slurm time limit per array job
    qos: str | None = None  # the Slurm quality of service
    cpus_per_task: int = 1  # CPUs per task (Ray and Slurm)
    mem_per_cpu_gb: float = 2.0  # memory per CPU in GB (Ray and Slurm)
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


def stage_failure(stage: Stage, ranks: list[int], attempts: int, error: BaseException | None = None) -> GPT2KitError:
    shown = ", ".join(map(str, ranks[:8])) + (", ..." if len(ranks) > 8 else "")
    why = f" ({type(error).__name__}: {error})" if error is not None else ""
    return GPT2KitError(
        f"stage {stage.name}: {len(ranks)} of {stage.tasks} tasks failed {attempts} time{'s' * (attempts != 1)} "
        f"(task {shown}){why}; "
        f"logs in {stage.logging_dir / 'logs'}; run the same command again to resume"
    )


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
