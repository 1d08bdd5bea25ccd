"""Self-describing checkpoints, written atomically and loaded without executing anything."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ReslabError
from .models import build_model

FORMAT = "reslab-checkpoint-1"


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, flush + fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a reslab checkpoint dict (weights only: no pickled code runs)."""
    path = Path(path)
    if path.is_dir():
        raise ReslabError(f"{path} is a folder; give a checkpoint file, e.g. {path / 'best_model.pth'}")
    if not path.is_file():
        raise ReslabError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many types
        raise ReslabError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ReslabError(f"{path}: not a reslab checkpoint")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights, return (model, checkpoint)."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt["model"], tuple(ckpt["input_shape"]), ckpt["num_classes"], **ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device), ckpt
