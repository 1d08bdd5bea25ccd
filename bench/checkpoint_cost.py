#!/usr/bin/env python3
"""What train_model's per-epoch checkpoint costs: last.pth (every epoch) and best_model.pth, by model size.

last.pth is built by reslab.checkpoint.last_checkpoint, as train_model builds it (weights, Adam state, early-stopping
and loader state, RNG states, history; not the best weights, which best_model.pth holds) and written with
reslab.checkpoint.save_atomic (torch.save to a temp file, flush + fsync, rename). Also timed: the same bytes
without fsync, and torch.save into memory only.

    python bench/checkpoint_cost.py [--dir /tmp] [--repeat 7]
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reslab.checkpoint import checkpoint_dict, last_checkpoint, save_atomic  # noqa: E402
from reslab.config import TrainConfig  # noqa: E402
from reslab.loader import TensorLoader  # noqa: E402
from reslab.models import build_model  # noqa: E402
from reslab.early_stopping import EarlyStopping  # noqa: E402
from reslab.train import History, make_optimizer  # noqa: E402

MODELS = [("mlp", (1, 28, 28), {}), ("resmlp", (1, 28, 28), {}), ("rescnn", (3, 32, 32), {"width": 16}),
          ("rescnn", (3, 32, 32), {}), ("rescnn", (3, 32, 32), {"depth": 8})]


def save_plain(obj, path: Path) -> None:
    """torch.save + rename, no fsync."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=None, help="folder to write in (default: the system temp folder)")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = tempfile.TemporaryDirectory(prefix="reslab-ckpt-", dir=args.dir)
    run_dir = Path(folder.name)
    print(f"writing in {run_dir}; ms per write, median [min-max] of {args.repeat}")
    print(f"  {'model':<34} {'params':>9} {'last MiB':>8} {'last.pth':>18} {'no fsync':>16} {'in memory':>16} "
          f"{'best_model':>16}")
    for name, shape, model_args in MODELS:
        model = build_model(name, shape, 10, **model_args)
        config = TrainConfig(model=name, model_args=model_args)
        optimizer = make_optimizer(model, config, torch.device("cpu"))
        model(torch.randn(2, *shape)).sum().backward()
        optimizer.step()                                   # Adam state exists, as after the first epoch
        loader = TensorLoader(np.zeros((4, *shape), np.uint8), np.zeros(4, np.int64), 2, [0.5] * shape[0],
                              [0.5] * shape[0])
        record = {"epoch": 10, "train_loss": 0.1, "train_accuracy": 0.9, "val_loss": 0.2, "val_accuracy": 0.9,
                  "seconds": 1.0}
        meta = {"dataset": "x", "input_shape": list(shape), "num_classes": 10, "classes": [str(i) for i in range(10)],
                "normalization": {"mean": [0.5], "std": [0.5]}}

        history = History(epochs=[record] * 10, best_epoch=10, train_seconds=10.0)

        def last_dict() -> dict:
            return last_checkpoint(checkpoint_dict(model, meta, config, record), optimizer, EarlyStopping(), loader,
                                   history, None)

        def best() -> None:
            copy.deepcopy(model.state_dict())   # as train_model keeps the best weights in memory
            save_atomic(checkpoint_dict(model, meta, config, record), run_dir / "best_model.pth")

        ways = {
            "last.pth": lambda: save_atomic(last_dict(), run_dir / "last.pth"),
            "no fsync": lambda: save_plain(last_dict(), run_dir / "plain.pth"),
            "in memory": lambda: torch.save(last_dict(), io.BytesIO()),
            "best_model": best,
        }
        times = {k: [] for k in ways}
        for k, fn in ways.items():
            fn()
        for _ in range(args.repeat):
            for k, fn in ways.items():
                start = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - start) * 1e3)
        params = sum(p.numel() for p in model.parameters())
        label = f"{name} {model_args or ''}".strip()
        cells = " ".join(f"{f'{statistics.median(v):.1f} [{min(v):.0f}-{max(v):.0f}]':>16}"
                         for v in times.values())
        print(f"  {label:<34} {params:9,d} {os.path.getsize(run_dir / 'last.pth') / 2**20:8.2f} {cells}")
    folder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
