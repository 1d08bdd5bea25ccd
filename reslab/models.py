"""The model families (MLP, residual MLP, plain CNN, residual CNN and its no-skip twin) and a registry."""
from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .checks import check_int, check_number, did_you_mean
from .errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Put a model builder `fn(input_shape, num_classes, **kwargs)` in the registry under its name."""
    _REGISTRY[builder.__name__] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_arguments(name: str) -> dict[str, object]:
    """The keyword arguments a model accepts, with their defaults."""
    builder = _builder(name)
    params = list(inspect.signature(builder).parameters.values())[2:]
    return {p.name: p.default for p in params}


def check_model(name: str, kwargs: dict[str, Any]) -> dict[str, object]:
    """Raise ConfigError for an unknown model or argument name (values are checked by the builder); return its
    arguments with their defaults. Cheap, so a run checks it before it reads any data."""
    valid = model_arguments(name)
    unknown = sorted(str(key) for key in kwargs if key not in valid)   # str: a YAML file may hold `{1: 2}`
    if unknown:
        raise ConfigError(f"model {name!r} takes no argument {', '.join(unknown)}{did_you_mean(unknown[0], valid)}; "
                          f"it takes: {', '.join(valid)}")
    return valid


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name or keyword argument is a one-line error naming the valid ones."""
    valid = check_model(name, kwargs)
    model = _builder(name)(tuple(input_shape), num_classes, **kwargs)
    # Recorded in checkpoints. setattr: nn.Module's typed __setattr__ takes only tensors and modules.
    setattr(model, "reslab_spec", {"name": name, "args": {**valid, **kwargs}})  # noqa: B010
    return model


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """The name and arguments a model was built with by build_model (None for a model built otherwise)."""
    return getattr(model, "reslab_spec", None)


def _builder(name: str) -> Callable[..., nn.Module]:
    if not isinstance(name, str) or name not in _REGISTRY:   # a YAML file may hold `model: [a]`
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; choose one of: "
                          f"{', '.join(list_models())}")
    return _REGISTRY[name]


# Upper bounds that keep an absurd size a one-line error instead of an allocation that fails or crashes.
MAX_WIDTH, MAX_DEPTH = 2 ** 16, 1000


def _size(name: str, value: Any, maximum: int = MAX_WIDTH) -> int:
    return check_int(name, value, minimum=1, maximum=maximum)


def _dropout(value: Any) -> float:
    return check_number("dropout", value, minimum=0, below=1)


class MLP(nn.Module):
    """Fully connected layers with ReLU and dropout after the last hidden layer."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """linear-ReLU-linear-dropout, add the input, ReLU."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = torch.relu(self.fc1(x))
        out = self.dropout(self.fc2(out))
        return torch.relu(out + identity)


class ResidualMLP(nn.Module):
    """FC to a fixed width, residual blocks, FC to the classes."""

    def __init__(self, in_features: int, width: int, blocks: int, num_classes: int, dropout: float):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc_in = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width, dropout) for _ in range(blocks)])
        self.fc_out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.fc_in(self.flatten(x)))
        out = self.blocks(out)
        return self.fc_out(out)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block: two conv3x3-BN, identity skip (a 1x1 projection where the shape changes).

    With skip=False the block is the same two conv3x3-BN layers and ReLUs without the skip path (no identity,
    no projection): the ResNet paper's "plain" control."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, skip: bool = True):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module | None = None
        if skip:
            self.shortcut = nn.Identity()
            if stride != 1 or in_ch != out_ch:
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return torch.relu(out)


class SimpleCNN(nn.Module):
    """Plain conv3x3-ReLU layers, channels doubling, 2x2 max-pool after every second layer, FC head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, depth: int, width: int,
                 max_width: int, hidden: int, dropout: float):
        super().__init__()
        channels, h, w = input_shape
        layers: list[nn.Module] = []
        for i in range(depth):
            out_ch = min(width * 2 ** i, max_width)
            layers += [nn.Conv2d(channels, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
            channels = out_ch
            if i % 2 == 1 and min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * h * w, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResidualCNN(nn.Module):
    """Stem conv3x3-BN-ReLU, BasicBlocks, global average pool, dropout, linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, depth: int, width: int,
                 max_width: int, downsamples: int, dropout: float, skip: bool = True):
        super().__init__()
        channels = input_shape[0]
        self.stem = nn.Sequential(conv3x3(channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        blocks, in_ch = [], width
        for i in range(depth):
            # Blocks 1..downsamples halve the resolution and double the width: even a shallow net sees the
            # whole image before the global pool.
            stride = 2 if 1 <= i <= downsamples else 1
            out_ch = min(in_ch * stride, max_width)
            blocks.append(BasicBlock(in_ch, out_ch, stride, skip))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.blocks(self.stem(x)))
        return self.fc(self.dropout(out))


@register_model
def mlp(input_shape, num_classes, hidden=(128, 64), dropout=0.2) -> nn.Module:
    """Multilayer perceptron; the reference lab's is 784-128-64-Dropout(0.2)-10."""
    if not isinstance(hidden, (list, tuple)):
        raise ConfigError(f"hidden must be a list of layer sizes, got {hidden!r}")
    hidden = tuple(hidden)
    for size in hidden:
        _size("hidden size", size)
    _dropout(dropout)
    return MLP(_numel(input_shape), hidden, num_classes, dropout)


@register_model
def resmlp(input_shape, num_classes, width=110, blocks=2, dropout=0.2) -> nn.Module:
    """Residual MLP: FC(width), `blocks` residual blocks, FC(classes)."""
    _size("width", width)
    _size("blocks", blocks, MAX_DEPTH)
    _dropout(dropout)
    return ResidualMLP(_numel(input_shape), width, blocks, num_classes, dropout)


@register_model
def cnn(input_shape, num_classes, depth=3, width=64, max_width=256, hidden=128, dropout=0.2) -> nn.Module:
    """Plain CNN of `depth` conv layers."""
    _size("depth", depth, MAX_DEPTH)
    for name, value in (("width", width), ("max_width", max_width), ("hidden", hidden)):
        _size(name, value)
    _dropout(dropout)
    return SimpleCNN(tuple(input_shape), num_classes, depth, width, max_width, hidden, dropout)


@register_model
def rescnn(input_shape, num_classes, depth=3, width=64, max_width=256, downsamples=2, dropout=0.2) -> nn.Module:
    """Residual CNN of `depth` BasicBlocks."""
    return _residual_cnn(input_shape, num_classes, depth, width, max_width, downsamples, dropout, skip=True)


@register_model
def noskipcnn(input_shape, num_classes, depth=3, width=64, max_width=256, downsamples=2, dropout=0.2) -> nn.Module:
    """rescnn with its skip connections removed: same layers, BatchNorm, widths and pooling."""
    return _residual_cnn(input_shape, num_classes, depth, width, max_width, downsamples, dropout, skip=False)


def _residual_cnn(input_shape, num_classes, depth, width, max_width, downsamples, dropout, skip) -> nn.Module:
    _size("depth", depth, MAX_DEPTH)
    for name, value in (("width", width), ("max_width", max_width)):
        _size(name, value)
    check_int("downsamples", downsamples, minimum=0, maximum=MAX_DEPTH)
    _dropout(dropout)
    return ResidualCNN(tuple(input_shape), num_classes, depth, width, max_width, downsamples, dropout, skip)


def _numel(shape) -> int:
    count = 1
    for d in shape:
        count *= d
    return count
