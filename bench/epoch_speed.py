#!/usr/bin/env python3
"""Seconds per training epoch: reslab's train_model (a) against the bare step loop (b) and the usual DataLoader (c).

One run times, on the same model, batch size, data and epochs:

(a) reslab  ``reslab.train.train_model`` on ``reslab.loader.make_loaders`` (TensorLoader: uint8 data on the device,
            normalized and, for CIFAR, cropped and flipped per batch), train + validation every epoch, with the
            console and metrics.jsonl trackers and best_model.pth / last.pth checkpoints in a temporary run folder,
            as ``reslab train`` would run it (console lines are captured, not shown; stderr is not a terminal,
            so no progress bar).
(b) bare    the limit: forward/backward/step over contiguous slices of pre-made, pre-shuffled, normalized
            float tensors already on the device, no augmentation, no per-epoch reshuffle, no bookkeeping; then a
            bare validation pass (inference_mode, eval batch size) that sums loss and correct predictions on the
            device and reads them once. Validation is included because (a) validates every epoch.
(c) loader  the usual hand-written pipeline: a map-style Dataset fed through torch.utils.data.DataLoader
            (shuffle, num_workers as given, pin_memory on CUDA), the training loop reading ``loss.item()`` and the
            correct count every batch, a DataLoader validation pass under no_grad. Two per-sample styles:
            "tensor": __getitem__ converts one uint8 image to float and normalizes it with tensor ops (for CIFAR:
            pad 4, random crop, random flip first), written by hand; "pil": what torchvision's MNIST/CIFAR10
            datasets with RandomCrop/RandomHorizontalFlip/ToTensor/Normalize do (a PIL image per sample),
            reimplemented because torchvision is not installed.

All three step with the optimizer train_model builds (reslab.train.make_optimizer: the fused Adam; the
GPU figures of 2026-11-27 in bench/RESULTS.md predate this, when (b) and (c) used the default foreach Adam).
On CUDA all three use bf16 autocast and, for the CNN, channels_last model and inputs, as train_model does, and
cudnn.benchmark is on. On the CPU, (a) and (b) use channels_last for the CNN too, as reslab.run.run_training
decides (any Conv2d: channels_last model and loaders, on every device); (c) stays NCHW there, as usual code does.

One warm-up epoch per pipeline is not timed. Then each repeat times ``--epochs`` epochs of every pipeline, the
pipelines taking turns (the order rotates every repeat) so that load from other processes falls on all of them
alike. Seconds per epoch are the MEDIAN over repeats, with the min and max shown; ratios are the median of the
per-repeat ratios (neighbouring measurements) with their min..max, and the ratio of the min times (the least
disturbed repeats). On the CPU the CIFAR model is sized to finish: 5000 training images (--train-subset) and
width 16 (--cnn-width); validation keeps reslab's 10% of the training set (5000 images).

Images/s counts training images per second of a whole epoch (train + validation). Peak memory is what the
pipeline adds while it is built and runs its warm-up epoch: on the CPU the process's peak resident memory
(Linux VmHWM, reset before each pipeline through /proc/self/clear_refs; elsewhere ru_maxrss, which only shows
growth past the earlier peak) above the resident memory before it; on CUDA torch.cuda.max_memory_allocated above
the allocated memory before it. DataLoader workers are separate processes; their memory is not included.
Every pipeline is first run once on 640 images so that one-time costs (lazy imports, thread pools) fall on none.
(a)'s figure includes make_loaders' normalization statistics (float64 copies of the training images).

Targets (issue 8, 2 CPU cores): MNIST MLP a/b <= 1.15 and c/a >= 8 (num_workers=0); CIFAR-10 residual CNN
a/b <= 1.05.

On a machine shared with other busy processes, compare with --threads 1: with OpenMP's default active waiting,
2 torch threads on 2 cores ran up to ~75x slower whenever one other busy process competed for the cores (MNIST MLP
step: 0.7 ms at 2 threads on a quiet machine, 1.0 ms at 1 thread, 5-75 ms at 2 threads beside a busy process).
OMP_WAIT_POLICY=PASSIVE keeps 2 threads stable there (1.3 ms) but costs on a quiet machine (1.25-2.0 ms instead
of 0.7), so its figures are not the default ones; the header line says which policy was in effect.

Run from the repository root:
    python bench/epoch_speed.py                      # CPU: all three models, about 3 minutes on 2 cores
    python bench/epoch_speed.py --device cuda        # GPU: full data and the default rescnn, under a minute
    python bench/epoch_speed.py --smoke              # seconds, generated tiny data (the test runs this)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reslab.config import TrainConfig  # noqa: E402
from reslab.datasets import load_dataset  # noqa: E402
from reslab.device import autocast_for, hardware_name, to_channels_last  # noqa: E402
from reslab.loader import channel_stats, make_loaders, split_indices, uses_augmentation  # noqa: E402
from reslab.models import build_model  # noqa: E402
from reslab.runfolder import JsonlTracker  # noqa: E402
from reslab.tracking import ConsoleTracker, Trackers  # noqa: E402
from reslab.train import make_optimizer, train_model  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
SEED = 0
CPU_CIFAR_SUBSET = 5000      # training images of the CIFAR model on the CPU unless --train-subset says otherwise
CPU_CNN_WIDTH = 16           # rescnn width on the CPU (reslab's default, 64, is ~30 images/s on 2 cores)


@dataclass
class Bench:
    """One model of the benchmark: which reslab model, on which dataset, with which arguments."""

    key: str
    title: str
    dataset: str
    model: str
    model_args: dict = field(default_factory=dict)
    train_subset: int | None = None


def benches(args: argparse.Namespace, device: torch.device) -> list[Bench]:
    """The models named by --models, sized for the device."""
    on_cpu = device.type == "cpu"
    width = args.cnn_width or (CPU_CNN_WIDTH if on_cpu else 64)
    cnn_args = {"depth": args.cnn_depth, "width": width}
    cifar_subset = args.train_subset if args.train_subset is not None else (CPU_CIFAR_SUBSET if on_cpu else None)
    table = {
        "mlp": Bench("mlp", "MNIST MLP 784-128-64-10", "mnist", "mlp", {}, args.train_subset),
        "resmlp": Bench("resmlp", "MNIST residual MLP (width 110, 2 blocks)", "mnist", "resmlp", {},
                        args.train_subset),
        "rescnn": Bench("rescnn", f"CIFAR-10 residual CNN (depth {cnn_args['depth']}, width {width})", "cifar10",
                        "rescnn", cnn_args, cifar_subset),
    }
    unknown = [m for m in args.models if m not in table]
    if unknown:
        raise SystemExit(f"epoch_speed: unknown model {', '.join(unknown)}; choose from {', '.join(table)}")
    return [table[m] for m in args.models]


# ---------------------------------------------------------------- memory

def _proc_status_kib(name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _ru_maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak   # bytes on macOS, KiB on Linux


def _release_free_heap() -> None:
    """glibc malloc_trim: hand freed heap pages back, so the next pipeline's allocations show up in RSS."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory a block of code adds: host resident memory on the CPU, allocated GPU memory on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self.how = ""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        _release_free_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.how = "GPU max_memory_allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                              # resets VmHWM (peak RSS) to the current RSS
            self.base = _proc_status_kib("VmRSS")
            self.how = "peak RSS (VmHWM)"
        except OSError:
            self.base = None
        if self.base is None:
            self.base = _ru_maxrss_kib()
            self.how = "ru_maxrss growth"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        elif self.how.startswith("peak RSS"):
            self.mib = ((_proc_status_kib("VmHWM") or self.base) - self.base) / 1024
        else:
            self.mib = (_ru_maxrss_kib() - self.base) / 1024


