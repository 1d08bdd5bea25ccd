#!/usr/bin/env python3
"""Projected wall time of a full-protocol ex1.3 run (30 epochs, all 45,000 training images) on this machine.

A full ex1.3 epoch takes many minutes per model on 2 CPU cores, so this times what an epoch is made of, with
reslab's own training step and loaders at the full protocol's settings (batch 128, crop + flip, Adam):
`--batches` training steps on the real CIFAR-10 copy (one pass over that many batches, the first step's
set-up cost included, so the projection errs high) and one validation pass
over the full 5,000-image val split. Projected epoch = step time x 352 steps + validation; projected run =
epoch x 30 (the protocol's upper bound; early stopping may end sooner). Run from the repository root:

    python bench/cpu_full_run.py --data-dir ../shared/data          # about 10 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reslab.config import TrainConfig  # noqa: E402
from reslab.datasets import load_dataset  # noqa: E402
from reslab.models import build_model  # noqa: E402
from reslab.run import hardware_name, make_loaders  # noqa: E402
from reslab.train import StopSignals, _train_epoch, evaluate_loss_accuracy  # noqa: E402

MODELS = [("cnn", 2), ("cnn", 3), ("cnn", 6), ("rescnn", 2), ("rescnn", 3), ("rescnn", 6)]
EPOCHS = 30          # the ex1.3 protocol's maximum
TRAIN_IMAGES = 45_000  # 90% of CIFAR-10's 50,000 training images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--batches", type=int, default=10, help="timed training steps per model (default 10)")
    args = parser.parse_args()
    data = load_dataset("cifar10", args.data_dir)
    device = torch.device("cpu")
    print(f"# {hardware_name(device)}, torch {torch.__version__}; CIFAR-10 copy official={data.official}")
    print(f"{'model':8s} {'s/step':>7s} {'val s':>6s} {'epoch (projected)':>18s} {'30 epochs (projected)':>22s}")
    steps = math.ceil(TRAIN_IMAGES / 128)
    for name, depth in MODELS:
        torch.manual_seed(0)
        config = TrainConfig(model=name, dataset="cifar10", model_args={"depth": depth}, augment=True,
                             train_subset=128 * args.batches, wandb="disabled")
        model = build_model(name, data.input_shape, data.num_classes, depth=depth)
        model = model.to(memory_format=torch.channels_last)
        loaders = make_loaders(data, config, device, channels_last=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        train = loaders["train"]
        with StopSignals() as signals:
            start = time.perf_counter()
            _train_epoch(model, train, optimizer, config, signals, None, None)
            per_step = (time.perf_counter() - start) / len(train)
        start = time.perf_counter()
        evaluate_loss_accuracy(model, loaders["val"])
        val = time.perf_counter() - start
        epoch = per_step * steps + val
        print(f"{name}{depth:<5d} {per_step:7.2f} {val:6.1f} {epoch / 60:14.1f} min {epoch * EPOCHS / 3600:18.1f} h",
              flush=True)


if __name__ == "__main__":
    main()
