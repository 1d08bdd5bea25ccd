#!/usr/bin/env python3
"""Exercise 1 (MNIST MLP, early stopping) the usual way, for bench/study_speed.py's time-to-result comparison.

Two pipelines a PyTorch user would write without reslab, each run as its own process:

(c) plain   a hand-written training loop: MNIST read from its IDX files into uint8 tensors (what
            torchvision.datasets.MNIST holds), a map-style Dataset whose __getitem__ does what torchvision's MNIST
            does with transform=Compose([ToTensor(), Normalize((0.1307,), (0.3081,))]) (a PIL image per sample,
            ToTensor's PIL -> uint8 tensor -> float / 255, Normalize's clone, sub_, div_; torchvision itself is
            not installed, so these few lines are written out as torchvision writes them), random_split 90/10,
            DataLoader(batch_size=128, shuffle=True, num_workers=N), the same MLP as reslab's ``mlp``
            (784-128-64-Dropout(0.2)-10), torch.optim.Adam(lr=1e-3) as a user writes it (the default, not fused),
            loss.item() and the correct count read every batch, a validation pass every epoch, reslab's two
            early-stopping rules written out (stagnation: 5 epochs in a row without val_loss < best; overfitting:
            3 epochs in a row with val_loss > best * 1.15, best being the lowest val loss before that epoch), the
            best weights saved with torch.save on every improvement and loaded back for the test.
(d) lightning the same model, data pipeline and optimizer in a lightning.LightningModule, trained by
            ``lightning.Trainer(max_epochs=50, accelerator=..., devices=1, enable_progress_bar=False)`` with
            ``EarlyStopping(monitor="val_loss", patience=5)`` and a 10-line callback for the overfitting rule
            (Lightning has no relative-overfitting stop; without it (d) could run epochs the other two do not);
            every other default kept: the sanity validation steps, the default ModelCheckpoint (writes the latest
            epoch's checkpoint every epoch), the default logger, the model summary. Then ``trainer.test``: it
            scores the weights the model holds at the end, i.e. the last epoch's, not the best epoch's (the
            default ModelCheckpoint monitors nothing, so there is no "best" checkpoint to load).

Only torch, numpy and Pillow are needed (and lightning for (d)): this file runs in a venv that has no reslab, e.g.
the benchmark venv with Lightning (see bench/requirements-lightning.txt). The result (phase timestamps, epochs,
test accuracy, how training stopped) is written as JSON to --result.

    python bench/usual_pipeline.py plain --data-dir ../shared/data --result /tmp/c.json [--workers 2]
    .venv-bench/bin/python bench/usual_pipeline.py lightning --data-dir ../shared/data --result /tmp/d.json
"""
from __future__ import annotations

import time

T_START = time.perf_counter()   # first thing: the parent takes (process wall - our own total) as interpreter start

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, random_split  # noqa: E402

MEAN, STD = (0.1307,), (0.3081,)   # the MNIST normalization every tutorial uses
PATIENCE, OVERFIT_RATIO, OVERFIT_PATIENCE = 5, 0.15, 3
BATCH_SIZE, EVAL_BATCH_SIZE, LR = 128, 1000, 1e-3   # 1000: pytorch/examples' MNIST test batch size


# ---------------------------------------------------------------- data, as torchvision.datasets.MNIST has it

def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzipped or not) as a uint8 tensor, as torchvision's read_sn3_pascalvincent_tensor reads it."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(*shape)


def mnist_file(root: Path, stem: str) -> Path:
    folder = root / "MNIST" / "raw"
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"usual_pipeline: no {stem}[.gz] in {folder}")


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for a PIL image."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
    img = img.permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


def normalize(tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """torchvision.transforms.functional.normalize (inplace=False)."""
    tensor = tensor.clone()
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if (std_t == 0).any():
        raise ValueError(f"std evaluated to zero after conversion to {tensor.dtype}, leading to division by zero.")
    return tensor.sub_(mean_t.view(-1, 1, 1)).div_(std_t.view(-1, 1, 1))


class Transform:
    """Compose([ToTensor(), Normalize(MEAN, STD)])."""

    def __call__(self, pic: Image.Image) -> torch.Tensor:
        return normalize(to_tensor(pic), MEAN, STD)


class MNIST(Dataset):
    """torchvision.datasets.MNIST's __getitem__: a PIL image per sample, then the transform."""

    def __init__(self, root: Path, train: bool, transform: Transform):
        prefix = "train" if train else "t10k"
        self.data = read_idx(mnist_file(root, f"{prefix}-images-idx3-ubyte"))
        self.targets = read_idx(mnist_file(root, f"{prefix}-labels-idx1-ubyte")).long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy())          # mode "L" (torchvision passes mode="L"; the same image)
        return self.transform(img), target


def make_data(root: Path, seed: int, workers: int, pin: bool) -> tuple[DataLoader, DataLoader, DataLoader, int]:
    """Train/val/test loaders: random_split 90/10 of the training set, as a user splits it."""
    full = MNIST(root, train=True, transform=Transform())
    test = MNIST(root, train=False, transform=Transform())
    train, val = random_split(full, [0.9, 0.1], generator=torch.Generator().manual_seed(seed))
    common = dict(num_workers=workers, pin_memory=pin)
    return (DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, **common),
            DataLoader(val, batch_size=EVAL_BATCH_SIZE, **common),
            DataLoader(test, batch_size=EVAL_BATCH_SIZE, **common), len(train))


