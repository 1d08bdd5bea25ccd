"""The training step (forward, loss, backward, Adam) run eagerly, or replayed from one captured CUDA graph."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .device import autocast_for

# Eager steps before the capture: cuBLAS and cuDNN handles, cudnn.benchmark's search and the optimizer's state
# are created then, not while the graph is recorded.
WARMUP_STEPS = 3


class TrainStep:
    """One optimizer step on a batch; returns its mean loss and the logits, both detached and left on the device."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, amp: bool,
                 grad_params: list[tuple[str, torch.Tensor]] | None = None, autocast_cache: bool = True):
        self.model, self.optimizer, self.device, self.amp = model, optimizer, device, amp
        self.autocast_cache = autocast_cache   # off under graph capture, which cannot keep autocast's cast cache
        self.criterion = nn.CrossEntropyLoss()
        self.grad_params: list[Any] = [p for _, p in grad_params or []]
        # Per-parameter gradient norms summed over the steps: one tensor whose storage never moves, so that a
        # captured graph adds to the same memory every replay.
        self.grad_sums = torch.zeros(len(self.grad_params), device=device) if self.grad_params else None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast_for(self.device, self.amp, cache=self.autocast_cache):
            logits = self.model(x)
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_sums is not None:
            self.grad_sums += torch.stack(torch._foreach_norm([p.grad for p in self.grad_params]))
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def take_grad_sums(self) -> torch.Tensor | None:
        """The gradient norms summed since the last call (None when they are not logged); the sums restart at 0."""
        if self.grad_sums is None:
            return None
        sums = self.grad_sums.clone()
        self.grad_sums.zero_()
        return sums


class CudaGraphs:
    """Warm-up and capture on CUDA, as torch.cuda.graph's documentation asks: warm-up steps on a side stream,
    the same one the capture then records on (library handles are cached per stream: created by the warm-up,
    none is created mid-capture)."""

    capturable = True   # the optimizer's step count must live on the device, where the replayed graph updates it

    def __init__(self, device: torch.device) -> None:
        self.device = device   # cuda:N: the stream, and the stream it waits for, are that device's
        self.stream = torch.cuda.Stream(device=device)

    @contextmanager
    def warmup(self) -> Iterator[None]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        """Record fn's kernels (none runs); return the replay and fn's outputs, which every replay rewrites."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            outputs = fn()
        return graph.replay, outputs


def graph_backend(device: torch.device) -> CudaGraphs | None:
    """How to capture the step on this device: CUDA graphs on CUDA, nothing elsewhere."""
    return CudaGraphs(device) if device.type == "cuda" else None


class GraphedStep:
    """A TrainStep replayed from one captured graph for every batch of the captured shape.

    The first WARMUP_STEPS batches run eagerly; the next one is copied into static input tensors and the step is
    captured on them; from then on a batch of that shape is copied in and the graph replayed: one launch instead
    of one per operation. A batch of another shape (the last, short one of an epoch) runs eagerly, so nothing is
    captured twice. The optimizer must be capturable (its step count lives on the device).
    """

    def __init__(self, step: TrainStep, graphs: Any):
        self.step, self.graphs = step, graphs
        self.replay: Callable[[], None] | None = None
        self.x = self.y = self.loss = self.logits = torch.empty(0)   # the static tensors, made at the capture
        self.eager_steps = 0
        self.captures = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.replay is not None:
            if x.shape != self.x.shape or y.shape != self.y.shape:
                return self.step(x, y)
            self.x.copy_(x)
            self.y.copy_(y)
            self.replay()
            return self.loss.clone(), self.logits   # the loss is kept past the next replay, the logits are not
        if self.eager_steps < WARMUP_STEPS:
            self.eager_steps += 1
            with self.graphs.warmup():
                return self.step(x, y)
        self.x, self.y = x.clone(), y.clone()
        self.replay, (self.loss, self.logits) = self.graphs.capture(lambda: self.step(self.x, self.y))
        self.captures += 1
        self.replay()   # capturing recorded this batch's step without running it
        return self.loss.clone(), self.logits

    def take_grad_sums(self) -> torch.Tensor | None:
        return self.step.take_grad_sums()
