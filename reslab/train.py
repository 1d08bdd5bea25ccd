"""train_model: the epoch loop, the two early-stopping rules, best and last checkpoints, clean interrupts."""
from __future__ import annotations

import copy
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import FORMAT, read_checkpoint, save_atomic
from .config import TrainConfig
from .errors import ConfigError, ReslabError
from .loader import TensorLoader
from .tracking import Tracker

# How many batches may pass between host checks for a non-finite loss; each check is a CPU-GPU sync.
NAN_CHECK_EVERY = 20


@dataclass
class EarlyStopping:
    """The stagnation and overfitting rules; state is saved with the checkpoint so a resumed run stops alike.

    stagnation: an epoch improves when ``val_loss < best_val_loss - min_delta`` (best_val_loss is the val loss of
    the last improving epoch); otherwise ``wait += 1`` and stop when ``wait >= patience`` (so patience 0 stops at
    the first epoch that does not improve).
    overfitting: an epoch overfits when ``val_loss > best_val_loss * (1 + overfit_ratio) + overfit_delta`` (best
    before this epoch); stop after ``overfit_patience`` overfitting epochs in a row. The default margin is
    relative (ratio 0.15, delta 0: Prechelt's generalization loss above 15%), so it scales with the loss; ratio 0
    with delta 0.02 is the older absolute rule. If both rules fire together the reason is overfitting.
    """

    patience: int = 5
    min_delta: float = 0.0
    overfit_patience: int = 3
    overfit_delta: float = 0.0
    stagnation_stop: bool = True
    overfit_stop: bool = True
    overfit_ratio: float = 0.15
    best_val_loss: float = math.inf
    wait: int = 0
    overfit_count: int = 0

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "EarlyStopping":
        return cls(cfg.patience, cfg.min_delta, cfg.overfit_patience, cfg.overfit_delta,
                   cfg.stagnation_stop, cfg.overfit_stop, cfg.overfit_ratio)

    def step(self, val_loss: float) -> tuple[bool, str | None]:
        """Feed one epoch's val loss; return (improved, stop reason or None)."""
        if not math.isfinite(val_loss):
            return False, "nan"
        overfitting = val_loss > self.best_val_loss * (1 + self.overfit_ratio) + self.overfit_delta
        improved = val_loss < self.best_val_loss - self.min_delta
        if improved:
            self.best_val_loss, self.wait = val_loss, 0
        else:
            self.wait += 1
        self.overfit_count = self.overfit_count + 1 if overfitting else 0
        if self.overfit_stop and self.overfit_count >= self.overfit_patience:
            return improved, "overfitting"
        if self.stagnation_stop and not improved and self.wait >= self.patience:
            return improved, "stagnation"
        return improved, None

    def state_dict(self) -> dict[str, float]:
        return {"best_val_loss": self.best_val_loss, "wait": self.wait, "overfit_count": self.overfit_count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best_val_loss, self.wait, self.overfit_count = state["best_val_loss"], state["wait"], state["overfit_count"]


@dataclass
class History:
    """What train_model returns: one record per epoch and how training ended."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = "max_epochs"
    best_epoch: int = 0
    best_val_loss: float = math.inf
    train_seconds: float = 0.0
    nan_at: str | None = None        # "epoch E, batch B" when a non-finite loss stopped training


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a polite stop request; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this batch (press Ctrl-C again to quit at once)", flush=True)


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


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch RNG states (weights-only-loadable types)."""
    np_state = np.random.get_state()
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


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when amp is on; a no-op elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam with the config's learning rate and weight decay; the fused kernel on CPU and CUDA."""
    # Fused updates every parameter in one pass instead of a chain of ops per tensor: fewer kernel launches on
    # CUDA, and measured 15-20% faster MNIST MLP steps on 2 CPU cores.
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=True if device.type in ("cpu", "cuda") else None)


