"""The one device resolver: `auto` means CUDA when this machine has it, else the CPU."""

from __future__ import annotations

import torch

from gpt2kit.errors import GPT2KitError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def is_device_spec(spec: str) -> bool:
    """Whether `spec` names a device kind gpt2kit runs on (whether this machine has it is `resolve_device`'s)."""
    return spec in ("auto", "cpu", "mps", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit())


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """`spec` as a torch device; `auto` and a bare `cuda` take this process's GPU (`local_rank` under torchrun)."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise GPT2KitError(f"device {spec!r}: expected {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GPT2KitError(f"device {spec!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise GPT2KitError(f"device {spec!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise GPT2KitError(f"device {spec!r}: expected {DEVICE_CHOICES}")
    return device
