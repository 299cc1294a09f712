"""Several processes, one training run: torchrun's environment, DistributedDataParallel and the two
collectives the training loops need.

    torchrun --nproc-per-node 4 -m megatron_utils train --index ... --embeddings ...

Every rank draws the same shuffled, augmented global batch from the same seeded generator and trains on its
own contiguous share of it; DDP averages the gradients. With the loss summed over a share and divided by
the global batch size (times the world size, which DDP's average divides out), N processes take exactly the
steps one process takes on the same global batch, whatever the batch's remainder. Rank 0 alone writes
checkpoints, history and reports; the others only compute. Without torchrun's variables this is one
process and every call here is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def __str__(self) -> str:
        return f"{self.world_size} processes ({dist.get_backend()})" if self.enabled else "one process"

    @property
    def main(self) -> bool:
        """The rank that writes files and logs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: the local rank's, when training on CUDA."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def share(self, count: int) -> slice:
        """This rank's contiguous share of `count` items (shares differ in size by at most one)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as DDP sees it (rank 0's weights broadcast to all), or unchanged in one process."""
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over all ranks."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def total(self, count: int, device: torch.device) -> int:
        """The sum of a count over all ranks; in one process the count itself, with no device round trip."""
        return int(self.sum(torch.tensor(count, device=device))) if self.enabled else count

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Each rank's share concatenated in rank order, on every rank."""
        if not self.enabled:
            return values
        shares: list[np.ndarray | None] = [None] * self.world_size
        dist.all_gather_object(shares, values)
        return np.concatenate(shares)


ONE_PROCESS = Distributed()


@contextmanager
def distributed(device: torch.device) -> Iterator[Distributed]:
    """Join torchrun's process group for the block (NCCL on CUDA, gloo on the CPU), if launched by it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or dist.is_initialized():
        yield (Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
               if dist.is_initialized() else ONE_PROCESS)
        return
    context = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(context.device(device))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not context.main:
        logging.getLogger(__package__.rsplit(".", 1)[0]).setLevel(logging.WARNING)
    try:
        yield context
    finally:
        dist.destroy_process_group()
