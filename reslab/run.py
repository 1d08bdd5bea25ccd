"""One training run end to end: data, split, loaders, model, train_model, test evaluation, run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import MODEL_FIELDS, RESUME_KEYS, load_checkpoint, load_weights, read_checkpoint, recover_best
from .config import LEGACY_VALUES, RESULT_KEYS, TrainConfig, load_yaml
from .datasets import Dataset, load_dataset
from .device import hardware_name, resolve_device, seed_everything, set_threads, to_channels_last
from .distributed import Context, from_environment, is_main_process
from .early_stopping import StopReason
from .errors import ReslabError
from .evaluate import evaluate
from .loader import Loaders, TensorLoader, make_loaders
from .models import build_model, check_model, model_spec
from .runfolder import FolderLock, RunFolder, check_run_dir, finite, read_json
from .tracking import Tracker, wandb_tracker
from .train import History, train_model
from .version import code_version


def run_facts(data: Dataset, loaders: Loaders, model: torch.nn.Module, device: torch.device,
              world_size: int = 1) -> dict[str, Any]:
    """What a run derived rather than was told: data provenance, normalization, device, sizes (for config.yaml)."""
    return {"data_official": data.official, "data_provenance": data.provenance, "data_layout": data.layout,
            "normalization": {"mean": loaders.mean, "std": loaders.std}, "augment_used": loaders.augment,
            "device_used": str(device), "hardware": hardware_name(device), "world_size": world_size,
            "num_train": len(loaders.train.labels), "num_val": len(loaders.val.labels),
            "num_test": len(loaders.test.labels), "num_parameters": sum(p.numel() for p in model.parameters()),
            "torch_version": str(torch.__version__), **code_version()}


def checkpoint_meta(data: Dataset, facts: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint needs to describe its data: dataset, input shape, classes, normalization."""
    return {"dataset": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "classes": data.classes, "normalization": facts["normalization"]}


def training_summary(history: History, test: dict[str, Any], data: Dataset, device: torch.device,
                     facts: dict[str, Any]) -> dict[str, Any]:
    """The summary.json fields of every trained run: how training ended, test metrics, provenance, hardware."""
    summary = {"epochs_run": len(history.epochs), "best_epoch": history.best_epoch,
               "best_val_loss": history.best_val_loss, "stopped_by": str(history.stopped_by),
               "train_seconds": round(history.train_seconds, 3),
               "test_loss": test["loss"], "test_accuracy": test["accuracy"], "test_precision": test["precision"],
               "test_recall": test["recall"], "test_f1": test["f1"], "data_official": data.official,
               "data_provenance": data.provenance, "device": str(device), "hardware": facts["hardware"],
               "num_parameters": facts["num_parameters"], "world_size": facts["world_size"],
               "cuda_graph": history.cuda_graph, "test_per_class_precision": test["per_class_precision"],
               "test_per_class_recall": test["per_class_recall"], "test_confusion_matrix": test["confusion_matrix"]}
    if history.nan_at:
        summary["nan_at"] = history.nan_at
    return summary


def read_last(run_dir: Path) -> dict[str, Any]:
    """A run folder's last.pth, checked to hold everything a resume needs (a training run's or a fine-tuning's)."""
    state = read_checkpoint(run_dir / "last.pth", MODEL_FIELDS + ("epoch",))
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise ReslabError(f"cannot resume: {run_dir / 'last.pth'} holds no training state "
                          f"({', '.join(missing)} missing); is it a copy of best_model.pth?")
    if not isinstance(state.get("config"), dict):
        raise ReslabError(f"cannot resume: {run_dir / 'last.pth'} holds no settings (config); it was changed by hand")
    return state


def read_resume_state(run_dir: Path) -> dict[str, Any]:
    """A training run's last.pth (read_last), checked to be this folder's run, and its best checkpoint."""
    state = read_last(run_dir)
    check_same_run(run_dir, state["config"])
    recover_best(run_dir, state["best_epoch"])   # its best checkpoint is checked before anything is written
    return state


