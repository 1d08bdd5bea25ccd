"""One training run end to end: data, split, loaders, model, train_model, test evaluation, run folder."""
from __future__ import annotations

import json
import os
import platform
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .checkpoint import load_checkpoint, read_checkpoint
from .config import LEGACY_VALUES, TrainConfig
from .datasets import Dataset, load_dataset
from .distributed import Context, from_environment, is_main_process
from .errors import ConfigError, ReslabError
from .evaluate import evaluate
from .loader import TensorLoader, channel_stats, stratified_split
from .models import build_model
from .tracking import ConsoleTracker, JsonlTracker, Tracker, Trackers, WandbTracker
from .train import resolve_device, train_model
from .version import code_version

# What last.pth holds beyond a best_model.pth: a file without them cannot be resumed.
RESUME_KEYS = ("optimizer", "early_stopping", "loader", "rng", "history", "best_epoch", "train_seconds")


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


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Fail early, before any work, if the run folder cannot be used as asked."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ReslabError(f"run folder {run_dir} is a file, not a folder")
    if resume and not (run_dir / "last.pth").is_file():
        raise ReslabError(f"cannot resume: {run_dir / 'last.pth'} does not exist")
    if not resume and not overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        raise ReslabError(f"run folder {run_dir} already exists; use --resume to continue it, --overwrite to "
                          "replace it, or --name for a new one")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create the run folder (emptied first when overwriting); refuse to reuse one unless resuming or overwriting."""
    check_run_dir(run_dir, resume, overwrite)
    if overwrite and not resume and run_dir.is_dir():
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ReslabError(f"output folder {run_dir} is not writable ({exc.strerror or exc})") from None
    for stale in run_dir.glob(".*.tmp"):   # a checkpoint write that a crash cut short
        stale.unlink()


def split_indices(data: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The run's stratified train/val split; with train_subset, a stratified subset of the train part."""
    train_idx, val_idx = stratified_split(data.train_labels, config.val_fraction, config.seed)
    if config.train_subset is not None and config.train_subset < len(train_idx):
        try:
            keep, _ = stratified_split(data.train_labels[train_idx], 1 - config.train_subset / len(train_idx),
                                       config.seed)
        except ConfigError:   # said in terms of the setting the user gave, not of the fraction derived from it
            raise ConfigError(f"train_subset {config.train_subset} of {len(train_idx)} training images leaves a "
                              "class with none or all of its images; use a subset further from both ends") from None
        train_idx = train_idx[keep]
    return train_idx, val_idx


def uses_augmentation(data: Dataset, config: TrainConfig) -> bool:
    """Random crop + flip: as the config says, else on for 32x32 colour images (CIFAR)."""
    return config.augment if config.augment is not None else data.input_shape == (3, 32, 32)


def make_loaders(data: Dataset, config: TrainConfig, device: torch.device, dist_ctx: Context | None = None,
                 channels_last: bool = False) -> dict[str, Any]:
    """Stratified split, normalization statistics of the train part, and the three loaders."""
    train_idx, val_idx = split_indices(data, config)
    mean, std = channel_stats(data.train_images[train_idx])
    augment = uses_augmentation(data, config)
    common = dict(mean=mean, std=std, device=device, channels_last=channels_last)
    if dist_ctx is not None:
        common.update(rank=dist_ctx.rank, world_size=dist_ctx.world_size)
    return {
        "train": TensorLoader(data.train_images[train_idx], data.train_labels[train_idx], config.batch_size,
                              shuffle=True, augment=augment, seed=config.seed, **common),
        "val": TensorLoader(data.train_images[val_idx], data.train_labels[val_idx], config.eval_batch_size, **common),
        # The test set is scored by rank 0 alone, over all of it.
        "test": TensorLoader(data.test_images, data.test_labels, config.eval_batch_size, mean=mean, std=std,
                             device=device, channels_last=channels_last),
        "mean": mean, "std": std, "augment": augment,
    }


