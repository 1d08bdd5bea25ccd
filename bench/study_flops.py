#!/usr/bin/env python3
"""How much arithmetic the lab's training is, and the least time it can take at a given sustained speed.

Counts each run's FLOPs with torch's FlopCounterMode on the meta device (no data, no weights, seconds on a CPU):
a training step (forward + backward, one batch) and a validation forward pass, for every model of the shipped
experiments at a profile, times the images of its splits and its epoch limit (early stopping ends most runs
sooner). Then the seconds that many FLOPs take at sustained speeds given with --rate, or with --measured (a
CIFAR-10 epoch timed somewhere: its FLOPs over its seconds). With --runs, the same count for finished run
folders (each its own model, splits and epochs run) over their training seconds: the speed they reached.

    python bench/study_flops.py                                   # the lab, full protocol, 3 seeds
    python bench/study_flops.py --measured rescnn:3:64=2.001 --rate 989:H200-bf16-dense-peak
    python bench/study_flops.py --runs bench/results/2026-11-27-h100/runs
    python bench/study_flops.py --width 64                        # what width-64 residual nets would cost

Counted: convolutions and matrix products (FlopCounterMode's ops), forward and backward; not counted: elementwise
ops, normalization, the optimizer, data handling, and ex2.1's probes themselves (scikit-learn on the CPU; their
feature extraction, a forward pass over the images, is the `probes` row). ex2.1's `staged` fine-tuning counts its
head-only epochs as a forward pass an image.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reslab.config import TrainConfig, TransferSettings, load_yaml  # noqa: E402
from reslab.datasets import get_spec  # noqa: E402
from reslab.errors import ReslabError  # noqa: E402
from reslab.experiments import load_experiment, source_config, target_config, train_configs  # noqa: E402
from reslab.models import build_model  # noqa: E402
from reslab.runfolder import read_json  # noqa: E402

# The official releases' training and test images: what the splits are cut from.
IMAGES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000),
          "cifar100": (50000, 10000)}
LAB = ("ex1", "ex1.2", "ex1.3", "ex2.1")
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}
CONV_NETS = ("cnn", "rescnn", "noskipcnn")   # the models --width applies to


def step_flops(model: str, model_args: dict, dataset: str, batch: int, num_classes: int | None = None
               ) -> tuple[int, float, float]:
    """(parameters, FLOPs of one training step on `batch` images, FLOPs of a forward pass per image)."""
    spec = get_spec(dataset)
    with torch.device("meta"):
        net = build_model(model, spec.input_shape, num_classes or spec.num_classes, **model_args)
        x = torch.empty(batch, *spec.input_shape)
        y = torch.zeros(batch, dtype=torch.long)
    params = sum(p.numel() for p in net.parameters())
    train = FlopCounterMode(display=False)
    with train:
        nn.functional.cross_entropy(net(x), y).backward()
    forward = FlopCounterMode(display=False)
    with forward, torch.no_grad():
        net(x)
    return params, train.get_total_flops(), forward.get_total_flops() / batch


def split_sizes(config) -> tuple[int, int, int]:
    """(train, val, test) images of a run: the val share of the training images, then train_subset."""
    n_train, n_test = IMAGES[config.dataset]
    val = round(n_train * config.val_fraction)
    train = n_train - val
    if config.train_subset is not None:
        train = min(train, config.train_subset)
    return train, val, n_test


def run_rows(name: str, profile: str, overrides: dict) -> list[dict]:
    """One row per run of an experiment (one seed): its FLOPs per epoch and the epoch limit."""
    experiment = load_experiment(name, profile)
    rows = []
    if experiment.get("kind", "train") == "train":
        plain = dict(train_configs(experiment, 0, {}, Path("runs")))
        for label, config in train_configs(experiment, 0, overrides, Path("runs")):
            config = config if config.model in CONV_NETS else plain[label]   # resmlp's width is not a conv's
            rows.append(row(name, label, config.model, config.model_args, config, None))
    else:   # a transfer: the source network fine-tuned with a fresh head on the target dataset
        source = source_config(experiment, 0, overrides, Path("runs") / name)
        target = target_config(experiment, 0, overrides, Path("runs") / name)
        settings = TransferSettings.from_dict(experiment.get("transfer", {}))
        train, val, test = split_sizes(target)
        for method in [m for m in settings.methods if m in ("finetune", "staged")]:
            r = row(name, method, source.model, source.model_args, target, get_spec(target.dataset).num_classes)
            if method == "staged":   # its first epochs train the head alone: about a forward pass an image
                head = min(settings.head_epochs, target.epochs - 1)
                r["extra_tflop"] = head * (r["forward_flops"] * (train + val) / 1e12 - r["epoch_tflop"])
            rows.append(r)
        if any(m in ("svm", "knn", "logreg") for m in settings.methods):   # the probes' feature extraction
            r = row(name, "probes", source.model, source.model_args, target, get_spec(target.dataset).num_classes)
            r.update(train_gflop_img=r["forward_flops"] / 1e9, epoch_tflop=0.0, max_epochs=0,
                     extra_tflop=r["forward_flops"] * (train + val + test) / 1e12)
            rows.append(r)
    return rows


def row(experiment: str, label: str, model: str, model_args: dict, config, num_classes: int | None) -> dict:
    params, train_step, forward = step_flops(model, model_args, config.dataset, config.batch_size, num_classes)
    train, val, _ = split_sizes(config)
    per_epoch = train_step / config.batch_size * train + forward * val
    return {"experiment": experiment, "run": label, "params": params, "forward_flops": forward,
            "train_gflop_img": train_step / config.batch_size / 1e9, "epoch_tflop": per_epoch / 1e12,
            "max_epochs": config.epochs, "extra_tflop": 0.0}


def measured_rows(runs: Path) -> list[dict]:
    """Every finished run folder under `runs` (EXPERIMENT/RUN/): its FLOPs as run and its training seconds."""
    rows = []
    for summary_path in sorted(runs.glob("*/*/summary.json")):
        run_dir = summary_path.parent
        summary = read_json(summary_path)   # a damaged file: a one-line ReslabError
        if summary.get("epochs_run") is None or not (run_dir / "config.yaml").is_file():
            continue   # a transfer probe: no epochs
        # The settings it ran with (config.yaml also holds what the run derived); the model's arguments in full,
        # defaults included, from summary.json: a default may have changed since.
        saved = load_yaml(run_dir / "config.yaml")
        config = TrainConfig.from_dict({k: v for k, v in saved.items() if k in TRAIN_KEYS}, str(run_dir))
        r = row(run_dir.parent.name, run_dir.name, summary["model"], summary["model_args"], config, None)
        r["tflop"] = r["epoch_tflop"] * summary["epochs_run"]
        r["epochs"], r["seconds"] = summary["epochs_run"], summary["train_seconds"]
        rows.append(r)
    return rows


def parse_rate(text: str) -> tuple[float, str]:
    """TFLOPS[:LABEL] -> (TFLOP/s, label); a malformed one is argparse's one-line error."""
    value, _, label = text.partition(":")
    try:
        rate = float(value)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"want TFLOPS[:LABEL] with TFLOPS a number above 0, got {text!r}")
    return rate, label or f"{value} TFLOP/s"


