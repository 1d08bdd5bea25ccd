"""Data-parallel training under torchrun: process group, DDP wrapping, and all-reduced epoch sums."""
from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Context:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel, which averages gradients across ranks in backward()."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all ranks (in place) and return it."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when the flag is true on any rank (keeps stop decisions in step)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self, wait: bool = True) -> None:
        """End a run: wait for every rank (rank 0 may still be testing); after a failure, leave the group at once.

        The group itself stays for the process's next run (an experiment trains several): joining torchrun's
        rendezvous a second time hangs. It is left when the process exits."""
        if dist.is_initialized():
            # Free the DDP wrapper's pending gloo work now: left to interpreter shutdown it can abort the process.
            gc.collect()
            if wait:
                dist.barrier()
            else:
                _leave()


def _leave() -> None:
    """Leave the process group, if still in it."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def from_environment(device: torch.device) -> Context | None:
    """Join the process group torchrun describes in the environment; None when not launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return Context(rank, world_size, local_rank, device)
