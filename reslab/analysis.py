"""Gradient flow: per-layer gradient L2 norms of a network at initialization and during training."""
from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .datasets import Dataset, load_dataset
from .loader import make_loaders
from .models import build_model

GRAD_PREFIX = "grad_2.0_norm/"   # the key train_model logs per parameter when log_grad_norms is on


def linear_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(label, weight parameter name) of every nn.Linear in order: fc1 is the first layer."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return [(f"fc{i}", f"{name}.weight") for i, name in enumerate(names, 1)]


def init_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, float]:
    """L2 norm of each linear layer's weight gradient after one forward and backward pass on (x, y)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)   # dropout draws its masks from the global generator: the same draw for every model
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return {label: float(grads[name].norm(2)) for label, name in linear_layers(model)}


def gradient_flow_at_init(configs: dict[str, TrainConfig], data: Dataset | None = None) -> dict:
    """Per-layer gradient norms of each config's freshly built model on one fixed batch of its training split.

    `data` is the configs' dataset when the caller has it loaded already."""
    # The configs share dataset and seed: every model sees the batch of the first, initialized from that seed.
    first = next(iter(configs.values()))
    data = data if data is not None else load_dataset(first.dataset, first.data_dir)
    loader = make_loaders(data, first, torch.device("cpu")).train
    x, y = next(iter(loader))   # the seed's first shuffled training batch
    models = {}
    for label, config in configs.items():
        torch.manual_seed(config.seed)   # initial weights drawn as in a run with this seed
        model = build_model(config.model, data.input_shape, data.num_classes, **config.model_args)
        norms = init_grad_norms(model, x, y, config.seed)
        models[label] = {"layers": dict(linear_layers(model)), "norms": norms}
    return {"seed": first.seed, "dataset": data.name, "batch_size": len(y), "models": models}


def epoch_grad_norms(records: list[dict], layers: dict[str, str]) -> dict[str, list[float]]:
    """Per-epoch mean gradient norm of each layer (label -> weight name) from a run's metrics.jsonl records."""
    return {label: [r[GRAD_PREFIX + name] for r in records if GRAD_PREFIX + name in r]
            for label, name in layers.items()}
