#!/usr/bin/env python3
"""Does the training step captured as a CUDA graph (--cuda-graphs) work here, and how much faster is an epoch?

For the MNIST MLP and the CIFAR-10 residual CNN (depth 3, width 64: the speed targets' models), trains the same
run twice in this process, eager and with --cuda-graphs, same seed and fixed epochs (no early stopping), and
prints seconds per epoch (the median of the epochs after the first, which holds the warm-up and the capture),
their ratio, and both runs' test accuracy. Exit status 0 when every graphed run finished with a finite loss and
replayed its graph (summary.json's cuda_graph):
bench/gpu_lab.sh then trains the lab's runs with --cuda-graphs; 1 otherwise (they train eagerly); 2 with a one-line
error for a mistake in what it was given (a missing dataset, a bad --data-dir or --device).

    python bench/graphs_check.py --data-dir DATA --device cuda     # on the GPU (bench/gpu_lab.sh runs it)
    python bench/graphs_check.py --data-dir DATA --smoke            # seconds on the CPU: graphs are ignored there
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reslab.config import TrainConfig  # noqa: E402
from reslab.errors import ReslabError  # noqa: E402
from reslab.run import run_training  # noqa: E402
from reslab.runfolder import read_jsonl  # noqa: E402

MODELS = {"mlp": ("mnist", {}), "rescnn": ("cifar10", {"depth": 3, "width": 64})}


def one_run(out: Path, name: str, graphs: bool, args: argparse.Namespace) -> dict:
    dataset, model_args = MODELS[name]
    if args.smoke:
        model_args = {**model_args, "width": 8} if name == "rescnn" else model_args
    config = TrainConfig(model=name, dataset=dataset, model_args=model_args, data_dir=args.data_dir,
                         epochs=args.epochs, device=args.device, cuda_graphs=graphs, stagnation_stop=False,
                         overfit_stop=False, wandb="disabled", out=str(out), name=f"{name}-{graphs}",
                         train_subset=100 if args.smoke else None, val_fraction=0.2 if args.smoke else 0.1,
                         threads=1 if args.smoke else None)
    start = time.perf_counter()
    summary = run_training(config, console=False)
    epochs = [m["seconds"] for m in read_jsonl(out / config.name / "metrics.jsonl") if "seconds" in m]
    later = epochs[1:] or epochs
    # On a GPU a graphed run must really have replayed a graph (summary.json's cuda_graph); on the CPU none is.
    replayed = summary.get("cuda_graph", False) == (graphs and args.device.startswith("cuda"))
    return {"ok": summary["stopped_by"] == "max_epochs" and math.isfinite(summary["test_loss"]) and replayed,
            "s_epoch": statistics.median(later), "first": epochs[0], "acc": 100 * summary["test_accuracy"],
            "wall": time.perf_counter() - start}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--models", default="mlp,rescnn")
    p.add_argument("--smoke", action="store_true", help="tiny runs on the CPU (the test runs this)")
    args = p.parse_args()
    if args.smoke:
        args.device, args.epochs = "cpu", 2
    print(f"CUDA graphs check: device {args.device}, {args.epochs} epochs a run, eager then --cuda-graphs")
    print(f"  {'model':8s} {'eager s/epoch':>14s} {'graphs s/epoch':>15s} {'eager/graphs':>13s} "
          f"{'1st epoch eager / graphs':>25s} {'test acc eager / graphs':>24s}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            try:
                eager = one_run(Path(tmp), name, False, args)
                graphed = one_run(Path(tmp), name, True, args)
            except ReslabError as exc:   # a missing dataset, a bad --data-dir or --device: one line, as reslab says it
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except Exception:   # any other failure means: train eagerly; the traceback says why
                traceback.print_exc()
                print(f"  {name:8s} failed: the lab trains eagerly")
                ok = False
                continue
            ok &= graphed["ok"]
            print(f"  {name:8s} {eager['s_epoch']:14.3f} {graphed['s_epoch']:15.3f} "
                  f"{eager['s_epoch'] / graphed['s_epoch']:12.2f}x {eager['first']:11.2f} / {graphed['first']:<11.2f} "
                  f"{eager['acc']:10.2f} / {graphed['acc']:<10.2f}" + ("" if graphed["ok"] else "  NOT FINISHED"))
    if not args.device.startswith("cuda"):
        print(f"CUDA graphs: none on {args.device}; every run trained eagerly, as it should" + ("" if ok else
              ", but a run failed"))
    else:
        print(f"CUDA graphs: {'usable' if ok else 'not usable'} here")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
