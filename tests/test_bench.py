"""bench/epoch_speed.py --smoke: runs in seconds on generated data and prints every figure and ratio."""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROWS = ("(a) reslab train_model", "(b) bare loop, train + val", "(c) DataLoader, tensor, w=0",
        "(c) DataLoader, pil, w=0")
TITLES = {"mlp": "MNIST MLP 784-128-64-10", "resmlp": "MNIST residual MLP", "rescnn": "CIFAR-10 residual CNN"}
NUMBER = r"\d+\.\d+"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    """One smoke run of the benchmark: its stdout and its --json figures."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "epoch_speed.py"), "--smoke", "--repeat", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out.read_text())


def test_smoke_prints_seconds_images_memory_and_ratios_for_every_model(smoke):
    stdout, figures = smoke
    for key, title in TITLES.items():
        assert title in stdout
        section = stdout.split(title, 1)[1].split("\n\n", 1)[0]
        for row in ROWS:
            # seconds/epoch median [min-max], train images/s, peak MiB
            assert re.search(re.escape(row) + rf"\s+{NUMBER}\s+\[{NUMBER}-{NUMBER}\]\s+[\d,]+\s+-?\d+", section), \
                f"{key}: no figures for {row}:\n{section}"
        for ratio in ("a/b", r"c/a \(tensor, w=0\)", r"c/a \(pil, w=0\)"):
            assert re.search(ratio + rf"\s+{NUMBER}\s+\[{NUMBER}-{NUMBER}\]\s+{NUMBER}", section), \
                f"{key}: no {ratio} ratio:\n{section}"
    assert set(figures["models"]) == set(TITLES)
    assert figures["smoke"] is True and figures["threads"] == 1


def test_smoke_figures_are_consistent(smoke):
    _, figures = smoke
    mlp, cnn = figures["models"]["mlp"], figures["models"]["rescnn"]
    # fakedata: 200 MNIST and 150 CIFAR-10 training images; 10% of each class held out, rounded as reslab
    # rounds it (1.5 -> 2)
    assert (mlp["train_images"], mlp["val_images"]) == (180, 20)
    assert (cnn["train_images"], cnn["val_images"]) == (130, 20)
    for result in (mlp, cnn):
        seconds = result["seconds_per_epoch"]
        assert set(seconds) == {"a", "b", "c-tensor-w0", "c-pil-w0"}
        assert all(len(v) == 2 and all(s > 0 for s in v) for v in seconds.values())
        assert result["median_seconds_per_epoch"]["a"] == statistics.median(seconds["a"])
        per_repeat = [a / b for a, b in zip(seconds["a"], seconds["b"])]
        assert result["ratios"]["a/b"]["median"] == statistics.median(per_repeat)
        assert result["ratios"]["c-pil-w0/a"]["of_min_times"] == min(seconds["c-pil-w0"]) / min(seconds["a"])
        assert all(isinstance(v, float) for v in result["peak_mib"].values())


def test_bad_model_name_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "epoch_speed.py"), "--smoke", "--models", "vit"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "unknown model vit; choose from mlp, resmlp, rescnn" in proc.stderr