def parse_measured(text: str) -> tuple[float, str]:
    """MODEL:DEPTH:WIDTH=SECONDS (one epoch on CIFAR-10 with validation, as bench/epoch_speed.py times it)."""
    spec, _, seconds = text.partition("=")
    try:
        model, depth, width = spec.split(":")
        args = {"depth": int(depth), "width": int(width)}
        r = row("measured", spec, model, args, TrainConfig(model=model, model_args=args, dataset="cifar10"), None)
        rate = r["epoch_tflop"] / float(seconds)
    except (ValueError, ZeroDivisionError, ReslabError) as exc:
        raise argparse.ArgumentTypeError(f"want MODEL:DEPTH:WIDTH=SECONDS such as rescnn:3:64=2.001, got "
                                         f"{text!r} ({exc})") from None
    return rate, f"as {model} d{depth} w{width} ran ({seconds} s/epoch)"


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of 1 or more, got {text!r}")
    return int(text)


def existing_folder(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return Path(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", default=",".join(LAB), help="comma-separated (default: the lab's four)")
    p.add_argument("--profile", default="full")
    p.add_argument("--seeds", type=positive, default=3)
    p.add_argument("--width", type=positive, help="first conv width of the conv nets (as `reslab run --width` sets "
                                             "it): what another width would cost")
    p.add_argument("--runs", type=existing_folder,
                   help="a folder of experiment folders of run folders: the speed they reached")
    p.add_argument("--rate", action="append", default=[], type=parse_rate, metavar="TFLOPS[:LABEL]",
                   help="a sustained speed to turn FLOPs into seconds (repeatable)")
    p.add_argument("--measured", action="append", default=[], type=parse_measured,
                   metavar="MODEL:DEPTH:WIDTH=SECONDS",
                   help="a measured CIFAR-10 epoch (e.g. rescnn:3:64=2.001): its FLOPs over its seconds is a rate")
    args = p.parse_args()
    rates = args.measured + args.rate
    try:
        return report(args, rates)
    except ReslabError as exc:   # an unknown experiment or profile, a bad width
        print(f"error: {exc}", file=sys.stderr)
        return 2


def report(args: argparse.Namespace, rates: list[tuple[float, str]]) -> int:
    """Print the plan's FLOPs, the seconds at each rate and, with --runs, what those runs reached."""

    overrides = {"model_args": {"width": args.width}} if args.width else {}
    rows = [r for name in args.experiments.split(",") for r in run_rows(name, args.profile, overrides)]
    print(f"Training FLOPs of {args.experiments} ({args.profile} profile"
          f"{f', conv nets at width {args.width}' if args.width else ''}), one seed; matmuls and "
          f"convolutions, forward + backward, batch as configured")
    print(f"  {'experiment':<10} {'run':<12} {'params':>8} {'GFLOP/img':>10} {'TFLOP/epoch':>12} {'max ep':>7} "
          f"{'PFLOP':>8}")
    total = 0.0
    for r in rows:
        pflop = (r["epoch_tflop"] * r["max_epochs"] + r["extra_tflop"]) / 1e3
        total += pflop
        print(f"  {r['experiment']:<10} {r['run']:<12} {r['params'] / 1e6:7.2f}M {r['train_gflop_img']:10.3f} "
              f"{r['epoch_tflop']:12.2f} {r['max_epochs']:7d} {pflop:8.3f}")
    print(f"  one seed at the epoch limits: {total:.2f} PFLOP; {args.seeds} seed(s): {total * args.seeds:.2f} PFLOP")
    for rate, label in rates:
        print(f"  at {rate:.1f} TFLOP/s sustained ({label}): {total * args.seeds * 1e3 / rate:.0f} s for "
              f"{args.seeds} seed(s) at the limits; {total * 1e3 / rate:.0f} s a seed")

    if args.runs:
        found = measured_rows(args.runs)
        print(f"\nRuns under {args.runs}: FLOPs as run (own model, splits, epochs run) over train_seconds")
        print(f"  {'experiment':<10} {'run':<16} {'params':>8} {'epochs':>6} {'TFLOP':>8} {'train s':>8} "
              f"{'TFLOP/s':>8}")
        for r in found:
            print(f"  {r['experiment']:<10} {r['run']:<16} {r['params'] / 1e6:7.2f}M {r['epochs']:6d} "
                  f"{r['tflop']:8.1f} {r['seconds']:8.1f} {r['tflop'] / r['seconds']:8.1f}")
        by_group: dict[tuple[str, str], float] = {}
        for r in found:
            key = (r["experiment"], r["run"].rsplit("-seed", 1)[1])
            by_group[key] = by_group.get(key, 0.0) + r["tflop"] / 1e3
        for (experiment, seed), pflop in sorted(by_group.items()):
            print(f"  {experiment} seed {seed}: {pflop * 1e3:.1f} TFLOP as run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
