"""A training run on disk, in one home: where its checkpoints live and what they are called, what makes one
complete, the training state's writer and reader, which checkpoint a run resumes from and what it may change,
the final model, and pruning.

RUN/checkpoints/step-NNNNNNNN/ is a model directory in the HF layout (`gpt2kit.checkpoint`) plus
`training_state.pt` (step, optimizer, loader position, every random generator), written together atomically;
the state names the sha256 of the weights it was saved with, so a resume never pairs an optimizer with other
weights, and holds only tensors and plain types: it loads with weights_only. RUN/final/ is the last checkpoint's
model once the run finished; RUN/metrics.jsonl its log.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from gpt2kit.config import get_field
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import atomic_directory, file_sha256
from gpt2kit.train_config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"step-(\d+)")
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "training_state.pt"
STATE_FORMAT = "gpt2kit-training-state"
STATE_VERSION = 1
# Fields a resumed run may change; any other difference would break the continuation. (Changing
# parallelism or compile, like changing the number of ranks, keeps the math but not every last bit.)
RESUME_MAY_CHANGE = {
    "parallelism",
    "compile",
    "max_steps",
    "log_interval",
    "eval_interval",
    "eval_windows",
    "checkpoint_interval",
    "keep_checkpoints",
    "progress",
    "tensorboard",
    "wandb",
    "wandb_project",
    "num_threads",
    "data",
    "out",
}


class TrainingError(GPT2KitError):
    """The run cannot start or continue: a bad checkpoint, mismatched data, or too many non-finite steps."""


def capture_rng(device: torch.device) -> dict:
    """Every generator a step may draw from, as tensors and plain types (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    _, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- checkpoints -----------------------------------------------------------------------------


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}"


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint both a resume and a reader can use: its model and its training state are there."""
    return (checkpoint / "config.json").is_file() and (checkpoint / STATE_FILE).is_file()


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)))


def run_model(run_dir: Path) -> Path | None:
    """The model a training run directory stands for: RUN/final when training finished, else its newest
    complete checkpoint; None when `run_dir` is no run directory."""
    if (run_dir / FINAL_DIR / "config.json").is_file():
        return run_dir / FINAL_DIR
    found = checkpoints(run_dir)
    return found[-1] if found else None


def resume_checkpoint(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from (None: a new run), or one line on why the run cannot start."""
    found = checkpoints(run_dir)
    if not resume:
        if found:
            raise TrainingError(
                f"{run_dir}: already holds checkpoints (latest {found[-1].name}); "
                "resume that run, or use another output directory",
                setting="resume",
            )
        return None
    if not found:
        raise TrainingError(f"{run_dir}: no checkpoint to resume from")
    return found[-1]


def check_resumable(saved: TrainConfig, current: TrainConfig) -> None:
    """Refuse, naming the field, a change that would keep a resumed run from continuing exactly."""

    def flat(values: dict, prefix: str = "") -> dict:
        items = {}
        for key, value in values.items():
            if isinstance(value, dict):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[prefix + key] = value
        return items

    old, new = flat(saved.to_dict()), flat(current.to_dict())
    changed = [key for key in old if key not in RESUME_MAY_CHANGE and old[key] != new.get(key)]
    if changed:
        key = changed[0]
        raise TrainingError(
            f"resume: {key} differs from the checkpoint's config ({get_field(saved, key)!r} there, "
            f"{get_field(current, key)!r} now); it must stay the same to continue the run exactly"
        )


def write_training_state(checkpoint: Path, state: dict) -> None:
    """The training state beside the model just written to `checkpoint` (a directory being written atomically),
    naming the weights it belongs with."""
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    state["weights_sha256"] = file_sha256(checkpoint / "model.safetensors")
    torch.save(state, checkpoint / STATE_FILE)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` complete checkpoints."""
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def publish_final(run_dir: Path, checkpoint: Path) -> Path:
    """RUN/final: the finished run's model (the last checkpoint without its training state), so the run
    directory itself works as a model everywhere. Hard links where the file system allows: no copy."""
    with atomic_directory(run_dir / FINAL_DIR) as tmp:
        for item in checkpoint.iterdir():
            if item.name == STATE_FILE or not item.is_file():
                continue
            try:
                os.link(item, tmp / item.name)
            except OSError:
                shutil.copy2(item, tmp / item.name)
    return run_dir / FINAL_DIR


def load_training_state(checkpoint: Path) -> dict:
    """The training state of a checkpoint, after checking that the weights beside it are the ones it names."""
    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: missing") from None
    except Exception as err:  # truncated or foreign files fail in many ways inside the unpickler
        raise TrainingError(f"{path}: unreadable training state ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a gpt2kit training state")
    if state.get("version") != STATE_VERSION:
        raise TrainingError(f"{path}: training state version {state.get('version')}, expected {STATE_VERSION}")
    weights = checkpoint / "model.safetensors"
    if not weights.exists() or file_sha256(weights) != state["weights_sha256"]:
        raise TrainingError(f"{weights}: missing or not the weights this training state was saved with")
    return state
