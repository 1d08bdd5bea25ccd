"""Transfer a trained network to another dataset: probes on its frozen features, and fine-tuning with a new head."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, load_weights, recover_best
from .config import PROBES, TrainConfig, TransferSettings, settings_where
from .datasets import Dataset, load_dataset
from .device import hardware_name, resolve_device, seed_everything, set_threads, to_channels_last
from .early_stopping import StopReason
from .errors import ReslabError
from .evaluate import classification_metrics, evaluate
from .loader import TensorLoader, make_loaders, split_indices
from .run import checkpoint_meta, print_summary, read_last, run_facts, training_summary
from .runfolder import RunFolder, read_json
from .tracking import Tracker, wandb_tracker
from .train import History, train_model


def load_target(config: TrainConfig) -> Dataset:
    """The target dataset (downloaded when missing; a DataError when that fails)."""
    return load_dataset(config.dataset, config.data_dir)


def classifier_name(model: nn.Module) -> str:
    """The name of the model's classifier: its last nn.Linear."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ReslabError(f"{type(model).__name__} has no nn.Linear classifier to replace or probe below")
    return names[-1]


def freeze(model: nn.Module) -> nn.Module:
    """Stop gradients to every parameter and switch to eval mode (BatchNorm statistics and dropout fixed)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@torch.inference_mode()
def extract_features(model: nn.Module, loader: TensorLoader) -> tuple[np.ndarray, np.ndarray]:
    """Features of every image: the output of the layer feeding the classifier, caught by a forward hook."""
    classifier = model.get_submodule(classifier_name(model))
    batches: list[torch.Tensor] = []
    # The classifier's input is exactly what the layer before it outputs, whatever that layer is called.
    # Batches stay on the device until the end: one copy to the host, not one per batch.
    handle = classifier.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].float()))
    labels = []
    model.eval()
    try:
        for x, y in loader:
            model(x)
            labels.append(y)
    finally:
        handle.remove()
    return torch.cat(batches).cpu().numpy(), torch.cat(labels).cpu().numpy()


def make_probes(settings: TransferSettings) -> dict[str, Any]:
    """The scikit-learn classifiers fitted on frozen features, each after standardizing them."""
    # Imported here: scikit-learn (and scipy) add about a second to the start of every `reslab` process.
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # LinearSVC alone solves its one-vs-rest problems one after another on one core (about 4 minutes for 100
    # classes on 45,000 features of 256 here); the same binary problems, fitted on every core, give the same
    # classifier (the same coefficients to rounding: tests/test_transfer.py) in a fraction of that.
    svm = OneVsRestClassifier(LinearSVC(C=settings.svm_c), n_jobs=-1)
    return {"svm": make_pipeline(StandardScaler(), svm),
            "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=settings.knn_k)),
            "logreg": make_pipeline(StandardScaler(), LogisticRegression(C=settings.logreg_c, max_iter=1000))}


def with_new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A trainable copy of `model` whose classifier is a freshly initialized nn.Linear for `num_classes`."""
    model = copy.deepcopy(model)
    name = classifier_name(model)
    old = model.get_submodule(name)
    assert isinstance(old, nn.Linear)   # classifier_name found it as one
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def check_input_shape(checkpoint: dict[str, Any], path: Path, data: Dataset) -> None:
    """A network only transfers to images of the shape it was trained on."""
    shape = tuple(checkpoint["input_shape"])
    if shape != data.input_shape:
        raise ReslabError(f"{path} takes {'x'.join(map(str, shape))} inputs ({checkpoint['dataset']}) but "
                          f"{data.name} images are {'x'.join(map(str, data.input_shape))}; choose a target of the "
                          "same input shape")


def run_settings(method: str, config: TrainConfig, settings: TransferSettings, checkpoint: Path) -> dict[str, Any]:
    """The settings that decide one transfer run's result, as saved in its config.yaml."""
    # A probe's result depends on the data split alone; fine-tuning's on how the network is trained too.
    kinds = ("data", "training") if method in ("finetune", "staged") else ("data",)
    values = {k: getattr(config, k) for k in settings_where(result=kinds)}
    extra = {"svm": ("svm_c", "probe_max_train"), "knn": ("knn_k", "probe_max_train"),
             "logreg": ("logreg_c", "probe_max_train"), "finetune": (), "staged": ("head_epochs",)}[method]
    return {**values, **{k: getattr(settings, k) for k in extra}, "method": method,
            "source_checkpoint": str(checkpoint)}