def run_facts(data: Dataset, loaders: dict[str, Any], model: torch.nn.Module, device: torch.device,
              world_size: int = 1) -> dict[str, Any]:
    """What a run derived rather than was told: data provenance, normalization, device, sizes (for config.yaml)."""
    return {"data_official": data.official, "data_provenance": data.provenance, "data_layout": data.layout,
            "normalization": {"mean": loaders["mean"], "std": loaders["std"]},
            "augment_used": loaders["augment"], "device_used": str(device), "hardware": hardware_name(device),
            "world_size": world_size, "num_train": len(loaders["train"].labels), "num_val": len(loaders["val"].labels),
            "num_test": len(loaders["test"].labels), "num_parameters": sum(p.numel() for p in model.parameters()),
            "torch_version": str(torch.__version__), **code_version()}


def checkpoint_meta(data: Dataset, facts: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint needs to describe its data: dataset, input shape, classes, normalization."""
    return {"dataset": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "classes": data.classes, "normalization": facts["normalization"]}


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


def run_training(config: TrainConfig, resume: bool = False, overwrite: bool = False,
                 tracker: Tracker | None = None, console: bool = True) -> dict[str, Any]:
    """Train and test one model as `config` says, writing the run folder; return the summary.

    Everything a user can get wrong (data, model arguments, the run folder) is checked before the run folder
    is touched. Under torchrun, every rank trains and rank 0 alone writes files and talks to W&B.
    """
    run_dir = config.run_dir
    main_process = is_main_process()   # torchrun's rank 0, or a plain process
    if main_process:
        check_run_dir(run_dir, resume, overwrite)
    resume_state = None
    if resume:
        resume_state = read_checkpoint(run_dir / "last.pth")
        missing = [key for key in RESUME_KEYS if key not in resume_state]
        if missing:
            raise ReslabError(f"cannot resume: {run_dir / 'last.pth'} holds no training state "
                              f"({', '.join(missing)} missing); is it a copy of best_model.pth?")
        if resume_state["best_epoch"] > 0 and not (run_dir / "best_model.pth").is_file():
            raise ReslabError(f"cannot resume: {run_dir / 'best_model.pth'} (the weights of epoch "
                              f"{resume_state['best_epoch']}) is missing")
        # The folder and the data may have moved since: where they are now is what counts.
        saved = resume_state["config"]
        config = TrainConfig.from_dict({**LEGACY_VALUES, **saved, "out": str(run_dir.parent), "name": run_dir.name,
                                        "data_dir": config.data_dir or saved.get("data_dir")})
    seed_everything(config.seed, config.deterministic)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    dist_ctx = from_environment(device)
    if dist_ctx is not None:
        device = dist_ctx.device
    data = load_dataset(config.dataset, config.data_dir)
    if main_process:
        print(f"data: {data.name} from {data.layout}: {data.provenance}", flush=True)
    model = build_model(config.model, data.input_shape, data.num_classes, **config.model_args)
    # channels_last speeds convolutions up on CUDA and, measured on 2 CPU cores, on the CPU too.
    channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loaders = make_loaders(data, config, device, dist_ctx, channels_last)
    facts = run_facts(data, loaders, model, device, dist_ctx.world_size if dist_ctx else 1)
    full_config = {**config.to_dict(), **facts}
    meta = checkpoint_meta(data, facts)
    trackers, wandb = Trackers(), None
    if main_process:
        prepare_run_dir(run_dir, resume, overwrite)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(full_config, sort_keys=False))
        if config.wandb != "disabled":
            wandb = WandbTracker(config.wandb, run_dir, config.wandb_project, config.run_name, config.wandb_group,
                                 config.wandb_job_type, resume_state.get("wandb_id") if resume_state else None)
        trackers = Trackers(ConsoleTracker(config.epochs) if console else None,
                            JsonlTracker(run_dir / "metrics.jsonl", resume_state["history"] if resume_state else []),
                            wandb, tracker)
        trackers.start(full_config)
        meta["wandb_id"] = wandb.run_id if wandb is not None else None
    exit_code = 1
    try:
        history = train_model(model, loaders["train"], loaders["val"], config, trackers,
                              run_dir if main_process else None, meta, resume_state, dist_ctx)
        if not main_process:
            exit_code = 0
            print(f"rank {dist_ctx.rank}: stopped by {history.stopped_by} after {len(history.epochs)} epochs",
                  flush=True)
            return {"stopped_by": history.stopped_by, "epochs_run": len(history.epochs)}
        test = evaluate(model, loaders["test"], data.num_classes, config.amp)
        summary = {
            "model": config.model, "model_args": model.reslab_spec["args"], "dataset": data.name,
            "seed": config.seed, "epochs_run": len(history.epochs), "best_epoch": history.best_epoch,
            "best_val_loss": history.best_val_loss, "stopped_by": history.stopped_by,
            "train_seconds": round(history.train_seconds, 3), "world_size": facts["world_size"],
            **test_summary(test, data, device, facts),
        }
        if history.nan_at:
            summary["nan_at"] = history.nan_at
        write_json_atomic(run_dir / "summary.json", summary)
        trackers.log_summary(summary)
        exit_code = 0
    finally:
        trackers.finish(exit_code)
        if dist_ctx is not None:
            dist_ctx.close(wait=exit_code == 0)
    if console:
        print_summary(summary, run_dir, config)
    return summary


def read_json(path: Path) -> Any:
    """A JSON file of a run or study folder; a missing or damaged one is a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        why = "missing" if isinstance(exc, FileNotFoundError) else "damaged"
        raise ReslabError(f"{path} is {why}; the folder is incomplete (rerun, with --overwrite to replace it)") from None


def read_jsonl(path: Path) -> list[Any]:
    """The records of a metrics.jsonl (none when it is missing); a damaged line is a one-line error."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except ValueError:
        raise ReslabError(f"{path} is damaged (a line is not JSON); rerun, with --overwrite to replace it") from None


def test_summary(test: dict[str, Any], data: Dataset, device: torch.device, facts: dict[str, Any]) -> dict[str, Any]:
    """The summary.json fields of every trained run: test metrics, data provenance, hardware, model size."""
    return {"test_loss": test["loss"], "test_accuracy": test["accuracy"], "test_precision": test["precision"],
            "test_recall": test["recall"], "test_f1": test["f1"], "data_official": data.official,
            "data_provenance": data.provenance,
            "device": str(device), "hardware": facts["hardware"], "num_parameters": facts["num_parameters"],
            "test_per_class_precision": test["per_class_precision"],
            "test_per_class_recall": test["per_class_recall"], "test_confusion_matrix": test["confusion_matrix"]}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def print_summary(summary: dict[str, Any], run_dir: Path, config: TrainConfig) -> None:
    """The closing lines of a run on the console."""
    if summary["stopped_by"] == "nan":
        print(f"stopped: the training loss became NaN or infinite at {summary['nan_at']}; the learning rate "
              f"(lr={config.lr}) is the likely cause; the best weights so far were kept", flush=True)
    elif summary["stopped_by"] == "interrupted":
        print("stopped: interrupted; continue with: reslab resume " + str(run_dir), flush=True)
    print(f"test loss {summary['test_loss']:.4f}  accuracy {100 * summary['test_accuracy']:.2f}%  "
          f"precision {100 * summary['test_precision']:.2f}%  ({summary['epochs_run']} epochs, best "
          f"{summary['best_epoch']}, stopped by {summary['stopped_by']}, {summary['train_seconds']:.1f}s)", flush=True)
    print(f"run folder: {run_dir}", flush=True)


def evaluate_checkpoint(path: str | Path, dataset: str | None = None, data_dir: str | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """Test a saved model on a dataset's test split (its own dataset by default) with its own normalization."""
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(path)
    data = load_dataset(dataset or ckpt["dataset"], data_dir)
    if tuple(ckpt["input_shape"]) != data.input_shape or ckpt["num_classes"] != data.num_classes:
        raise ReslabError(f"checkpoint {path} is a {ckpt['model']} for {ckpt['dataset']} "
                          f"({'x'.join(map(str, ckpt['input_shape']))} images, {ckpt['num_classes']} classes); "
                          f"{data.name} has {'x'.join(map(str, data.input_shape))} images and {data.num_classes} "
                          "classes")
    norm = ckpt["normalization"]
    loader = TensorLoader(data.test_images, data.test_labels, 1024, norm["mean"], norm["std"], device=dev)
    metrics = evaluate(model.to(dev), loader, data.num_classes)
    return {"checkpoint": str(path), "model": ckpt["model"], "dataset": data.name, **metrics}
