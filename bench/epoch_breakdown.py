#!/usr/bin/env python3
"""Where reslab's epoch time goes: its parts timed one by one against the bare loop of bench/epoch_speed.py.

For one model, every part below is timed once per round; the rounds take turns (rotating order) and the table
gives the median over rounds with min..max, in milliseconds per epoch (per call for the per-epoch extras):

  bare train / bare val        (b) of epoch_speed: step loop over pre-made tensors; validation pass
  loader: train / val          iterating reslab's TensorLoaders alone (gather by index, crop + flip, normalize)
  step over loader batches     the bare step loop fed by the TensorLoader (loader + step, no bookkeeping)
  reslab train_epoch          train.py's epoch: the above + loss/accuracy sums + the nan check
  reslab evaluate_loss_acc.    train.py's validation
  checkpoint last.pth          building the resume dict as train_model does (capture_rng, optimizer state) +
                               save_atomic (torch.save, fsync, rename)
  checkpoint best_model.pth    deepcopy of the state dict + save_atomic, as on an improving epoch
  trackers                     console line + metrics.jsonl (open, append, fsync)
  train_model, 1 epoch         the whole (a) epoch of epoch_speed, through train_model
  matmuls/convs alone          the step's matrix products and convolutions (forward and backward, as recorded
                               from one training step) replayed once per train batch, nothing else: the floor
                               that no framework overhead can go below with this BLAS / oneDNN on this machine
and for the CNN, the same parts with an NCHW model and inputs (reslab uses channels_last for conv nets).

    python bench/epoch_breakdown.py --model mlp --repeat 5
    python bench/epoch_breakdown.py --model rescnn --repeat 3 --profile   # + torch.profiler top ops
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch_speed import DEFAULT_DATA, SEED, BarePipeline, ReslabPipeline, benches, split_like_reslab  # noqa: E402

from reslab.checkpoint import checkpoint_dict, last_checkpoint, save_atomic  # noqa: E402
from reslab.config import TrainConfig  # noqa: E402
from reslab.datasets import load_dataset  # noqa: E402
from reslab.device import autocast_for  # noqa: E402
from reslab.early_stopping import EarlyStopping  # noqa: E402
from reslab.evaluate import loss_and_accuracy  # noqa: E402
from reslab.loader import TensorLoader  # noqa: E402
from reslab.train import History, StopSignals, make_optimizer, train_epoch  # noqa: E402


def step_over(model: nn.Module, optimizer, loader, device: torch.device, amp: bool) -> None:
    """The bare step loop, fed by any iterable of (x, y)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    for x, y in loader:
        with autocast_for(device, amp):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


# The kernels of a training step that do its arithmetic; everything else (elementwise ops, the loss, Adam,
# dispatch, autograd) is overhead a leaner loop could in principle remove.
HEAVY_OPS = ("mm", "addmm", "bmm", "convolution", "convolution_backward")


@dataclass
class HeavyKernels:
    """One training step's matrix products and convolutions, recorded with their inputs, to be run again alone."""

    calls: list
    flops: int           # of the whole step, as FlopCounterMode counts it (these ops only)

    @property
    def names(self) -> list[str]:
        return sorted({func.overloadpacket.__name__ for func, _, _ in self.calls})

    def replay(self) -> None:
        with torch.no_grad():
            for func, args, kwargs in self.calls:
                func(*args, **kwargs)