def train_model(model: nn.Module, train_loader: TensorLoader, val_loader: TensorLoader, config: TrainConfig,
                tracker: Tracker | None = None, run_dir: str | Path | None = None,
                checkpoint_meta: dict[str, Any] | None = None, resume: dict[str, Any] | None = None,
                distributed: Any = None) -> History:
    """Train with Adam, validate each epoch, stop early by the two rules, keep the best weights.

    With `run_dir`, writes best_model.pth at every improving epoch and last.pth (everything needed to resume)
    at every epoch end. `resume` is a loaded last.pth to continue from. On return the model holds the best
    weights. `distributed` (a reslab.distributed.Context) all-reduces the epoch sums across ranks.
    """
    device = train_loader.device
    if len(train_loader) == 0:
        raise ConfigError(f"no training images for this process: the training split has too few for "
                          f"{train_loader.world_size} rank(s)")
    model.to(device)
    optimizer = make_optimizer(model, config, device)
    stopper = EarlyStopping.from_config(config)
    history = History()
    run_dir = Path(run_dir) if run_dir is not None else None
    meta = dict(checkpoint_meta or {})
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        stopper.load_state_dict(resume["early_stopping"])
        train_loader.load_state_dict(resume["loader"])
        restore_rng(resume["rng"])
        history.epochs = list(resume["history"])
        history.best_epoch = resume["best_epoch"]
        history.train_seconds = resume["train_seconds"]
        first_epoch = resume["epoch"] + 1
    best_state = copy.deepcopy(model.state_dict())
    if resume is not None and history.best_epoch > 0 and run_dir is not None:
        # best_model.pth holds the best weights; last.pth does not repeat them (it is written every epoch).
        best_path = run_dir / "best_model.pth"
        if not best_path.is_file():
            raise ReslabError(f"cannot resume: {best_path} (the weights of epoch {history.best_epoch}) is missing")
        best_state = read_checkpoint(best_path)["state_dict"]
    step_model = distributed.wrap(model) if distributed is not None else model
    if config.compile:
        step_model = torch.compile(step_model)
    grad_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    stopped_by = "max_epochs"

    with StopSignals() as signals:
        for epoch in range(first_epoch, config.epochs + 1):
            start = time.perf_counter()
            train = _train_epoch(step_model, train_loader, optimizer, config, signals,
                                 grad_params if config.log_grad_norms else None, distributed)
            if train.get("nan_batch") is not None:
                history.nan_at = f"epoch {epoch}, batch {train['nan_batch']}"
                stopped_by = "nan"
                break
            if train.get("interrupted"):
                stopped_by = "interrupted"
                break
            val_loss, val_accuracy = evaluate_loss_accuracy(step_model, val_loader, config.amp, distributed)
            seconds = time.perf_counter() - start
            history.train_seconds += seconds
            record = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                      "val_loss": val_loss, "val_accuracy": val_accuracy, "seconds": round(seconds, 4)}
            record.update(train.get("grad_norms", {}))
            history.epochs.append(record)
            improved, reason = stopper.step(val_loss)
            if improved:
                history.best_epoch = epoch
                best_state = copy.deepcopy(model.state_dict())
            if tracker is not None:
                tracker.log_epoch(record)
            if run_dir is not None:
                snapshot = _checkpoint(model, meta, config, record)   # one CPU copy of the weights for both files
                if improved:
                    save_atomic(snapshot, run_dir / "best_model.pth")
                save_atomic(last_checkpoint(snapshot, optimizer, stopper, train_loader, history, meta.get("wandb_id")),
                            run_dir / "last.pth")
            if reason:
                stopped_by = reason
                break
            if distributed.any(signals.requested) if distributed is not None else signals.requested:
                stopped_by = "interrupted"
                break
    history.stopped_by = stopped_by
    history.best_val_loss = stopper.best_val_loss
    model.load_state_dict(best_state)
    return history


def _checkpoint(model: nn.Module, meta: dict[str, Any], config: TrainConfig, record: dict[str, Any]) -> dict:
    """The self-describing part of a checkpoint: weights, model, dataset, normalization, config, epoch, metrics."""
    spec = getattr(model, "reslab_spec", {"name": config.model, "args": config.model_args})
    return {"format": FORMAT, "model": spec["name"], "model_args": dict(spec["args"]),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": config.to_dict(), "epoch": record["epoch"], "val_loss": record["val_loss"],
            "val_accuracy": record["val_accuracy"], **{k: v for k, v in meta.items() if k != "wandb_id"}}


