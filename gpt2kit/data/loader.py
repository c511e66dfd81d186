"""Context windows over memory-mapped token shards, sampled without replacement.

Each shard of a split is cut into non-overlapping windows of `context + 1`
tokens (inputs and next-token targets); the last partial window of a shard is
dropped. An epoch visits every window once, in the order of a permutation
seeded by (seed, epoch). A step takes the next `windows_per_step` windows of
the permutation; rank r of a data-parallel group gets the r-th contiguous slice
of them, so ranks never share a window and the union over ranks does not depend
on the number of ranks. An epoch's leftover windows (fewer than one step) are
skipped. The position (epoch, cursor) is the loader's whole state.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gpt2kit.data.shards import Manifest, ShardError, load_manifest, open_tokens


class TokenWindows:
    """The windows of one split (`train` or `val`) of a prepared data directory."""

    def __init__(self, directory: str | os.PathLike, split: str, context: int, manifest: Manifest | None = None):
        if context < 1:
            raise ShardError(f"context length must be positive, got {context}")
        self.directory = Path(directory)
        self.split = split
        self.context = context
        manifest = manifest or load_manifest(directory)
        manifest.verify(directory, split)
        self.shards = [open_tokens(path) for path in manifest.shard_paths(directory, split)]
        counts = [max(0, (len(tokens) - 1) // context) for tokens in self.shards]
        self.starts = np.cumsum([0, *counts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, index: int) -> np.ndarray:
        """The `context + 1` tokens of window `index` (a view into the memory-mapped shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        offset = (index - int(self.starts[shard])) * self.context
        return self.shards[shard][offset : offset + self.context + 1]

    def batch(self, indices: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (len(indices), context) int64."""
        rows = np.stack([self.window(int(i)) for i in indices]).astype(np.int64)
        tokens = torch.from_numpy(rows)
        return tokens[:, :-1], tokens[:, 1:]


class WindowLoader:
    """Per-rank batches of a seeded permutation of windows, with resumable position."""

    def __init__(self, windows: TokenWindows, windows_per_step: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if windows_per_step % world_size:
            raise ShardError(f"{windows_per_step} windows per step cannot be split over {world_size} ranks")
        if len(windows) < windows_per_step:
            raise ShardError(
                f"{windows.directory}: the {windows.split} split has {len(windows)} windows of {windows.context} tokens, "
                f"but one step needs {windows_per_step}; use more data or a smaller batch"
            )
        self.windows = windows
        self.windows_per_step = windows_per_step
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.cursor = 0
        self._order: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.windows)))
        return self._order[1]

    def next_indices(self) -> np.ndarray:
        """This rank's window indices for the next step."""
        if self.cursor + self.windows_per_step > len(self.windows):
            self.epoch, self.cursor = self.epoch + 1, 0
        step = self.permutation(self.epoch)[self.cursor : self.cursor + self.windows_per_step]
        self.cursor += self.windows_per_step
        per_rank = self.windows_per_step // self.world_size
        return step[self.rank * per_rank : (self.rank + 1) * per_rank]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows.batch(self.next_indices())

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "num_windows": len(self.windows),
            "windows_per_step": self.windows_per_step,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("num_windows", "windows_per_step", "seed"):
            mine = len(self.windows) if key == "num_windows" else getattr(self, key)
            if state[key] != mine:
                raise ShardError(
                    f"loader state does not fit this data: {key} was {state[key]}, now {mine} "
                    "(the data or the batch changed since the checkpoint)"
                )
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])


def eval_indices(num_windows: int, limit: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """`limit` windows spread evenly over the split (all of them when there are fewer), strided over ranks.

    Evenly spaced rather than the first ones, so a short evaluation samples every
    part of the validation text. The count is rounded down to a multiple of the
    world size, so every rank runs the same number of forward passes (FSDP
    gathers weights in each).
    """
    count = min(num_windows, limit)
    count -= count % world_size
    spread = (np.arange(count, dtype=np.int64) * num_windows) // max(count, 1)
    return spread[rank::world_size]