# ---------------------------------------------------------------- the data every pipeline shares

@dataclass
class Split:
    """The raw uint8 arrays and the train/val indices and normalization that reslab's make_loaders uses."""

    images: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    mean: list[float]
    std: list[float]
    augment: bool


def split_like_reslab(data, config: TrainConfig) -> Split:
    """The same indices and statistics as reslab.loader.make_loaders (checked against it in the (a) build)."""
    train_idx, val_idx = split_indices(data, config)
    mean, std = channel_stats(data.train_images[train_idx])
    return Split(data.train_images, data.train_labels, train_idx, val_idx, mean, std, uses_augmentation(data, config))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _new_model(bench: Bench, split: Split, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(SEED)                               # the same initial weights in every pipeline
    model = build_model(bench.model, split.images.shape[1:], 10, **bench.model_args).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ---------------------------------------------------------------- (a) reslab

class ReslabPipeline:
    """(a) train_model on make_loaders' TensorLoaders, trackers and checkpoints on, as `reslab train` runs it."""

    name = "(a) reslab train_model"
    key = "a"

    def __init__(self, bench: Bench, data, config: TrainConfig, split: Split, device: torch.device, tmp: Path):
        self.config, self.device = config, device
        self.model = _new_model(bench, split, device, channels_last=False)
        # As reslab.run.run_training: channels_last model and loaders for any model with a Conv2d, on every device.
        channels_last = to_channels_last(self.model)
        self.loaders = make_loaders(data, config, device, channels_last=channels_last)
        if (self.loaders.mean, self.loaders.std, self.loaders.augment) != (split.mean, split.std, split.augment):
            raise RuntimeError("the bench's split differs from reslab.loader.make_loaders; update split_like_reslab")
        self.run_dir = tmp
        self.console = io.StringIO()
        with contextlib.redirect_stdout(self.console):
            self.trackers = Trackers(ConsoleTracker(config.epochs), JsonlTracker(self.run_dir / "metrics.jsonl"))
        self.meta = {"dataset": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                     "classes": data.classes, "normalization": {"mean": self.loaders.mean,
                                                                "std": self.loaders.std}, "wandb_id": None}
        self.train_images = self.loaders.train.num_samples

    def run(self, epochs: int) -> None:
        # stdout: the console tracker's lines; stderr: not a terminal, so train_model shows no tqdm bar.
        with contextlib.redirect_stdout(self.console), contextlib.redirect_stderr(self.console):
            history = train_model(self.model, self.loaders.train, self.loaders.val, self.config.replace(epochs=epochs),
                                  tracker=self.trackers, run_dir=self.run_dir, checkpoint_meta=self.meta)
        if len(history.epochs) != epochs:
            raise RuntimeError(f"train_model stopped after {len(history.epochs)} of {epochs} epochs "
                               f"({history.stopped_by})")
        _sync(self.device)


# ---------------------------------------------------------------- (b) the limit

class BarePipeline:
    """(b) forward/backward/step over pre-made normalized tensors on the device, then a bare validation pass."""

    name = "(b) bare loop, train + val"
    key = "b"

    def __init__(self, bench: Bench, split: Split, config: TrainConfig, device: torch.device, channels_last: bool):
        self.device, self.amp = device, config.amp
        self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
        g = torch.Generator().manual_seed(SEED)
        order = torch.from_numpy(split.train_idx)[torch.randperm(len(split.train_idx), generator=g)].numpy()
        self.x, self.y = self._tensors(split, order, channels_last)
        self.x_val, self.y_val = self._tensors(split, split.val_idx, channels_last)
        self.model = _new_model(bench, split, device, channels_last)
        self.optimizer = make_optimizer(self.model, config, device)   # as train_model builds it
        self.criterion = nn.CrossEntropyLoss()
        self.train_images = len(self.y)

    def _tensors(self, split: Split, idx: np.ndarray, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(split.mean, device=self.device).view(shape)
        std = torch.tensor(split.std, device=self.device).view(shape)
        x = torch.from_numpy(split.images[idx]).to(self.device).float().div_(255).sub_(mean).div_(std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.from_numpy(split.labels[idx]).to(self.device)

    def run(self, epochs: int) -> None:
        model, optimizer, criterion = self.model, self.optimizer, self.criterion
        for _ in range(epochs):
            model.train()
            for start in range(0, len(self.y), self.batch_size):
                x, y = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
                with autocast_for(self.device, self.amp):
                    loss = criterion(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            self._validate()
        _sync(self.device)

    @torch.inference_mode()
    def _validate(self) -> tuple[float, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for start in range(0, len(self.y_val), self.eval_batch_size):
            x, y = self.x_val[start:start + self.eval_batch_size], self.y_val[start:start + self.eval_batch_size]
            with autocast_for(self.device, self.amp):
                logits = self.model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return loss_sum.item() / len(self.y_val), correct.item() / len(self.y_val)


# ---------------------------------------------------------------- (c) the usual pipeline

class PerSampleDataset(torch.utils.data.Dataset):
    """A map-style dataset: one uint8 image -> (pad 4, random crop, random flip) -> float -> normalized."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, mean: list[float],
                 std: list[float], augment: bool):
        with warnings.catch_warnings():   # the arrays may be read-only views of the files' bytes; never written
            warnings.simplefilter("ignore", UserWarning)
            self.images = torch.from_numpy(images)     # (N, C, H, W) uint8, as torchvision's MNIST holds it
        self.labels, self.indices = labels, indices
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        image = self.images[j]                           # (C, H, W) uint8, a view
        if self.augment:
            image = random_crop_flip_one(image)
        x = image.float().div_(255).sub_(self.mean).div_(self.std)
        return x, int(self.labels[j])


class TorchvisionStyleDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST/CIFAR10 datasets with RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor +
    Normalize do per sample, reimplemented (torchvision is not installed): a PIL image per sample, PIL crop and
    flip, ToTensor's PIL -> uint8 tensor -> float/255, Normalize's clone + sub_ + div_."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, mean: list[float],
                 std: list[float], augment: bool):
        # torchvision keeps MNIST as (N, H, W) uint8 and CIFAR-10 as (N, H, W, C) uint8
        self.images = images[:, 0] if images.shape[1] == 1 else np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.labels, self.indices, self.mean, self.std, self.augment = labels, indices, mean, std, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, ImageOps
        j = self.indices[i]
        img = Image.fromarray(self.images[j])
        if self.augment:
            img = ImageOps.expand(img, border=4, fill=0)                       # RandomCrop(32, padding=4)
            top, left = torch.randint(0, 9, (1,)).item(), torch.randint(0, 9, (1,)).item()
            img = img.crop((left, top, left + 32, top + 32))
            if torch.rand(1) < 0.5:                                            # RandomHorizontalFlip
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, np.uint8, copy=True))               # ToTensor
        x = x.view(img.size[1], img.size[0], len(img.getbands())).permute((2, 0, 1)).contiguous()
        x = x.to(dtype=torch.get_default_dtype()).div(255)
        x = x.clone()                                                          # Normalize
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)
        if (std == 0).any():
            raise ValueError("std evaluated to zero")
        x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
        return x, int(self.labels[j])


def random_crop_flip_one(image: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip for one (C, H, W) image, by hand."""
    _, h, w = image.shape
    padded = nn.functional.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    crop = padded[:, top:top + h, left:left + w]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop


class DataLoaderPipeline:
    """(c) Dataset + DataLoader with per-sample transforms and the textbook training and validation loops."""

    key = "c"

    def __init__(self, bench: Bench, split: Split, config: TrainConfig, device: torch.device, channels_last: bool,
                 workers: int, style: str = "tensor"):
        self.name = f"(c) DataLoader, {style}, w={workers}"
        self.key = f"c-{style}-w{workers}"
        self.device, self.amp, self.channels_last = device, config.amp, channels_last
        pin = device.type == "cuda"
        dataset = {"tensor": PerSampleDataset, "pil": TorchvisionStyleDataset}[style]
        train = dataset(split.images, split.labels, split.train_idx, split.mean, split.std, split.augment)
        val = dataset(split.images, split.labels, split.val_idx, split.mean, split.std, False)
        self.train_loader = torch.utils.data.DataLoader(train, batch_size=config.batch_size, shuffle=True,
                                                        num_workers=workers, pin_memory=pin,
                                                        generator=torch.Generator().manual_seed(SEED))
        self.val_loader = torch.utils.data.DataLoader(val, batch_size=config.eval_batch_size, shuffle=False,
                                                      num_workers=workers, pin_memory=pin)
        self.model = _new_model(bench, split, device, channels_last)
        self.optimizer = make_optimizer(self.model, config, device)   # as train_model builds it
        self.criterion = nn.CrossEntropyLoss()
        self.train_images = len(train)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def run(self, epochs: int) -> None:
        model, optimizer, criterion = self.model, self.optimizer, self.criterion
        for _ in range(epochs):
            model.train()
            running_loss, correct, seen = 0.0, 0, 0
            for x, y in self.train_loader:
                x, y = self._to_device(x, y)
                with autocast_for(self.device, self.amp):
                    logits = model(x)
                    loss = criterion(logits.float(), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                running_loss += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            model.eval()
            val_loss, val_correct, val_seen = 0.0, 0, 0
            with torch.no_grad():
                for x, y in self.val_loader:
                    x, y = self._to_device(x, y)
                    with autocast_for(self.device, self.amp):
                        logits = model(x).float()
                    val_loss += criterion(logits, y).item() * len(y)
                    val_correct += (logits.argmax(1) == y).sum().item()
                    val_seen += len(y)
        _sync(self.device)


# ---------------------------------------------------------------- timing and the report

def timed(pipeline, epochs: int) -> float:
    """Seconds per epoch of `epochs` epochs of a pipeline."""
    _sync(pipeline.device)
    start = time.perf_counter()
    pipeline.run(epochs)
    return (time.perf_counter() - start) / epochs


def _fmt_spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f}  [{min(values):.3f}-{max(values):.3f}]"


def run_bench(bench: Bench, args: argparse.Namespace, device: torch.device, data_cache: dict,
              deadline: float | None, models_left: int) -> dict:
    """Build the pipelines of one model, warm them up, time them in turns, print and return the figures."""
    if bench.dataset not in data_cache:
        data_cache.clear()                                    # one dataset in memory at a time
        data_cache[bench.dataset] = load_dataset(bench.dataset, args.data_dir, download=False)
    data = data_cache[bench.dataset]
    config = TrainConfig(model=bench.model, dataset=bench.dataset, model_args=bench.model_args, epochs=args.epochs,
                         batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                         stagnation_stop=False, overfit_stop=False, train_subset=bench.train_subset,
                         val_fraction=args.val_fraction, seed=SEED, device=str(device), wandb="disabled",
                         data_dir=str(args.data_dir))
    split = split_like_reslab(data, config)
    # channels_last for the CNN: (a) and (b) on every device, as run_training decides; (c) on CUDA only (the usual
    # GPU habit), NCHW on the CPU as the usual code runs.
    loader_channels_last = device.type == "cuda" and bench.model.endswith("cnn")
    bare_channels_last = bench.model.endswith("cnn")

    pipelines, memory, warmup = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="reslab-bench-") as tmp:
        def builders(data, config, split, folder):
            folder.mkdir()
            yield lambda: ReslabPipeline(bench, data, config, split, device, folder)
            yield lambda: BarePipeline(bench, split, config, device, bare_channels_last)
            for style in args.c_style:
                for w in args.num_workers:
                    yield lambda w=w, style=style: DataLoaderPipeline(bench, split, config, device,
                                                                      loader_channels_last, w, style)

        # Prime: every pipeline once on a few hundred images, so one-time costs (lazy imports, thread pools,
        # kernel caches) fall on none of the measured builds.
        if not args.smoke:
            n = min(len(data.train_labels), 640)
            tiny = dataclasses.replace(data, train_images=data.train_images[:n], train_labels=data.train_labels[:n])
            tiny_config = config.replace(train_subset=None)
            for build in builders(tiny, tiny_config, split_like_reslab(tiny, tiny_config), Path(tmp) / "prime"):
                timed(build(), 1)

        for build in builders(data, config, split, Path(tmp) / "bench"):
            with PeakMemory(device) as peak:
                pipeline = build()
                warmup[pipeline.key] = timed(pipeline, 1)   # the warm-up epoch, not counted
            memory[pipeline.key] = peak.mib
            memory_how = peak.how
            pipelines.append(pipeline)

        repeats = args.repeat
        if deadline is not None:           # --budget: fewer repeats rather than a run past the budget
            share = max(deadline - time.perf_counter(), 0.0) / models_left
            per_repeat = sum(warmup.values()) * args.epochs
            repeats = max(1, min(repeats, int(share // max(per_repeat, 1e-9))))
        seconds: dict[str, list[float]] = {p.key: [] for p in pipelines}
        for r in range(repeats):
            for p in pipelines[r % len(pipelines):] + pipelines[:r % len(pipelines)]:
                seconds[p.key].append(timed(p, args.epochs))

    n_train, n_val = len(split.train_idx), len(split.val_idx)
    print(f"\n{bench.title}: {n_train} train + {n_val} val images, batch {args.batch_size}, eval batch "
          f"{args.eval_batch_size}, augment {'on' if split.augment else 'off'} in (a) and (c); "
          f"{args.epochs} timed epoch(s) x {repeats} repeat(s){' (cut by --budget)' if repeats < args.repeat else ''}"
          " after 1 warm-up epoch")
    print(f"  {'pipeline':<30} {'s/epoch median [min-max]':>26} {'train img/s':>12} {'peak MiB':>9}")
    for p in pipelines:
        med = statistics.median(seconds[p.key])
        print(f"  {p.name:<30} {_fmt_spread(seconds[p.key]):>26} {p.train_images / med:12,.0f} "
              f"{memory[p.key]:9.0f}")
    ratios = {"a/b": [a / b for a, b in zip(seconds["a"], seconds["b"])]}
    for p in pipelines[2:]:
        ratios[f"{p.key}/a"] = [c / a for c, a in zip(seconds[p.key], seconds["a"])]
    print(f"  {'ratio':<24} {'median of per-repeat ratios [min-max]':>38} {'ratio of the min times':>23}")
    ratio_of_mins = {}
    for name, values in ratios.items():
        top, bottom = name.split("/")
        ratio_of_mins[name] = min(seconds[top]) / min(seconds[bottom])
        label = "a/b" if name == "a/b" else f"c/a ({top[2:].replace('-w', ', w=')})"
        print(f"  {label:<24} {statistics.median(values):19.2f}  {f'[{min(values):.2f}-{max(values):.2f}]':<17}"
              f"{ratio_of_mins[name]:23.2f}")
    noisy = [p.name for p in pipelines if max(seconds[p.key]) > 1.5 * min(seconds[p.key])]
    if noisy:
        print(f"  noisy: the slowest repeat took over 1.5x the fastest for {', '.join(noisy)}: other processes "
              "competed for the cores; the min times are the least disturbed")
    print(f"  peak MiB: {memory_how} added by building the pipeline and running its warm-up epoch")
    del pipelines
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"title": bench.title, "model": bench.model, "model_args": bench.model_args, "dataset": bench.dataset,
            "train_images": n_train, "val_images": n_val, "repeats": repeats, "epochs": args.epochs,
            "warmup_seconds": warmup, "seconds_per_epoch": seconds, "peak_mib": memory, "memory_measure": memory_how,
            "median_seconds_per_epoch": {k: statistics.median(v) for k, v in seconds.items()},
            "ratios": {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                           "of_min_times": ratio_of_mins[k]} for k, v in ratios.items()}}


TARGETS = {"mlp": [("a/b", "<=", 1.15), ("c-tensor-w0/a", ">=", 8.0), ("c-pil-w0/a", ">=", 8.0)],
           "rescnn": [("a/b", "<=", 1.05)]}


def print_targets(results: dict[str, dict]) -> None:
    """The issue's targets (2 CPU cores), checked against the median ratios (and the ratio of the min times)."""
    lines = []
    for key, checks in TARGETS.items():
        if key not in results:
            continue
        for ratio, op, bound in checks:
            if ratio not in results[key]["ratios"]:
                continue
            value = results[key]["ratios"][ratio]["median"]
            of_mins = results[key]["ratios"][ratio]["of_min_times"]
            met = value <= bound if op == "<=" else value >= bound
            shown = f"c/a ({ratio[2:-2].replace('-w', ', w=')})" if ratio.startswith("c") else ratio
            lines.append(f"  {results[key]['title']}: {shown} = {value:.2f} (of min times {of_mins:.2f}), "
                         f"target {op} {bound}: {'met' if met else 'MISSED'}")
    if lines:
        print(f"\ntargets (issue 8, 2 CPU cores; this run used {torch.get_num_threads()} torch thread(s)):")
        print("\n".join(lines))


def write_smoke_data(root: Path) -> Path:
    """Tiny MNIST and CIFAR-10 files in their real formats (tests/fakedata.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from fakedata import write_cifar10, write_idx_dataset
    write_idx_dataset(root, "MNIST/raw", n_train=200, n_test=20)
    write_cifar10(root, per_batch=30, n_test=20)
    return root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per repeat (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="repeats; seconds/epoch is the median over them (default 3)")
    p.add_argument("--models", default="mlp,resmlp,rescnn", help="comma list of mlp, resmlp, rescnn")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="folder holding MNIST/raw and cifar-10-batches-py (default ../shared/data)")
    p.add_argument("--train-subset", type=int, default=None,
                   help=f"training images per model (default: all; {CPU_CIFAR_SUBSET} for CIFAR on the CPU)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction, as reslab (default 0.1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--cnn-depth", type=int, default=3, help="rescnn BasicBlocks (default 3)")
    p.add_argument("--cnn-width", type=int, default=None,
                   help=f"rescnn width (default {CPU_CNN_WIDTH} on the CPU, 64 on CUDA)")
    p.add_argument("--num-workers", default="0",
                   help="DataLoader num_workers for (c); a comma list times each (default 0)")
    p.add_argument("--c-style", default=None,
                   help="(c) per-sample transforms: tensor (hand-written tensor ops), pil (torchvision's PIL path, "
                        "reimplemented); a comma list times each (default tensor,pil on the CPU, tensor on CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for all pipelines (default: the CPU cores this process may use)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; fewer repeats where the warm-ups say the run would overrun (default: 40 on "
                        "CUDA, none on the CPU)")
    p.add_argument("--smoke", action="store_true", help="tiny generated data and models: a check that runs in seconds")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.num_workers = [int(w) for w in str(args.num_workers).split(",")]
    if args.c_style is None:
        args.c_style = "tensor" if args.device.startswith("cuda") else "tensor,pil"
    args.c_style = [c.strip() for c in args.c_style.split(",") if c.strip()]
    if not args.c_style or any(c not in ("tensor", "pil") for c in args.c_style):
        p.error("--c-style takes tensor, pil or both")
    if args.epochs < 1 or args.repeat < 1:
        p.error("--epochs and --repeat must be at least 1")
    if any(w < 0 for w in args.num_workers):
        p.error("--num-workers must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("epoch_speed: --device cuda but torch.cuda.is_available() is False")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True            # as reslab's seed_everything does
    if args.budget is None and device.type == "cuda":
        args.budget = 40.0
    started = time.perf_counter()
    deadline = started + args.budget if args.budget else None

    selected = benches(args, device)            # a wrong --models fails before any work
    smoke_dir = None
    if args.smoke:
        smoke_dir = tempfile.TemporaryDirectory(prefix="reslab-bench-data-")
        args.data_dir = write_smoke_data(Path(smoke_dir.name))
        if args.cnn_width is None:
            args.cnn_width = 8
        if args.threads is None:
            args.threads = 1      # seconds, not figures: one thread is immune to other processes' load
    threads = args.threads or cores
    torch.set_num_threads(threads)                        # the same for (a), (b) and (c)
    hardware = hardware_name(device) + ("" if device.type == "cuda" else f", {cores} cores")
    print(f"reslab epoch speed: device {device} ({hardware}), torch {torch.__version__}, {threads} torch threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
          f"data {args.data_dir}{' (generated, --smoke)' if args.smoke else ''}")
    print("(a) reslab train_model + trackers + checkpoints; (b) bare step loop over pre-made tensors + bare "
          "validation; (c) Dataset + DataLoader per-sample pipeline + validation. Every epoch includes validation.")

    results: dict[str, dict] = {}
    data_cache: dict = {}
    try:
        selected = benches(args, device)           # again: --smoke sets the CNN width
        for i, bench in enumerate(selected):
            results[bench.key] = run_bench(bench, args, device, data_cache, deadline, len(selected) - i)
    finally:
        if smoke_dir is not None:
            smoke_dir.cleanup()
    if device.type == "cpu" and not args.smoke:
        print_targets(results)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.1f} s; timings on a shared machine are noisy: compare the spreads, not one number")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "hardware": hardware, "threads": threads,
                                         "torch": str(torch.__version__), "smoke": args.smoke,
                                         "total_seconds": total, "models": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
