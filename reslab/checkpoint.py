"""Self-describing checkpoints, written atomically and loaded without executing anything."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .device import capture_rng
from .early_stopping import EarlyStopping
from .errors import ReslabError
from .models import build_model, model_spec
from .runfolder import writing

FORMAT = "reslab-checkpoint-1"
# What last.pth holds beyond a best_model.pth: a file without them cannot be resumed.
RESUME_KEYS = ("optimizer", "early_stopping", "loader", "rng", "history", "best_epoch", "train_seconds")
# What rebuilding a checkpoint's model needs.
MODEL_FIELDS = ("model", "model_args", "input_shape", "num_classes", "state_dict")


def _kind(*types: type) -> Any:
    """A check that a value is of one of the types (a bool counts as no number)."""
    return lambda value: isinstance(value, types) and not isinstance(value, bool)


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(_kind(int)(d) and d > 0 for d in value)


def _is_mapping_of(kind: type) -> Any:
    """A check that a value is a dict from names to values of `kind`."""
    return lambda value: isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, kind)
                                                         for k, v in value.items())


# Every field a reader relies on, with its check: a checkpoint edited by hand is refused in one line, not halfway
# through a run with a traceback.
FIELD_CHECKS = {
    "model": _kind(str),
    "model_args": _is_mapping_of(object),
    "input_shape": _is_shape,
    "num_classes": lambda value: _kind(int)(value) and value > 0,
    "state_dict": _is_mapping_of(torch.Tensor),
    "dataset": _kind(str),
    "normalization": lambda value: isinstance(value, dict) and all(isinstance(value.get(k), list)
                                                                   for k in ("mean", "std")),
    "config": _kind(dict),
    "epoch": _kind(int),
    "optimizer": _kind(dict),
    "early_stopping": _kind(dict),
    "loader": lambda value: value is None or isinstance(value, dict),
    "rng": _kind(dict),
    "history": lambda value: isinstance(value, list) and all(isinstance(r, dict) for r in value),
    "best_epoch": lambda value: _kind(int)(value) and value >= 0,
    "train_seconds": _kind(int, float),
}
# A new best, written before last.pth names it and renamed to best_model.pth after (see train_model).
STAGED_BEST = ".best_model.pth.staged"


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, flush + fsync, then rename over `path`."""
    path = Path(path)
    with writing(path):
        _save_atomic(obj, path)


def _save_atomic(obj: Any, path: Path) -> None:
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


def read_checkpoint(path: str | Path, needs: tuple[str, ...] = MODEL_FIELDS) -> dict[str, Any]:
    """Load a reslab checkpoint dict (weights only: no pickled code runs) that holds the fields in `needs`, every
    field it holds of the right kind (FIELD_CHECKS)."""
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
    wrong = [key for key, check in FIELD_CHECKS.items()
             if (key in ckpt or key in needs) and not (key in ckpt and check(ckpt[key]))]
    if wrong:
        raise ReslabError(f"{path}: not a usable reslab checkpoint ({', '.join(wrong)} missing or of the wrong "
                          "kind); it was changed by hand or is damaged")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    needs: tuple[str, ...] = MODEL_FIELDS) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights, return (model, checkpoint)."""
    ckpt = read_checkpoint(path, needs)
    model = build_model(ckpt["model"], tuple(ckpt["input_shape"]), ckpt["num_classes"], **ckpt["model_args"])
    load_weights(model, ckpt["state_dict"], path)
    return model.to(device), ckpt


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load a checkpoint's weights into a model; weights of another model are a one-line error."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError, AttributeError, ValueError) as exc:
        # torch's message is a header line ("Error(s) in loading state_dict for MLP:") over the details.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
        name = (model_spec(model) or {}).get("name", type(model).__name__)
        raise ReslabError(f"the weights in {path} do not fit model {name!r} ({detail[:200]})") from None


def checkpoint_dict(model: nn.Module, meta: dict[str, Any], config: TrainConfig, record: dict[str, Any]) -> dict:
    """The self-describing part of a checkpoint: weights, model, dataset, normalization, config, epoch, metrics."""
    spec = model_spec(model) or {"name": config.model, "args": config.model_args}
    return {"format": FORMAT, "model": spec["name"], "model_args": dict(spec["args"]),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": config.to_dict(), "epoch": record["epoch"], "val_loss": record["val_loss"],
            "val_accuracy": record["val_accuracy"], **{k: v for k, v in meta.items() if k != "wandb_id"}}


def last_checkpoint(snapshot: dict[str, Any], optimizer: torch.optim.Optimizer, stopper: EarlyStopping,
                    loader: Any, history: Any, wandb_id: str | None) -> dict[str, Any]:
    """last.pth: a checkpoint (see checkpoint_dict) plus everything a resume needs, but not the best weights."""
    return {**snapshot, "optimizer": optimizer.state_dict(), "early_stopping": stopper.state_dict(),
            "loader": loader.state_dict() if hasattr(loader, "state_dict") else None, "rng": capture_rng(),
            "history": history.epochs, "best_epoch": history.best_epoch, "train_seconds": history.train_seconds,
            "wandb_id": wandb_id}


def stage_best(snapshot: dict[str, Any], run_dir: Path) -> None:
    """Write a new best checkpoint beside best_model.pth, to be committed once last.pth names its epoch."""
    save_atomic(snapshot, run_dir / STAGED_BEST)


def commit_best(run_dir: Path) -> None:
    """Make the staged best checkpoint the run's best_model.pth."""
    with writing(run_dir / "best_model.pth"):
        os.replace(run_dir / STAGED_BEST, run_dir / "best_model.pth")


def recover_best(run_dir: Path, best_epoch: int) -> dict[str, torch.Tensor] | None:
    """The weights of last.pth's best epoch (None before one), finishing or undoing a best checkpoint that a kill
    cut short."""
    staged = run_dir / STAGED_BEST
    if staged.is_file():
        # Killed after staging: last.pth names the staged epoch only if it was written too.
        if best_epoch > 0 and read_checkpoint(staged).get("epoch") == best_epoch:
            commit_best(run_dir)
        else:
            staged.unlink()
    if best_epoch == 0:
        return None
    path = run_dir / "best_model.pth"
    if not path.is_file():
        raise ReslabError(f"cannot resume: {path} (the weights of epoch {best_epoch}) is missing")
    best = read_checkpoint(path)
    if best.get("epoch") != best_epoch:
        raise ReslabError(f"cannot resume: {path} holds epoch {best.get('epoch')} but last.pth names epoch "
                          f"{best_epoch} as the best; the folder was changed by hand")
    return best["state_dict"]
