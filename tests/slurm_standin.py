"""A stand-in Slurm for the tests: `sbatch`, `squeue`, `sacct`, `scancel`, `scontrol` and `srun` on PATH that run
the job scripts they are given on this machine, as a scheduler would.

`sbatch SCRIPT` copies the script, reads its #SBATCH lines (array, output, dependency) and the command line's
(--dependency, --export), prints `Submitted batch job N` and returns at once; a detached runner then waits for the
job's dependencies (afterok, afterany; a dependency that failed leaves the job pending with reason
DependencyNeverSatisfied, as Slurm does), runs each array task with SLURM_ARRAY_TASK_ID and the rest of Slurm's
environment (at most `%W` at once), and records each task's exit code and the job's state. `squeue` lists
pending and running jobs, `sacct` every job's state.

Fault injection: with FAKE_SLURM_FAIL_ONCE=NAME:INDEX, the first run of array task INDEX of the first job whose
name contains NAME dies as if its node failed (exit 137, nothing run); later runs are normal.

State lives in $FAKE_SLURM_DIR. Usage: `python slurm_standin.py COMMAND ARGS...`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "srun")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def job_dir(job_id: str) -> Path:
    return state_dir() / "jobs" / job_id


def read_job(job_id: str) -> dict | None:
    path = job_dir(job_id) / "job.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_job(job: dict) -> None:
    path = job_dir(job["id"]) / "job.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def next_job_id() -> str:
    counter = state_dir() / "counter"
    with open(state_dir() / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        value = int(counter.read_text()) + 1 if counter.is_file() else 1000
        counter.write_text(str(value))
    return str(value)


def parse_dependency(spec: str) -> list[tuple[str, str]]:
    deps = []
    for part in filter(None, spec.split(",")):
        kind, _, ids = part.partition(":")
        deps.extend((kind, job_id) for job_id in ids.split(":") if job_id)
    return deps


def sbatch(args: list[str]) -> int:
    options: dict[str, str] = {}
    *flags, script = args
    for line in Path(script).read_text().splitlines():
        if match := re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?$", line.strip()):
            options[match.group(1)] = match.group(2) or ""
    for flag in flags:
        key, _, value = flag.removeprefix("--").partition("=")
        options[key] = value
    job_id = next_job_id()
    folder = job_dir(job_id)
    folder.mkdir(parents=True)
    shutil.copy(script, folder / "script.sh")  # sbatch keeps its own copy: the caller may delete the file
    array, parallel = [0], None
    if "array" in options:
        spec, _, limit = options["array"].partition("%")
        first, _, last = spec.partition("-")
        array = list(range(int(first), int(last or first) + 1))
        parallel = int(limit) if limit else None
    env = {}
    for item in options.get("export", "ALL").split(",")[1:]:
        key, _, value = item.partition("=")
        env[key] = value
    job = {
        "id": job_id,
        "name": options.get("job-name", "job"),
        "array": array,
        "is_array": "array" in options,
        "parallel": parallel,
        "deps": parse_dependency(options.get("dependency", "")),
        "env": env,
        "output": options.get("output", str(folder / "slurm-%A_%a.out")),
        "cwd": os.getcwd(),
        "state": "PENDING",
        "reason": "Dependency" if options.get("dependency") else "None",
        "exit_codes": {},
    }
    write_job(job)
    with open(folder / "runner.log", "w") as log:
        subprocess.Popen(
            [sys.executable, __file__, "_run", job_id], start_new_session=True, stdout=log, stderr=log, cwd=job["cwd"]
        )
    print(f"Submitted batch job {job_id}")
    return 0


def dependencies_met(job: dict) -> bool | None:
    """True when the job may start, None when it never can (a dependency failed), else False."""
    ready = True
    for kind, dep_id in job["deps"]:
        dep = read_job(dep_id)
        state = dep["state"] if dep else "COMPLETED"  # an unknown id: long gone
        if state not in TERMINAL:
            ready = False
        elif kind == "afterok" and state != "COMPLETED":
            return None
    return ready


def fault(job: dict, index: int) -> bool:
    spec = os.environ.get("FAKE_SLURM_FAIL_ONCE")
    if not spec:
        return False
    name, _, wanted = spec.rpartition(":")
    marker = state_dir() / "fault-injected"
    if name not in job["name"] or int(wanted) != index or marker.exists():
        return False
    marker.write_text(f"{job['id']}_{index}\n")
    return True


def run_task(job: dict, index: int) -> int:
    if fault(job, index):
        return 137
    env = dict(os.environ, **job["env"])
    env.update(
        SLURM_JOB_ID=job["id"],
        SLURM_JOB_NAME=job["name"],
        SLURM_NODELIST="node001",
        SLURM_NODEID="0",
        SLURM_CPUS_PER_TASK="1",
    )
    if job["is_array"]:
        env.update(SLURM_ARRAY_JOB_ID=job["id"], SLURM_ARRAY_TASK_ID=str(index))
    output = Path(job["output"].replace("%A", job["id"]).replace("%a", str(index)).replace("%j", job["id"]))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as log:
        script = str(job_dir(job["id"]) / "script.sh")
        return subprocess.run(["bash", script], env=env, stdout=log, stderr=log, cwd=job["cwd"]).returncode


def runner(job_id: str) -> int:
    cancelled = job_dir(job_id) / "cancelled"
    while True:
        job = read_job(job_id)
        if cancelled.exists():
            job["state"] = "CANCELLED"
            write_job(job)
            return 0
        met = dependencies_met(job)
        if met:
            break
        if met is None and job["reason"] != "DependencyNeverSatisfied":
            job["reason"] = "DependencyNeverSatisfied"
            write_job(job)
        time.sleep(0.1)
    job.update(state="RUNNING", reason="None")
    write_job(job)
    codes: dict[str, int] = {}
    limit = threading.Semaphore(job["parallel"] or len(job["array"]))

    def one(index: int) -> None:
        with limit:
            codes[str(index)] = run_task(job, index)

    threads = [threading.Thread(target=one, args=(i,)) for i in job["array"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    job.update(exit_codes=codes, state="COMPLETED" if not any(codes.values()) else "FAILED")
    write_job(job)
    return 0


def all_jobs() -> list[dict]:
    folder = state_dir() / "jobs"
    jobs = [read_job(p.name) for p in folder.iterdir()] if folder.is_dir() else []
    return sorted((j for j in jobs if j), key=lambda j: int(j["id"]))


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def squeue(args: list[str]) -> int:
    wanted = option(args, "-j", "--jobs")
    ids = set(wanted.split(",")) if wanted else None
    fmt = option(args, "-o", "--format") or "%i %j %T %r"
    for job in all_jobs():
        if job["state"] in TERMINAL or (ids is not None and job["id"] not in ids):
            continue
        fields = {"%i": job["id"], "%j": job["name"], "%T": job["state"], "%r": job["reason"]}
        print(re.sub(r"%[ijTr]", lambda m, fields=fields: fields[m.group(0)], fmt))
    return 0


def sacct(args: list[str]) -> int:
    wanted = option(args, "-j", "--jobs")
    ids = set(wanted.split(",")) if wanted else None
    for job in all_jobs():
        if ids is None or job["id"] in ids:
            code = max(job["exit_codes"].values(), default=0)
            print(f"{job['id']}|{job['name']}|{job['state']}|{code}:0")
    return 0


def scancel(args: list[str]) -> int:
    for job_id in args:
        if job_dir(job_id).is_dir():
            (job_dir(job_id) / "cancelled").touch()
    return 0


def scontrol(args: list[str]) -> int:
    if args[:2] == ["show", "hostnames"]:
        print("\n".join(args[2].split(",")) if len(args) > 2 else "node001")
    return 0  # requeue and the rest: nothing to do here


def srun(args: list[str]) -> int:
    """Run the command after srun's own options (-l, -n N, --key=value)."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag in ("-n", "-N", "--ntasks", "--nodes") and rest:
            rest.pop(0)
    return subprocess.run(rest).returncode


def install(bin_dir: Path) -> None:
    """Write one executable per Slurm command into `bin_dir`, each calling this file."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {name} "$@"\n')
        path.chmod(0o755)


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "_run":
        return runner(args[0])
    handlers = {
        "sbatch": sbatch,
        "squeue": squeue,
        "sacct": sacct,
        "scancel": scancel,
        "scontrol": scontrol,
        "srun": srun,
    }
    return handlers[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