def make_mlp() -> nn.Module:
    """reslab's ``mlp`` with its defaults (hidden 128, 64; dropout 0.2): the same layers in the same order."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(64, 10))


class OverfitRule:
    """reslab's overfitting rule: stop after OVERFIT_PATIENCE epochs in a row with val_loss > best * 1.15."""

    def __init__(self) -> None:
        self.best, self.count = math.inf, 0

    def step(self, val_loss: float) -> bool:
        self.count = self.count + 1 if val_loss > self.best * (1 + OVERFIT_RATIO) else 0
        self.best = min(self.best, val_loss)
        return self.count >= OVERFIT_PATIENCE


# ---------------------------------------------------------------- (c) the plain loop

def run_plain(args: argparse.Namespace, marks: dict) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    train_loader, val_loader, test_loader, n_train = make_data(args.data_dir, args.seed, args.workers,
                                                               device.type == "cuda")
    model = make_mlp().to(device)
    marks["data_ready"] = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    best, wait, best_epoch, stopped_by = math.inf, 0, 0, "max_epochs"
    overfit = OverfitRule()
    epoch_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="usual-plain-") as tmp:
        ckpt = Path(tmp) / "best.pt"
        for epoch in range(1, args.max_epochs + 1):
            start = time.perf_counter()
            model.train()
            running, correct, seen = 0.0, 0, 0
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                logits = model(x)
                loss = criterion(logits, y)
                loss.backward()
                optimizer.step()
                running += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            model.eval()
            val_loss, val_correct, val_seen = 0.0, 0, 0
            with torch.no_grad():
                for x, y in val_loader:
                    x, y = x.to(device), y.to(device)
                    logits = model(x)
                    val_loss += criterion(logits, y).item() * len(y)
                    val_correct += (logits.argmax(1) == y).sum().item()
                    val_seen += len(y)
            val_loss /= val_seen
            overfitting = overfit.step(val_loss)
            if val_loss < best:
                best, wait, best_epoch = val_loss, 0, epoch
                torch.save(model.state_dict(), ckpt)
            else:
                wait += 1
            epoch_seconds.append(time.perf_counter() - start)
            if args.verbose:
                print(f"epoch {epoch}  train loss {running / seen:.4f} acc {100 * correct / seen:.2f}%  "
                      f"val loss {val_loss:.4f} acc {100 * val_correct / val_seen:.2f}%  {epoch_seconds[-1]:.1f}s",
                      flush=True)
            if overfitting:
                stopped_by = "overfitting"
                break
            if wait >= PATIENCE:
                stopped_by = "stagnation"
                break
        marks["trained"] = time.perf_counter()
        model.load_state_dict(torch.load(ckpt))
    model.eval()
    hits, count = 0, 0
    with torch.no_grad():
        for x, y in test_loader:
            hits += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
            count += len(y)
    marks["tested"] = time.perf_counter()
    return {"epochs_run": len(epoch_seconds), "best_epoch": best_epoch, "stopped_by": stopped_by,
            "best_val_loss": best, "test_accuracy": hits / count, "epoch_seconds": epoch_seconds,
            "train_images": n_train, "tested_weights": "best epoch"}


# ---------------------------------------------------------------- (d) Lightning

def run_lightning(args: argparse.Namespace, marks: dict) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import Callback, EarlyStopping

    marks["imported"] = time.perf_counter()   # lightning's own import counts as an import, not as training

    class LitMLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    class OverfitStop(Callback):
        """reslab's overfitting rule, which Lightning's EarlyStopping lacks."""

        def __init__(self) -> None:
            self.rule, self.fired = OverfitRule(), False

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            if self.rule.step(float(trainer.callback_metrics["val_loss"])):
                self.fired = trainer.should_stop = True

    class EpochClock(Callback):
        """Seconds of each epoch (train + validation), as the other pipelines count them."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.seconds.append(time.perf_counter() - self.start)

    L.seed_everything(args.seed, verbose=False)
    device = torch.device(args.device)
    train_loader, val_loader, test_loader, n_train = make_data(args.data_dir, args.seed, args.workers,
                                                               device.type == "cuda")
    lit = LitMLP()
    marks["data_ready"] = time.perf_counter()
    early, overfit, clock = EarlyStopping(monitor="val_loss", patience=PATIENCE), OverfitStop(), EpochClock()
    with tempfile.TemporaryDirectory(prefix="usual-lightning-") as tmp:
        trainer = L.Trainer(max_epochs=args.max_epochs, accelerator="gpu" if device.type == "cuda" else "cpu",
                            devices=1, callbacks=[early, overfit, clock], enable_progress_bar=False,
                            default_root_dir=tmp)
        trainer.fit(lit, train_loader, val_loader)
        marks["trained"] = time.perf_counter()
        result = trainer.test(lit, dataloaders=test_loader, verbose=False)
        marks["tested"] = time.perf_counter()
    stopped_by = ("overfitting" if overfit.fired else "stagnation" if early.stopped_epoch > 0 else "max_epochs")
    return {"epochs_run": len(clock.seconds), "best_epoch": None, "stopped_by": stopped_by,
            "best_val_loss": float(early.best_score), "test_accuracy": float(result[0]["test_acc"]),
            "epoch_seconds": clock.seconds, "train_images": n_train, "tested_weights": "last epoch",
            "lightning_version": L.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pipeline", choices=["plain", "lightning"])
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding MNIST/raw")
    p.add_argument("--result", type=Path, required=True, help="write the result here as JSON")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers (default 0)")
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--verbose", action="store_true", help="(c): one line per epoch")
    args = p.parse_args(argv)
    marks = {"imported": time.perf_counter()}
    result = (run_plain if args.pipeline == "plain" else run_lightning)(args, marks)
    result.update(pipeline=args.pipeline, workers=args.workers, threads=torch.get_num_threads(),
                  torch_version=str(torch.__version__), python=sys.executable, pid=os.getpid(),
                  # seconds since this process's first line: imports, data ready, trained, tested
                  marks={k: v - T_START for k, v in marks.items()})
    args.result.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