def run_transfer(checkpoint_path: Path, data: Dataset, config: TrainConfig, settings: TransferSettings,
                 folder: Path, methods: list[str], resume: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Transfer one source checkpoint to `data` by each method; write <folder>/<method>-seed<k>/; return summaries.
    The fine-tunings named in `resume` continue from their run folder's last.pth."""
    network, ckpt = load_checkpoint(checkpoint_path)
    check_input_shape(ckpt, Path(checkpoint_path), data)
    config = config.replace(model=ckpt["model"], model_args=dict(ckpt["model_args"]))
    source_summary = Path(checkpoint_path).parent / "summary.json"
    # Kept with every result, so a report needs no file outside the transfer's own run folders.
    source = {"source_dataset": ckpt["dataset"], "source_checkpoint": str(checkpoint_path),
              "source_test_accuracy": read_json(source_summary)["test_accuracy"]
              if source_summary.is_file() else None}
    summaries = {}
    probes = [m for m in methods if m in PROBES]
    if probes:
        summaries.update(probe_runs(freeze(network), ckpt, source, data, config, settings, folder, probes))
    for method in ("finetune", "staged"):
        if method in methods:
            summaries[method] = finetune(network, ckpt, source, data, config, settings, folder, method,
                                         resume=method in resume)
    return summaries


def probe_runs(model: nn.Module, ckpt: dict[str, Any], source: dict[str, Any], data: Dataset, config: TrainConfig,
               settings: TransferSettings, folder: Path, methods: list[str]) -> dict[str, dict[str, Any]]:
    """Fit each probe on frozen features of the training split and test it; one run folder per probe."""
    device = resolve_device(config.device)
    set_threads(config.threads)
    channels_last = to_channels_last(model)   # 1.6x faster feature extraction on 2 CPU cores
    model.to(device)
    train_idx = training_indices(data, config, settings.probe_max_train)
    # The frozen network sees its inputs normalized as in its own training.
    norm = ckpt["normalization"]
    start = time.perf_counter()
    loaders = [TensorLoader(images, labels, config.eval_batch_size, norm["mean"], norm["std"], device,
                            channels_last=channels_last)
               for images, labels in ((data.train_images[train_idx], data.train_labels[train_idx]),
                                      (data.test_images, data.test_labels))]
    (train_x, train_y), (test_x, test_y) = (extract_features(model, loader) for loader in loaders)
    extract_seconds = time.perf_counter() - start
    print(f"features: {train_x.shape[1]} per image, {len(train_y)} train + {len(test_y)} test images, "
          f"{extract_seconds:.1f}s", flush=True)
    summaries = {}
    for method in methods:
        run_dir = folder / f"{method}-seed{config.seed}"
        settings_used = run_settings(method, config, settings, Path(source["source_checkpoint"]))
        # A one-point W&B run, so the group's charts show the probes too.
        wandb = wandb_tracker(config, run_dir, name=run_dir.name, job_type=method)
        with RunFolder(run_dir, settings_used, wandb=wandb, overwrite=True) as run:
            probe = make_probes(settings)[method]
            start = time.perf_counter()
            probe.fit(train_x, train_y)
            predictions = probe.predict(test_x)
            seconds = time.perf_counter() - start
            metrics = classification_metrics(test_y, predictions, data.num_classes)
            summary = {"method": method, "model": ckpt["model"], "model_args": ckpt["model_args"],
                       "dataset": data.name, **source, "seed": config.seed, "test_accuracy": metrics["accuracy"],
                       "test_precision": metrics["precision"], "test_recall": metrics["recall"],
                       "test_f1": metrics["f1"], "num_features": int(train_x.shape[1]),
                       "num_train": len(train_y), "num_test": len(test_y), "train_seconds": round(seconds, 3),
                       "extract_seconds": round(extract_seconds, 3), "data_official": data.official,
                       "data_provenance": data.provenance, "device": str(device), "hardware": hardware_name(device),
                       "num_parameters": sum(p.numel() for p in model.parameters()),
                       "test_confusion_matrix": metrics["confusion_matrix"]}
            run.finish(summary)
        print(f"{method}: test accuracy {100 * metrics['accuracy']:.2f}%  ({seconds:.1f}s)", flush=True)
        summaries[method] = summary
    return summaries


def training_indices(data: Dataset, config: TrainConfig, limit: int | None = None) -> np.ndarray:
    """The training part of the run's stratified split (the images fine-tuning trains on), at most `limit`."""
    return split_indices(data, config if limit is None else config.replace(
        train_subset=min(limit, config.train_subset or limit)))[0]


def _phase_record(record: dict[str, Any], offset: int, phase: str) -> dict[str, Any]:
    """A phase's epoch record as metrics.jsonl holds it: numbered after the earlier phases' epochs, phase named."""
    return {**record, "epoch": record["epoch"] + offset, "phase": phase}


class _PhaseTracker(Tracker):
    """Numbers a phase's epochs after the previous phase's and marks each record with its phase."""

    def __init__(self, tracker: Tracker, offset: int, phase: str):
        self.tracker, self.offset, self.phase = tracker, offset, phase

    def log_epoch(self, record):
        self.tracker.log_epoch(_phase_record(record, self.offset, self.phase))


def _plain_history(history: History) -> dict[str, Any]:
    """A finished phase's History as plain values, for the checkpoints of the phases after it."""
    return {**vars(history), "stopped_by": str(history.stopped_by)}


def _phase_history(values: Any) -> History:
    """A finished phase's History from the plain values _plain_history wrote (ValueError if they are not those)."""
    if not isinstance(values, dict) or not _records(values.get("epochs")):
        raise ValueError("not a phase's history")
    return History(**{**values, "stopped_by": StopReason(values.get("stopped_by"))})


def _records(value: Any) -> bool:
    """Whether a value is a list of epoch records (dicts numbered by `epoch`)."""
    return isinstance(value, list) and all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in value)


