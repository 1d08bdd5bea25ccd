#!/usr/bin/env python3
"""reslab's epoch (a) as it is, and with proposed changes to loader.py / train.py applied one after another.

Nothing under reslab/ is edited: the proposals are a TensorLoader subclass and a copy of train._train_epoch,
swapped in while their variant runs. Every variant goes through reslab's train_model with the console and
metrics.jsonl trackers and the checkpoints on, like (a) of bench/epoch_speed.py (channels_last model and loaders
for the CNN, as run_training decides); (b) is epoch_speed's bare loop. Variants take turns (rotating order) over
--repeat rounds after one warm-up epoch; seconds per epoch are the median over rounds, [min-max] beside it.

  a       reslab as it is
  a+P1    TensorLoader gathers with torch.index_select instead of advanced indexing (images[idx], labels[idx]);
          crop + flip as one torch.gather over flat pixel indices instead of 4-d advanced indexing
          (the batches are bit-identical to reslab's: checked before timing)
  a+P2    + _train_epoch keeps per-batch loss and correct counts in preallocated slots and checks isfinite on
          each window of NAN_CHECK_EVERY batches (instead of ~12 small tensor ops per batch)
  a NCHW  CNN only: reslab as it is but with an NCHW model and loaders (reslab before commit 34de741 on the CPU),
          to show what channels_last gives
and, once per model, a setup cost:
  P4      loader.channel_stats from exact 256-bin histograms counted in chunks, instead of float64 copies of
          each channel (time and peak memory of make_loaders' normalization statistics)

    python bench/epoch_proposals.py --models mlp,rescnn --repeat 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch_speed import (DEFAULT_DATA, SEED, BarePipeline, PeakMemory, ReslabPipeline, benches,  # noqa: E402
                         split_like_reslab, timed)

import reslab.train as train_module  # noqa: E402
from reslab.config import TrainConfig  # noqa: E402
from reslab.datasets import load_dataset  # noqa: E402
from reslab.loader import TensorLoader, channel_stats, random_crop_flip  # noqa: E402
from reslab.train import NAN_CHECK_EVERY, _progress, autocast_for  # noqa: E402


def gather_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """random_crop_flip's result (same random draws, same pixels) from one torch.gather over flat indices."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=dev)
    flip = torch.rand(n, 1, 1, generator=generator, device=dev) < 0.5
    cols = torch.arange(w, device=dev).view(1, 1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    rows = torch.arange(h, device=dev).view(1, h, 1) + dy
    flat = (rows * (w + 2 * padding) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, flat).view(n, c, h, w)


class ProposedTensorLoader(TensorLoader):
    """P1: TensorLoader.__iter__ with index_select and the gather-based crop + flip."""

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        order = self._order(order)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = torch.index_select(self.images, 0, idx)
            if self.augment:
                x = gather_crop_flip(x, self.generator)
            x = x.float().mul_(self.scale).add_(self.shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.index_select(self.labels, 0, idx)


def train_epoch_slots(model: nn.Module, loader, optimizer, config, signals, grad_params, distributed) -> dict:
    """P2: reslab's _train_epoch with per-batch slots for loss and correct counts and a windowed nan check."""
    model.train()
    device = loader.device
    n_batches = len(loader)
    losses = torch.zeros(n_batches, device=device)
    corrects = torch.zeros(n_batches, device=device, dtype=torch.int64)
    grad_sums = torch.zeros(len(grad_params), device=device) if grad_params else None
    criterion = nn.CrossEntropyLoss()
    stop_mid_epoch = distributed is None
    seen, last_size, done = 0, 0, 0
    for i, (x, y) in enumerate(_progress(loader, "train")):
        with autocast_for(device, config.amp):
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_sums is not None:
            grad_sums += torch.stack(torch._foreach_norm([p.grad for _, p in grad_params]))
        optimizer.step()
        losses[i] = loss.detach()
        corrects[i] = (logits.argmax(1) == y).sum()
        seen += len(y)
        last_size, done = len(y), i + 1
        if stop_mid_epoch:
            window = losses[done - NAN_CHECK_EVERY:done]
            if done % NAN_CHECK_EVERY == 0 and not bool(torch.isfinite(window).all()):   # CPU-GPU sync point
                break
            if signals.requested:
                return {"interrupted": True}
    bad = (~torch.isfinite(losses[:done])).nonzero()
    nan_batch = int(bad[0]) if len(bad) else -1
    if distributed is not None and distributed.any(nan_batch >= 0):
        nan_batch = max(nan_batch, 0)
    if nan_batch >= 0:
        return {"nan_batch": nan_batch + 1}
    sizes = torch.full((done,), float(loader.batch_size), device=device)
    sizes[-1] = float(last_size)
    totals = torch.stack([(losses[:done] * sizes).sum(), corrects[:done].sum().to(losses.dtype),
                          torch.tensor(float(seen), device=device)])
    if distributed is not None:
        totals = distributed.all_reduce_sum(totals)
    loss_total, correct_total, count = totals.tolist()
    result: dict[str, Any] = {"loss": loss_total / count, "accuracy": correct_total / count}
    if grad_sums is not None:
        norms = (grad_sums / max(n_batches, 1)).tolist()
        result["grad_norms"] = {f"grad_2.0_norm/{n}": v for (n, _), v in zip(grad_params, norms)}
    return result


class ProposedPipeline(ReslabPipeline):
    """(a) with the proposals up to `level` swapped in; level 0: no proposal, but an NCHW model and loaders."""

    def __init__(self, level: int, bench, data, config, split, device, tmp: Path):
        super().__init__(bench, data, config, split, device, tmp)
        self.level = level
        self.key = f"a+P{level}" if level else "a-nchw"
        self.name = {0: "a, NCHW model + loaders", 1: "a+P1 index_select/gather", 2: "a+P2 + slot bookkeeping"}[level]
        channels_last = self.loaders["train"].channels_last and level > 0
        if not channels_last:
            self.model = self.model.to(memory_format=torch.contiguous_format)
        common = dict(mean=split.mean, std=split.std, device=device, channels_last=channels_last)
        loader_class = TensorLoader if level == 0 else ProposedTensorLoader
        self.loaders["train"] = loader_class(split.images[split.train_idx], split.labels[split.train_idx],
                                             config.batch_size, shuffle=True, augment=split.augment,
                                             seed=config.seed, **common)
        self.loaders["val"] = loader_class(split.images[split.val_idx], split.labels[split.val_idx],
                                           config.eval_batch_size, **common)

    def run(self, epochs: int) -> None:
        original = train_module._train_epoch
        if self.level >= 2:
            train_module._train_epoch = train_epoch_slots
        try:
            super().run(epochs)
        finally:
            train_module._train_epoch = original


def channel_stats_histogram(images, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """P4: per-channel mean and std (0..1 scale) of uint8 images from 256-bin histograms, a chunk at a time."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = np.zeros(256, np.int64)
        for start in range(0, len(images), chunk):
            counts += np.bincount(images[start:start + chunk, c].reshape(-1), minlength=256)
        m = float((counts * levels).sum() / counts.sum())
        mean.append(m)
        std.append(float(np.sqrt((counts * (levels - m) ** 2).sum() / counts.sum())))
    return mean, std


def compare_channel_stats(images) -> str:
    """Seconds, peak memory and agreement of reslab's channel_stats and the histogram version."""
    figures = []
    for fn in (channel_stats, channel_stats_histogram):
        with PeakMemory(torch.device("cpu")) as peak:
            start = time.perf_counter()
            result = fn(images)
            seconds = time.perf_counter() - start
        figures.append((seconds, peak.mib, result))
    (t0, m0, r0), (t1, m1, r1) = figures
    diff = max(abs(a - b) / abs(b) for a, b in zip(r1[0] + r1[1], r0[0] + r0[1]))
    return (f"  P4 channel_stats: {t0:.2f} s, peak +{m0:.0f} MiB -> histogram: {t1:.2f} s, peak +{m1:.0f} MiB "
            f"({peak.how}); largest relative difference of the statistics {diff:.1e}")


def check_same_batches(split, config, device) -> None:
    """P1 must not change a single pixel: compare two epochs' worth of batches with reslab's TensorLoader."""
    common = dict(mean=split.mean, std=split.std, device=device)
    n = min(len(split.train_idx), 2048)
    args = (split.images[split.train_idx[:n]], split.labels[split.train_idx[:n]], config.batch_size)
    old = TensorLoader(*args, shuffle=True, augment=split.augment, seed=3, **common)
    new = ProposedTensorLoader(*args, shuffle=True, augment=split.augment, seed=3, **common)
    for _ in range(2):
        for (x0, y0), (x1, y1) in zip(old, new):
            if not (torch.equal(x0, x1) and torch.equal(y0, y1)):
                raise SystemExit("P1 changed the batches; the comparison would be unfair")
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    batch = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    if not torch.equal(random_crop_flip(batch, g0), gather_crop_flip(batch, g1)):
        raise SystemExit("gather_crop_flip differs from random_crop_flip")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mlp,rescnn")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--cnn-depth", type=int, default=3)
    p.add_argument("--cnn-width", type=int, default=None)
    args = p.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or cores
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"reslab epoch proposals: device {device}, {threads} torch threads, {args.repeat} rounds after a warm-up "
          "epoch; seconds per epoch (train + validation, trackers and checkpoints on), median [min-max]")
    for bench in benches(args, device):
        data = load_dataset(bench.dataset, args.data_dir, download=False)
        config = TrainConfig(model=bench.model, dataset=bench.dataset, model_args=bench.model_args, epochs=1,
                             batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                             stagnation_stop=False, overfit_stop=False, train_subset=bench.train_subset,
                             val_fraction=args.val_fraction, seed=SEED, device=str(device), wandb="disabled")
        split = split_like_reslab(data, config)
        check_same_batches(split, config, device)
        is_cnn = bench.model.endswith("cnn")
        levels = [1, 2, 0] if is_cnn else [1, 2]
        with tempfile.TemporaryDirectory(prefix="reslab-proposals-") as tmp:
            folders = iter(Path(tmp) / str(i) for i in range(10))

            def folder() -> Path:
                f = next(folders)
                f.mkdir()
                return f
            pipelines = [BarePipeline(bench, split, config, device, channels_last=is_cnn),
                         ReslabPipeline(bench, data, config, split, device, folder())]
            pipelines += [ProposedPipeline(level, bench, data, config, split, device, folder()) for level in levels]
            for pl in pipelines:
                timed(pl, 1)
            seconds = {pl.key: [] for pl in pipelines}
            for r in range(args.repeat):
                for pl in pipelines[r % len(pipelines):] + pipelines[:r % len(pipelines)]:
                    seconds[pl.key].append(timed(pl, 1))
        print(f"\n{bench.title}: {len(split.train_idx)} train + {len(split.val_idx)} val")
        print(compare_channel_stats(data.train_images[split.train_idx]))
        b = seconds["b"]
        for pl in pipelines:
            v = seconds[pl.key]
            ratio = [x / y for x, y in zip(v, b)]
            print(f"  {pl.name:<30} {statistics.median(v):8.3f} s  [{min(v):.3f}-{max(v):.3f}]   "
                  f"/b = {statistics.median(ratio):.3f} [{min(ratio):.3f}-{max(ratio):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
