#!/usr/bin/env python3
"""Would training a study's seeds as one batched model be faster? Seconds per epoch, both ways, side by side.

For each model (the MNIST MLP and residual MLP of ex1 / ex1.2), K copies with their own initial weights train on
their own batches for one epoch of ex1's shape (422 steps of 128 images, 784 inputs, 10 classes):

  separate  K models one after another, each step forward + backward + fused Adam, as `train_model` runs them;
  batched   the K models stacked (torch.func.stack_module_state) and run as one with torch.func.vmap (dropout
            drawn separately per model), one backward and one fused Adam over the stacked weights;
  grouped   the same stacking written by hand: each nn.Linear becomes one batched matmul (torch.baddbmm) over
            (K, B, features) with the K weights stacked, ReLU, dropout and the residual sums act on the stacked
            tensor as they are, one backward and one fused Adam over the stacked weights.

The arithmetic is the same; what batching saves is per-operation overhead (a launch per op on a GPU, dispatch and
small-matrix inefficiency on a CPU). Inputs are random tensors of the real shapes: this times steps, not learning.
Prints seconds per epoch of the K models (median of --repeat, after a warm-up epoch), separate/batched and
separate/grouped, and whether the grouped outputs equal the separate ones bit for bit (dropout off).

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


class GroupedLinear(nn.Module):
    """K linear layers as one: x (K, B, in) -> (K, B, out), one batched matmul."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in layers]))   # (K, in, out)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]).unsqueeze(1))   # (K, 1, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def grouped_model(models: list[nn.Module]) -> nn.Module:
    """One module computing the K models on (K, B, ...) inputs: Linear grouped, Flatten kept off the K axis."""
    group = copy.deepcopy(models[0])
    modules = [dict(m.named_modules()) for m in models]
    for name, module in list(group.named_modules()):
        if isinstance(module, nn.Linear):
            replacement: nn.Module = GroupedLinear([mods[name] for mods in modules])
        elif isinstance(module, nn.Flatten):
            replacement = nn.Flatten(start_dim=2)
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise SystemExit(f"grouped: no grouped form of {type(module).__name__} ({name})")
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(group.get_submodule(parent) if parent else group, leaf, replacement)
    return group


def check_grouped_outputs(models: list[nn.Module], group: nn.Module, x: torch.Tensor) -> str:
    """The grouped model computes what the K models compute (dropout off): 'bit for bit' or the largest gap."""
    for m in [*models, group]:
        m.eval()
    with torch.no_grad():
        together = group(x)
        alone = torch.stack([m(x[k]) for k, m in enumerate(models)])
    for m in [*models, group]:
        m.train()
    if torch.equal(together, alone):
        return "bit for bit"
    gap = (together - alone).abs().max().item()
    if not torch.allclose(together, alone, atol=1e-5, rtol=1e-4):
        raise SystemExit(f"grouped outputs differ from the separate models' by {gap:.2e}")
    return f"within {gap:.1e}"


def batched_epoch(state, optimizer, batches: list, device: torch.device) -> float:
    """One epoch of the K models at once: per-model mean losses summed, so each model gets its own gradient."""
    params, buffers, batched, _, _ = state
    return stacked_epoch(lambda x: batched(params, buffers, x), optimizer, batches, device)


def stacked_epoch(forward, optimizer, batches: list, device: torch.device) -> float:
    """One epoch of the K models at once: per-model mean losses summed, so each model gets its own gradient."""
    start = time.perf_counter()
    for x, y in batches:
        logits = forward(x)                                           # (K, B, classes)
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
    print(f"  {'model':8s} {'separate s/epoch':>17s} {'batched s/epoch':>16s} {'separate/batched':>17s} "
          f"{'grouped s/epoch':>16s} {'separate/grouped':>17s}  grouped outputs")
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
        group = grouped_model(models)
        same = check_grouped_outputs(models, group, batches[0][0])
        group_optimizer = torch.optim.Adam(group.parameters(), lr=1e-3, fused=fused)
        separate_epoch(solo, optimizers, batches, device)              # warm-up
        batched_epoch(state, optimizer, batches, device)
        stacked_epoch(group, group_optimizer, batches, device)
        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        for _ in range(args.repeat):                                   # taking turns: load falls on all alike
            times["a"].append(separate_epoch(solo, optimizers, batches, device))
            times["b"].append(batched_epoch(state, optimizer, batches, device))
            times["c"].append(stacked_epoch(group, group_optimizer, batches, device))
        a, b, c = (statistics.median(times[key]) for key in "abc")
        print(f"  {name:8s} {a:17.3f} {b:16.3f} {a / b:16.2f}x {c:16.3f} {a / c:16.2f}x  {same}")


if __name__ == "__main__":
    main()