def read_finetune_state(run_dir: Path, model: nn.Module, phases: int) -> dict[str, Any]:
    """The last.pth of an unfinished fine-tuning (read_last), checked to fit `model` and to name fewer finished
    phases than the fine-tuning has; its best checkpoint recovered."""
    path = run_dir / "last.pth"
    state = read_last(run_dir)
    load_weights(model, state["state_dict"], path)
    try:
        done = [_phase_history(h) for h in state.get("phases_done", [])]
    except (TypeError, ValueError):
        done = None
    if done is None or len(done) >= phases or not _records(state["history"]):
        raise ReslabError(f"{path}: its epoch records (history, phases_done) are damaged; run the experiment "
                          "again with --overwrite")
    recover_best(run_dir, state["best_epoch"])   # checked before anything is written
    return {**state, "phases_done": done}


def finetune(network: nn.Module, ckpt: dict[str, Any], source: dict[str, Any], data: Dataset, config: TrainConfig,
             settings: TransferSettings, folder: Path, method: str = "finetune",
             resume: bool = False) -> dict[str, Any]:
    """Train the source network with a fresh head on the target; `staged` trains the head alone first. `resume`
    continues the unfinished fine-tuning in the run folder from its last.pth (phase and epoch)."""
    run_dir = folder / f"{method}-seed{config.seed}"
    config = config.replace(name=run_dir.name, out=str(folder), wandb_job_type=method)
    seed_everything(config.seed, config.deterministic)
    device = resolve_device(config.device)
    if device.type == "cpu":
        config = config.replace(threads=set_threads(config.threads))
    # Staged and full fine-tuning get the same epoch budget; the last epoch at least trains everything.
    head_epochs = min(settings.head_epochs, config.epochs - 1) if method == "staged" else 0
    phases = ([("head", head_epochs)] if head_epochs else []) + [("all", config.epochs - head_epochs)]
    model = with_new_head(network, data.num_classes)
    state = read_finetune_state(run_dir, model, len(phases)) if resume else None
    channels_last = to_channels_last(model)
    loaders = make_loaders(data, config, device, channels_last=channels_last)
    facts = run_facts(data, loaders, model, device)
    settings_used = run_settings(method, config, settings, Path(source["source_checkpoint"]))
    meta = checkpoint_meta(data, facts)
    # Phases finished before an interruption are taken from last.pth; training goes on in the phase it names.
    histories: list[History] = state["phases_done"] if state else []
    logged: list[dict[str, Any]] = []   # metrics.jsonl so far: every phase's records, numbered on
    for (phase, _), records in zip(phases, [h.epochs for h in histories] + ([state["history"]] if state else [])):
        logged += [_phase_record(r, len(logged), phase) for r in records]
    wandb = wandb_tracker(config, run_dir, run_id=state.get("wandb_id") if state else None)
    with RunFolder(run_dir, {**config.to_dict(), **facts, **settings_used}, wandb=wandb, console_epochs=config.epochs,
                   history=logged, resume=state is not None, overwrite=state is None) as run:
        meta["wandb_id"] = run.wandb_id
        for phase, epochs in phases[len(histories):]:
            head = model.get_submodule(classifier_name(model))
            for p in model.parameters():
                p.requires_grad_(phase == "all")
            for p in head.parameters():
                p.requires_grad_(True)
            offset = sum(len(h.epochs) for h in histories)
            phase_meta = {**meta, "phases_done": [_plain_history(h) for h in histories]}
            histories.append(train_model(model, loaders.train, loaders.val, config.replace(epochs=epochs),
                                         tracker=_PhaseTracker(run.trackers, offset, phase), run_dir=run_dir,
                                         checkpoint_meta=phase_meta, device=device, resume=state))
            state = None   # only the phase last.pth names is resumed
            if histories[-1].stopped_by in (StopReason.INTERRUPTED, StopReason.NAN):
                break
        test = evaluate(model, loaders.test, data.num_classes, config.amp)
        summary = {"method": method, "model": ckpt["model"], "model_args": ckpt["model_args"], "dataset": data.name,
                   **source, "seed": config.seed, "head_epochs": len(histories[0].epochs) if head_epochs else 0,
                   **training_summary(_joined(histories), test, data, device, facts)}
        run.finish(summary)
    print_summary(summary, run_dir, config, go_on="running its experiment again (same --out) continues it")
    return summary


def _joined(histories: list[History]) -> History:
    """The phases of a staged fine-tuning as one history: epochs numbered on, the last phase's ending."""
    last = histories[-1]
    return History(epochs=[r for h in histories for r in h.epochs], stopped_by=last.stopped_by,
                   best_epoch=sum(len(h.epochs) for h in histories[:-1]) + last.best_epoch,
                   best_val_loss=last.best_val_loss, train_seconds=sum(h.train_seconds for h in histories),
                   nan_at=last.nan_at)
