"""Distribution and compilation applied from outside the model, torchtitan style.

The model stays a plain nn.Module; these functions wrap or modify it for the
run: torch.compile per Transformer block (in place, so parameter names stay
GPT-2's), then FSDP2 sharding (per block, then the root) or
DistributedDataParallel. Checkpoints always come from the unwrapped model.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch (one process when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # started by torchrun: a process group even with one process, as torchrun users expect

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.launched

    @classmethod
    def from_environment(cls) -> DistEnv:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            launched="TORCHELASTIC_RUN_ID" in os.environ,
        )


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group that torchrun's environment describes: NCCL on GPUs, gloo on CPUs."""
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
        if env.is_main:
            log.info("process group: %s, %d rank(s)", backend, env.world_size)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(
    model: GPT,
    env: DistEnv,
    device: torch.device,
    *,
    strategy: str = "ddp",
    compile: bool = False,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """The module to train: `model` compiled and/or distributed; `model` itself keeps GPT-2's names."""
    if compile:
        for block in model.h:
            block.compile(fullgraph=True)
    if not env.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in model.h:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    raise GPT2KitError(f"unknown parallelism {strategy!r}; choose ddp or fsdp")


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-batches before the last one of a step."""
    if enabled:
        yield
    elif hasattr(module, "no_sync"):  # DistributedDataParallel
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield
