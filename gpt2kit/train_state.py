"""A training run's checkpoints beside its weights: `training_state.pt` (step, optimizer, loader position,
every random generator), where checkpoints live, and how they are listed and verified on resume.

A checkpoint is a model directory in the HF layout (`gpt2kit.checkpoint`) plus this state, written together
atomically; the state names the sha256 of the weights it was saved with, so a resume never pairs an
optimizer with other weights. The state holds only tensors and plain types: it loads with weights_only.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from gpt2kit.checkpoint import CHECKPOINT_DIR, CHECKPOINT_NAME
from gpt2kit.errors import GPT2KitError
from gpt2kit.io import file_sha256

STATE_FILE = "training_state.pt"
STATE_FORMAT = "gpt2kit-training-state"
STATE_VERSION = 1


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


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)))


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