def heavy_kernels(model: nn.Module, config: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                  device: torch.device) -> HeavyKernels:
    """Record one training step of a copy of `model` (its matrix products and convolutions, inputs cloned)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    calls = []

    def kept(value):
        return value.detach().clone() if isinstance(value, torch.Tensor) else value

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in HEAVY_OPS:
                calls.append((func, [kept(a) for a in args], {k: kept(v) for k, v in kwargs.items()}))
            return func(*args, **kwargs)

    model = copy.deepcopy(model)   # the step changes the weights: not those of the model being timed
    counter = FlopCounterMode(display=False)
    with counter, Record():
        step_over(model, make_optimizer(model, config, device), [(x, y)], device, config.amp)
    return HeavyKernels(calls, counter.get_total_flops())


def square_matmul_gflops(device: torch.device, n: int = 2048, repeat: int = 5) -> float:
    """What this BLAS reaches on a large square fp32 matmul here: the peer for the step's matmul speed."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "resmlp", "rescnn"])
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
    p.add_argument("--profile", action="store_true", help="torch.profiler: top ops of one (a) and one (b) epoch")
    args = p.parse_args()
    args.models = [args.model]
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or cores
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bench = benches(args, device)[0]
    data = load_dataset(bench.dataset, args.data_dir, download=False)
    config = TrainConfig(model=bench.model, dataset=bench.dataset, model_args=bench.model_args, epochs=1,
                         batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, stagnation_stop=False,
                         overfit_stop=False, train_subset=bench.train_subset, val_fraction=args.val_fraction,
                         seed=SEED, device=str(device), wandb="disabled")
    split = split_like_reslab(data, config)
    is_cnn = bench.model.endswith("cnn")
    print(f"{bench.title}: {len(split.train_idx)} train + {len(split.val_idx)} val, batch {args.batch_size}, "
          f"device {device}, {threads} torch threads, {args.repeat} rounds")

    tmp = tempfile.TemporaryDirectory(prefix="reslab-breakdown-")
    a = ReslabPipeline(bench, data, config, split, device, Path(tmp.name))
    b = BarePipeline(bench, split, config, device, channels_last=is_cnn)    # as epoch_speed's (b)
    train_loader, val_loader = a.loaders.train, a.loaders.val
    model, amp = a.model, config.amp
    optimizer = make_optimizer(model, config, device)
    stopper = EarlyStopping.from_config(config)
    record = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.9,
              "seconds": 1.0}
    signals = StopSignals()

    history = History(epochs=[record] * 10, best_epoch=1, train_seconds=1.0)

    def write_last():
        last = last_checkpoint(checkpoint_dict(model, a.meta, config, record), optimizer, stopper, train_loader,
                               history, None)
        save_atomic(last, a.run_dir / "last.pth")

    def write_best():
        copy.deepcopy(model.state_dict())   # as train_model keeps the best weights in memory on an improving epoch
        save_atomic(checkpoint_dict(model, a.meta, config, record), a.run_dir / "best_model.pth")

    def track():
        with contextlib.redirect_stdout(io.StringIO()):
            a.trackers.log_epoch(record)

    parts = {
        "bare train (b)": lambda: bare_train(b),
        "bare val (b)": lambda: b._validate(),
        "loader: train batches only": lambda: [None for _ in train_loader],
        "loader: val batches only": lambda: [None for _ in val_loader],
        "step over loader batches": lambda: step_over(model, optimizer, train_loader, device, amp),
        "reslab train_epoch": lambda: train_epoch(model, train_loader, optimizer, config, device, signals=signals),
        "reslab loss_and_accuracy": lambda: loss_and_accuracy(model, val_loader, amp),
        "checkpoint last.pth (every epoch)": write_last,
        "checkpoint best_model.pth (improving)": write_best,
        "trackers: console + metrics.jsonl": track,
        "train_model, 1 epoch (a)": lambda: a.run(1),
    }
    x0, y0 = next(iter(train_loader))
    kernels = heavy_kernels(model, config, x0, y0, device)
    parts["matmuls/convs alone"] = lambda: [kernels.replay() for _ in range(len(train_loader))]
    if is_cnn:        # what channels_last gives: the same parts with NCHW model and inputs
        nchw = dict(mean=split.mean, std=split.std, device=device, channels_last=False)
        nchw_train = TensorLoader(split.images[split.train_idx], split.labels[split.train_idx], config.batch_size,
                                  shuffle=True, augment=split.augment, seed=SEED, **nchw)
        nchw_val = TensorLoader(split.images[split.val_idx], split.labels[split.val_idx], config.eval_batch_size,
                                **nchw)
        nchw_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        nchw_opt = make_optimizer(nchw_model, config, device)
        b_nchw = BarePipeline(bench, split, config, device, channels_last=False)
        parts.update({
            "bare train, NCHW model + inputs": lambda: bare_train(b_nchw),
            "bare val, NCHW model + inputs": lambda: b_nchw._validate(),
            "train_epoch, NCHW loader + model": lambda: train_epoch(nchw_model, nchw_train, nchw_opt, config,
                                                                    device, signals=signals),
            "evaluate, NCHW loader + model": lambda: loss_and_accuracy(nchw_model, nchw_val, amp),
        })

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in parts.values():            # warm-up
        fn()
    times = {name: [] for name in parts}
    names = list(parts)
    for r in range(args.repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            start = time.perf_counter()
            parts[name]()
            sync()
            times[name].append(time.perf_counter() - start)

    n_batches = len(train_loader)
    print(f"  {'part':<40} {'ms median':>10} {'[min-max]':>18} {'us/train batch':>15}")
    for name in names:
        v = [t * 1e3 for t in times[name]]
        med = statistics.median(v)
        print(f"  {name:<40} {med:10.1f} {f'[{min(v):.1f}-{max(v):.1f}]':>18} {1e3 * med / n_batches:15.0f}")
    m = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print("\n  derived (medians, ms per epoch):")
    print(f"    loader cost in training   = step over loader - bare train        = "
          f"{m['step over loader batches'] - m['bare train (b)']:8.1f}")
    print(f"    sums + nan check          = train_epoch - step over loader      = "
          f"{m['reslab train_epoch'] - m['step over loader batches']:8.1f}")
    print(f"    validation gap            = loss_and_accuracy - bare val    = "
          f"{m['reslab loss_and_accuracy'] - m['bare val (b)']:8.1f}")
    parts_sum = (m["reslab train_epoch"] + m["reslab loss_and_accuracy"] + m["checkpoint last.pth (every epoch)"]
                 + m["trackers: console + metrics.jsonl"])
    print(f"    train_epoch + evaluate + last.pth + trackers = {parts_sum:8.1f}   "
          f"(train_model epoch: {m['train_model, 1 epoch (a)']:.1f}; + best_model.pth on improving epochs: "
          f"{m['checkpoint best_model.pth (improving)']:.1f})")
    print(f"    bare train + bare val (b) = {m['bare train (b)'] + m['bare val (b)']:8.1f}")
    print(f"    matmuls/convs alone       = {m['matmuls/convs alone']:8.1f}   ({', '.join(kernels.names)}; "
          f"{100 * m['matmuls/convs alone'] / m['bare train (b)']:.0f}% of bare train, "
          f"{100 * m['matmuls/convs alone'] / m['train_model, 1 epoch (a)']:.0f}% of the train_model epoch)")
    print(f"    their speed               = {kernels.flops * n_batches / m['matmuls/convs alone'] / 1e6:8.1f} GFLOP/s "
          f"({kernels.flops / 1e6:.1f} MFLOP a step); a 2048x2048 fp32 matmul here: "
          f"{square_matmul_gflops(device):.1f} GFLOP/s")
    print(f"    last.pth is {os.path.getsize(a.run_dir / 'last.pth') / 2**20:.2f} MiB; best_model.pth "
          f"{os.path.getsize(a.run_dir / 'best_model.pth') / 2**20:.2f} MiB")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        for name in ("reslab train_epoch", "bare train (b)", "reslab loss_and_accuracy", "bare val (b)"):
            with profile(activities=acts) as prof:
                parts[name]()
                sync()
            print(f"\n  torch.profiler, one call of {name}: top ops by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=36))
    tmp.cleanup()
    return 0


def bare_train(b: BarePipeline) -> None:
    """The train half of (b): contiguous slices of the pre-made tensors."""
    step_over(b.model, b.optimizer, ((b.x[i:i + b.batch_size], b.y[i:i + b.batch_size])
                                     for i in range(0, len(b.y), b.batch_size)), b.device, b.amp)


if __name__ == "__main__":
    sys.exit(main())
