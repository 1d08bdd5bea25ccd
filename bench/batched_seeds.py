#!/usr/bin/env python3
"""Would training a study's seeds as one batched model be faster? Seconds per epoch, both ways, side by side.

For each model (the MNIST MLP and residual MLP of ex1 / ex1.2), K copies with their own initial weights train on
their own batches for one epoch of ex1's shape (422 steps of 128 images, 784 inputs, 10 classes):

  separate  K models one after another, each step forward + backward + fused Adam, as `train_model` runs them;
  batched   the K models stacked (torch.func.stack_module_state) and run as one with torch.func.vmap (dropout
            drawn separately per model), one backward and one fused Adam over the stacked weights.

The arithmetic is the same; what batching saves is per-operation overhead (a launch per op on a GPU, dispatch and
small-matrix inefficiency on a CPU). Inputs are random tensors of the real shapes: this times steps, not learning.
Prints seconds per epoch of the K models (median of --repeat, after a warm-up epoch) and separate/batched.

    python bench/batched_seeds.py                 # CPU, K = 3
    python bench/batched_seeds.py --device cuda   # the same on a GPU
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from reslab.models import build_model

MODELS = {"mlp": {}, "resmlp": {"width": 110, "blocks": 2}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def separate_epoch(models: list[nn.Module], optimizers: list, batches: list, device: torch.device) -> float:
    """One epoch of every model in turn, as train_model runs a run."""
    criterion = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for k, (model, optimizer) in enumerate(zip(models, optimizers)):
        for x, y in batches:
            loss = criterion(model(x[k]), y[k])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    sync(device)
    return time.perf_counter() - start


def batched_step_fn(models: list[nn.Module]):
    """The K models as one: stacked weights, a vmapped forward, the stacked leaves, and the (meta) base module."""
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, x):
        return functional_call(base, (p, b), (x,))

    batched = vmap(forward, in_dims=(0, 0, 0), randomness="different")
    return params, buffers, batched, list(params.values()), base


def check_same_outputs(models: list[nn.Module], state, x: torch.Tensor) -> None:
    """The batched model computes what the K models compute (dropout off, so that both are deterministic)."""
    params, buffers, batched, _, base = state
    for m in [*models, base]:
        m.eval()
    with torch.no_grad():
        together = batched(params, buffers, x)
        alone = torch.stack([m(x[k]) for k, m in enumerate(models)])
    for m in [*models, base]:
        m.train()
    if not torch.allclose(together, alone, atol=1e-5, rtol=1e-4):
        raise SystemExit(f"batched outputs differ from the separate models' by {(together - alone).abs().max():.2e}")


def batched_epoch(state, optimizer, batches: list, device: torch.device) -> float:
    """One epoch of the K models at once: per-model mean losses summed, so each model gets its own gradient."""
    params, buffers, batched, _, _ = state
    start = time.perf_counter()
    for x, y in batches:
        logits = batched(params, buffers, x)                         # (K, B, classes)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        loss = loss.view(y.shape).mean(dim=1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=3, help="models trained together (seeds of a study; default 3)")
    p.add_argument("--steps", type=int, default=422, help="steps per epoch (default 422: ex1's 54,000 images)")
    p.add_argument("--repeat", type=int, default=3, help="timed epochs; the median is printed (default 3)")
    p.add_argument("--models", default="mlp,resmlp")
    args = p.parse_args()
    device = torch.device(args.device)
    fused = device.type in ("cpu", "cuda")
    print(f"batched seeds: device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"K = {args.k}, {args.steps} steps of 128 images a model")
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.k, 128, 1, 28, 28, generator=g).to(device),
                torch.randint(0, 10, (args.k, 128), generator=g).to(device)) for _ in range(args.steps)]
    print(f"  {'model':8s} {'separate s/epoch':>17s} {'batched s/epoch':>16s} {'separate/batched':>17s}")
    for name in args.models.split(","):
        models = []
        for seed in range(args.k):
            torch.manual_seed(seed)
            models.append(build_model(name, (1, 28, 28), 10, **MODELS[name]).to(device).train())
        solo = [copy.deepcopy(m) for m in models]
        optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused) for m in solo]
        state = batched_step_fn(models)
        check_same_outputs(models, state, batches[0][0])
        optimizer = torch.optim.Adam(state[3], lr=1e-3, fused=fused)
        separate_epoch(solo, optimizers, batches, device)              # warm-up
        batched_epoch(state, optimizer, batches, device)
        a = statistics.median(separate_epoch(solo, optimizers, batches, device) for _ in range(args.repeat))
        b = statistics.median(batched_epoch(state, optimizer, batches, device) for _ in range(args.repeat))
        print(f"  {name:8s} {a:17.3f} {b:16.3f} {a / b:16.2f}x")


if __name__ == "__main__":
    main()
