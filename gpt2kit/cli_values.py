"""Command-line values turned into the library's settings: comma lists and repeatable NAME=VALUE flags.

The library takes lists and mappings; these parse what a user types, and their errors name the flag.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.registry import TASKS, get_task
from gpt2kit.study.sweep import EvalJob


def parse_tasks(text: str) -> list[str]:
    """A comma-separated list of task names ('all' for every task), validated, without duplicates."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise GPT2KitError("no tasks given (name one or more; `gpt2kit eval --list` shows them)")
    if "all" in names:
        return list(TASKS)
    for name in names:
        get_task(name)
    return list(dict.fromkeys(names))


def parse_data_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """`--data TASK=PATH` values (repeatable) as a dict, rejecting malformed or repeated ones."""
    data: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise GPT2KitError(f"--data {item!r}: expected TASK=PATH (or TASK=hf, TASK:examples=PATH)")
        key = key.strip()
        if key in data:
            raise GPT2KitError(f"--data: {key} is given twice")
        data[key] = value.strip()
    return data


def parse_eval_jobs(tasks: str, data: list[str] | None = None) -> list[EvalJob]:
    """`lambada,arith=nq_open` plus `--eval-data arith=FILE --eval-data arith:examples=FILE` -> jobs."""
    paths: dict[str, str] = {}
    for item in data or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise GPT2KitError(f"--eval-data expects NAME=PATH or NAME:examples=PATH, got {item!r}")
        paths[key.strip()] = value.strip()
    jobs = []
    for part in filter(None, (p.strip() for p in tasks.split(","))):
        name, _, task = part.partition("=")
        jobs.append(EvalJob(name, task or name, paths.pop(name, None), paths.pop(f"{name}:examples", None)))
    if not jobs:
        raise GPT2KitError("--eval-tasks: no tasks given")
    if len({j.name for j in jobs}) != len(jobs):
        raise GPT2KitError(f"--eval-tasks names a task twice: {tasks}")
    if paths:
        raise GPT2KitError(f"--eval-data {next(iter(paths))}=...: not one of the evaluations ({tasks})")
    return jobs


def parse_mix(text: str) -> dict[str, float]:
    """`story=0.3,forum=0.1` -> weights; kinds left out get weight 0."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[kind.strip()] = float(value)
        except ValueError:
            raise GPT2KitError(f"--mix expects KIND=WEIGHT[,KIND=WEIGHT...], got {part!r}") from None
    if not mix:
        raise GPT2KitError("--mix is empty")
    return mix
