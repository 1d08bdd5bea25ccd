"""The machine side of a run: which device, its precision and memory format, threads, seeds and RNG state."""
from __future__ import annotations

import os
import platform
import random
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for 'auto'; otherwise the named device, which must exist on this machine."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name}: this machine has no CUDA device for torch {torch.__version__} "
                          "(use --device cpu, or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not mps:
        raise ConfigError(f"device {name}: MPS is not available here (use --device cpu, or auto)")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def autocast_for(device: torch.device, amp: bool, cache: bool = True) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when amp is on (cache: keep the weights' casts within the context); a no-op elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return nullcontext()


def to_channels_last(model: nn.Module) -> bool:
    """Put a conv net's weights in channels_last (in place); return whether the model has convolutions."""
    # channels_last speeds convolutions up on CUDA and, measured on 2 CPU cores, on the CPU too (10-20% in
    # training, 1.6x in feature extraction).
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if has_conv:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # the stubs lack it
    return has_conv


def set_threads(threads: int | None) -> int:
    """Use `threads` CPU threads for torch (None: leave torch's choice); return the number in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch RNG states (weights-only-loadable types)."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]  # legacy: a tuple
    state = {"python": random.getstate(), "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()),
                                                     *np_state[2:]), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo capture_rng."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def hardware_name(device: torch.device) -> str:
    """A short description of the device the run used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else a generic name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"