def check_same_run(run_dir: Path, saved: dict[str, Any]) -> None:
    """A last.pth whose settings are not those config.yaml recorded is another run's (copied in): refused; so is a
    transfer run's folder."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    recorded = load_yaml(path)
    if "method" in recorded:   # written by transfer.finetune, which trains in its own way (new head, phases)
        raise ReslabError(f"cannot resume: {run_dir} is a transfer run ({recorded['method']}); run its experiment "
                          "again (`reslab run NAME`, same --out), which continues it")
    # Compared as written: config.yaml holds lists where the checkpoint may hold tuples.
    differ = [key for key in RESULT_KEYS if key in recorded and key in saved and recorded[key] != finite(saved[key])]
    if differ:
        raise ReslabError(f"cannot resume: {run_dir / 'last.pth'} is another run's, not this folder's ("
                          + ", ".join(f"{key}={saved[key]!r} there, {recorded[key]!r} in config.yaml" for key in differ)
                          + "); put back the folder's own last.pth, or start the run again with --overwrite")


def check_data_dir(config: TrainConfig, run_dir: Path) -> None:
    """The data folder of a run to resume must still be where it was, or be named anew."""
    if config.data_dir is not None and not Path(config.data_dir).expanduser().is_dir():
        raise ReslabError(f"cannot resume: the run's data folder {config.data_dir} does not exist; if the data moved, "
                          f"name its new place: reslab resume {run_dir} --data-dir NEW_FOLDER")


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that ended on its own (not interrupted), or None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = read_json(path)
    return summary if summary.get("stopped_by") != StopReason.INTERRUPTED else None


def is_finished(run_dir: Path) -> bool:
    """Whether a run folder holds a result that was not cut short: its settings and an uninterrupted summary."""
    return (run_dir / "config.yaml").is_file() and finished_summary(run_dir) is not None


def has_result(run_dir: Path) -> bool:
    """is_finished, with a damaged summary counted as no result instead of an error: for callers looking at runs
    other than their own (the command that trains a damaged run again says what is wrong with it)."""
    try:
        return is_finished(run_dir)
    except ReslabError:
        return False


def run_training(config: TrainConfig, resume: bool = False, overwrite: bool = False,
                 tracker: Tracker | None = None, console: bool = True) -> dict[str, Any]:
    """Train and test one model as `config` says, writing the run folder; return the summary.

    Everything a user can get wrong (data, model arguments, the run folder) is checked before the run folder is
    written. One process writes a run folder at a time (a lock). A finished run is left alone by `resume`.
    Under torchrun, every rank trains and rank 0 alone writes files and talks to W&B.
    """
    run_dir = config.run_dir
    main_process = is_main_process()   # torchrun's rank 0, or a plain process
    lock = FolderLock(run_dir)
    try:
        if main_process:
            lock.check_free()   # a second writer hears first which process writes there
            check_run_dir(run_dir, resume, overwrite)
            if run_dir.is_dir():   # an existing folder is locked before its files are read
                lock.acquire()
        resume_state = None
        if resume:
            finished = finished_summary(run_dir)
            if finished is not None:
                print(f"{run_dir} is a finished run (stopped by {finished['stopped_by']} after "
                      f"{finished['epochs_run']} epochs); nothing to resume", flush=True)
                return finished
            resume_state = read_resume_state(run_dir)
            # The folder and the data may have moved since: where they are now is what counts.
            saved = resume_state["config"]
            config = TrainConfig.from_dict({**LEGACY_VALUES, **saved, "out": str(run_dir.parent), "name": run_dir.name,
                                            "data_dir": config.data_dir or saved.get("data_dir")},
                                           f"{run_dir / 'last.pth'}")
            check_data_dir(config, run_dir)
        return _train_and_test(config, run_dir, lock, resume_state, overwrite, tracker, console, main_process)
    finally:
        lock.release()


def _train_and_test(config: TrainConfig, run_dir: Path, lock: FolderLock, resume_state: dict[str, Any] | None,
                    overwrite: bool, tracker: Tracker | None, console: bool, main_process: bool) -> dict[str, Any]:
    """run_training once the folder is checked: build everything, then write, train, test and summarize."""
    check_model(config.model, config.model_args)   # a mistyped model is named before any data is read or fetched
    seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)
    if device.type == "cpu":
        # The thread count changes a CPU run's floating-point sums: it is recorded, and a resume uses it again.
        config = config.replace(threads=set_threads(config.threads))
    dist_ctx = from_environment(device)
    if dist_ctx is not None:
        device = dist_ctx.device
    data = load_dataset(config.dataset, config.data_dir)
    model = build_model(config.model, data.input_shape, data.num_classes, **config.model_args)
    if resume_state is not None:
        _check_fits(model, data, resume_state, run_dir)
    channels_last = to_channels_last(model)
    loaders = make_loaders(data, config, device, channels_last=channels_last,
                           **({"rank": dist_ctx.rank, "world_size": dist_ctx.world_size} if dist_ctx else {}))
    facts = run_facts(data, loaders, model, device, dist_ctx.world_size if dist_ctx else 1)
    full_config = {**config.to_dict(), **facts}
    meta = checkpoint_meta(data, facts)
    if not main_process:
        return _train_other_rank(model, loaders, config, resume_state, dist_ctx)
    print(f"data: {data.name} from {data.layout}: {data.provenance}", flush=True)
    wandb = wandb_tracker(config, run_dir, run_id=resume_state.get("wandb_id") if resume_state else None)
    ok = False
    try:
        with RunFolder(run_dir, full_config, wandb=wandb, console_epochs=config.epochs if console else None,
                       tracker=tracker, history=resume_state["history"] if resume_state else None,
                       resume=resume_state is not None, overwrite=overwrite, lock=lock) as folder:
            meta["wandb_id"] = folder.wandb_id
            history = train_model(model, loaders.train, loaders.val, config, tracker=folder.trackers, run_dir=run_dir,
                                  checkpoint_meta=meta, resume=resume_state, device=device, distributed=dist_ctx)
            test = evaluate(model, loaders.test, data.num_classes, config.amp)
            args = (model_spec(model) or {"args": config.model_args})["args"]
            summary = {"model": config.model, "model_args": args, "dataset": data.name,
                       "seed": config.seed, **training_summary(history, test, data, device, facts)}
            folder.finish(summary)
            ok = True
    finally:
        if dist_ctx is not None:
            dist_ctx.close(wait=ok)
    if console:
        print_summary(summary, run_dir, config)
    return summary


def _train_other_rank(model: torch.nn.Module, loaders: Loaders, config: TrainConfig,
                      resume_state: dict[str, Any] | None, dist_ctx: Context | None) -> dict[str, Any]:
    """A torchrun rank other than 0: train in step with rank 0, write nothing."""
    ok = False
    try:
        history = train_model(model, loaders.train, loaders.val, config, resume=resume_state,
                              device=loaders.train.device, distributed=dist_ctx)
        ok = True
    finally:
        if dist_ctx is not None:
            dist_ctx.close(wait=ok)
    print(f"rank {dist_ctx.rank if dist_ctx else 0}: stopped by {history.stopped_by} after {len(history.epochs)} "
          "epochs", flush=True)
    return {"stopped_by": str(history.stopped_by), "epochs_run": len(history.epochs)}


def _check_fits(model: torch.nn.Module, data: Dataset, resume_state: dict[str, Any], run_dir: Path) -> None:
    """A last.pth for other images or classes than the data's, or weights (of last.pth or best_model.pth) that do
    not fit the model it names, are refused before anything is written."""
    last = run_dir / "last.pth"
    shape, classes = tuple(resume_state["input_shape"]), resume_state["num_classes"]
    if (shape, classes) != (data.input_shape, data.num_classes):
        raise ReslabError(f"cannot resume: {last} is for {'x'.join(map(str, shape))} images in {classes} classes, "
                          f"but {data.name} has {'x'.join(map(str, data.input_shape))} images in {data.num_classes}; "
                          "it was changed by hand")
    try:
        load_weights(model, resume_state["state_dict"], last)
        if resume_state["best_epoch"] > 0:
            load_weights(model, read_checkpoint(run_dir / "best_model.pth")["state_dict"], run_dir / "best_model.pth")
    except ReslabError as exc:
        raise ReslabError(f"cannot resume: {exc}") from None


def print_summary(summary: dict[str, Any], run_dir: Path, config: TrainConfig, go_on: str | None = None) -> None:
    """The closing lines of a run on the console; `go_on` says how to continue it if interrupted (default: reslab
    resume)."""
    if summary["stopped_by"] == StopReason.NAN:
        kept = ("the best weights so far were kept" if summary["best_epoch"] > 0
                else "no epoch finished, so the test used the initial weights")
        print(f"stopped: the training loss became NaN or infinite at {summary['nan_at']}; the learning rate "
              f"(lr={config.lr}) is the likely cause; {kept}", flush=True)
    elif summary["stopped_by"] == StopReason.INTERRUPTED:
        tested = "" if summary["best_epoch"] > 0 else " (no epoch had improved, so the test used the initial weights)"
        print(f"stopped: interrupted; {go_on or f'continue with: reslab resume {run_dir}'}{tested}", flush=True)
    print(f"test loss {summary['test_loss']:.4f}  accuracy {100 * summary['test_accuracy']:.2f}%  "
          f"precision {100 * summary['test_precision']:.2f}%  ({summary['epochs_run']} epochs, best "
          f"{summary['best_epoch']}, stopped by {summary['stopped_by']}, {summary['train_seconds']:.1f}s)", flush=True)
    print(f"run folder: {run_dir}", flush=True)


def evaluate_checkpoint(path: str | Path, dataset: str | None = None, data_dir: str | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """Test a saved model on a dataset's test split (its own dataset by default) with its own normalization."""
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(path, needs=MODEL_FIELDS + ("dataset", "normalization"))
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
