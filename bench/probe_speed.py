#!/usr/bin/env python3
"""ex2.1's linear-SVM probe: scikit-learn's LinearSVC alone against reslab's probe (the same one-vs-rest binary
problems, fitted on every core), side by side on features shaped like the full protocol's.

The features are synthetic (class centres plus noise, through a ReLU, as pooled CNN features are non-negative):
the solver's work depends on their shape and separability, not on where they come from. Prints both fit times,
their ratio, and whether the two classifiers agree.

    python bench/probe_speed.py                      # 45,000 x 256, 100 classes: CIFAR-100, rescnn6 width 128
    python bench/probe_speed.py --samples 20000 --features 64
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reslab.config import TransferSettings  # noqa: E402
from reslab.transfer import make_probes  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=45000)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--classes", type=int, default=100)
    args = p.parse_args()
    if min(args.samples, args.features, args.classes) < 1 or args.samples < 2 * args.classes:
        p.error("--samples, --features and --classes must be 1 or more, with at least 2 samples a class")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.samples)
    centres = rng.normal(size=(args.classes, args.features))
    x = np.maximum(0.5 * centres[y] + rng.normal(size=(args.samples, args.features)), 0).astype(np.float32)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"linear SVM probe: {args.samples} x {args.features} features, {args.classes} classes, {cores} cores")
    fitted, seconds = {}, {}
    for name, model in (("LinearSVC alone", make_pipeline(StandardScaler(), LinearSVC(C=1.0))),
                        ("reslab's probe", make_probes(TransferSettings(svm_c=1.0))["svm"])):
        start = time.perf_counter()
        fitted[name] = model.fit(x, y)
        seconds[name] = time.perf_counter() - start
        print(f"  {name:<16} fit {seconds[name]:7.1f} s")
    a, b = (fitted[name].predict(x) for name in fitted)
    alone, ours = seconds.values()
    print(f"  ratio (alone / reslab's): {alone / ours:.2f}x; same prediction on {100 * (a == b).mean():.2f}% of the "
          f"training features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
