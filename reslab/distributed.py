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
        """End a run: wait for every rank (rank 0 may still be testing), unless it failed (they may never arrive).

        The process group stays for the process's next run (an experiment trains several): joining torchrun's
        rendezvous a second time hangs. The group is left when the process exits."""
        if dist.is_initialized():
            # Free the DDP wrapper's pending gloo work now: left to interpreter shutdown it can abort the process.
            gc.collect()
            if wait:
                dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks that torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Whether this process writes files: always, except on torchrun's ranks other than 0."""
    return int(os.environ.get("RANK", "0")) == 0


def _leave() -> None:
    """Leave the process group at exit."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def from_environment(device: torch.device) -> Context | None:
    """Join the process group torchrun describes in the environment; None when not launched by torchrun."""
    if not launched_by_torchrun():
        return None
    world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return Context(rank, world_size, local_rank, device)