def last_checkpoint(snapshot: dict[str, Any], optimizer: torch.optim.Optimizer, stopper: EarlyStopping,
                    loader: TensorLoader, history: History, wandb_id: str | None) -> dict[str, Any]:
    """last.pth: a checkpoint (see _checkpoint) plus everything a resume needs, but not the best weights."""
    return {**snapshot, "optimizer": optimizer.state_dict(), "early_stopping": stopper.state_dict(),
            "loader": loader.state_dict(), "rng": capture_rng(), "history": history.epochs,
            "best_epoch": history.best_epoch, "train_seconds": history.train_seconds, "wandb_id": wandb_id}


def _train_epoch(model: nn.Module, loader: TensorLoader, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 signals: StopSignals, grad_params: list | None, distributed: Any) -> dict[str, Any]:
    """One pass over the training data; per-batch results stay on the device and are read once at the end."""
    model.train()
    device = loader.device
    # Per-batch results are kept as device tensors and combined once at the end of the epoch: one small op per
    # batch (the argmax), no host sync.
    losses: list[torch.Tensor] = []
    predictions: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    grad_sums = torch.zeros(len(grad_params), device=device) if grad_params else None
    criterion = nn.CrossEntropyLoss()
    # Under DDP every rank must run the same number of steps, so mid-epoch stops wait for the epoch's end.
    stop_mid_epoch = distributed is None
    for i, (x, y) in enumerate(_progress(loader, "train")):
        with autocast_for(device, config.amp):
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_sums is not None:
            grad_sums += torch.stack(torch._foreach_norm([p.grad for _, p in grad_params]))
        optimizer.step()
        losses.append(loss.detach())
        predictions.append(logits.argmax(1))
        targets.append(y)
        if stop_mid_epoch:
            # Look for a non-finite loss only every NAN_CHECK_EVERY batches: each look is a CPU-GPU sync.
            if (i + 1) % NAN_CHECK_EVERY == 0 and not torch.stack(losses[-NAN_CHECK_EVERY:]).isfinite().all():
                break
            if signals.requested:
                return {"interrupted": True}
    batch_losses = torch.stack(losses)
    bad = ~batch_losses.isfinite()
    first_bad = torch.where(bad.any(), bad.int().argmax(), -1)   # argmax: the first bad batch
    # Every batch is full but the last: weight the last batch's mean loss by its own size.
    seen = loader.num_samples
    last = seen - (len(loader) - 1) * loader.batch_size
    loss_sum = batch_losses[:-1].sum() * loader.batch_size + batch_losses[-1] * last
    hits = (torch.cat(predictions) == torch.cat(targets)).sum()
    totals = torch.stack([loss_sum, hits.to(loss_sum.dtype), torch.tensor(float(seen), device=device),
                          bad.sum().to(loss_sum.dtype)])
    if distributed is not None:   # summed over ranks, so every rank sees a bad batch of any rank
        totals = distributed.all_reduce_sum(totals)
    # The one host sync of the epoch.
    loss_total, correct_total, count, bad_total, first = torch.cat([totals, first_bad.view(1).float()]).tolist()
    if bad_total > 0:
        return {"nan_batch": int(first) + 1 if first >= 0 else 1}
    result: dict[str, Any] = {"loss": loss_total / count, "accuracy": correct_total / count}
    if grad_sums is not None:
        norms = (grad_sums / max(len(loader), 1)).tolist()
        result["grad_norms"] = {f"grad_2.0_norm/{n}": v for (n, _), v in zip(grad_params, norms)}
    return result


@torch.inference_mode()
def evaluate_loss_accuracy(model: nn.Module, loader: TensorLoader, amp: bool = True,
                           distributed: Any = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a loader, summed on the device."""
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    count = 0
    for x, y in loader:
        with autocast_for(device, amp):
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    totals = torch.stack([loss_sum, correct, torch.tensor(float(count), device=device)])
    if distributed is not None:
        totals = distributed.all_reduce_sum(totals)
    loss_total, correct_total, n = totals.tolist()
    return loss_total / max(n, 1), correct_total / max(n, 1)


def _progress(loader: TensorLoader, desc: str):
    """A progress bar over the batches when stderr is a terminal; the plain loader otherwise."""
    if not sys.stderr.isatty():
        return loader
    return tqdm(loader, desc=desc, leave=False, total=len(loader))
