"""torchrun data parallelism on CPU (gloo): one run folder, ranks in step, same accuracy as one process."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reslab.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "40", "--batch-size", "16",
        "--min-delta", "0.05", "--patience", "2", "--wandb", "disabled", "--name", "run"]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None and
                    shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_ranks(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    out = tmp_path / "ddp"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "reslab", *ARGS,
                           "--data-dir", str(tiny_data), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert [p.name for p in out.iterdir()] == ["run"]               # one run folder
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert proc.stdout.count("test loss") == 1                      # rank 0 alone reports and writes
    rank1 = re.search(r"rank 1: stopped by (\w+) after (\d+) epochs", proc.stdout)
    assert rank1, proc.stdout[-2000:]
    assert (rank1.group(1), int(rank1.group(2))) == (summary["stopped_by"], summary["epochs_run"])
    assert summary["stopped_by"] != "max_epochs"                    # an early stop both ranks agreed on
    lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == summary["epochs_run"]                      # written once, not once per rank

    single = tmp_path / "single"
    assert main([*ARGS, "--data-dir", str(tiny_data), "--out", str(single)]) == 0
    alone = json.loads((single / "run" / "summary.json").read_text())
    assert abs(alone["test_accuracy"] - summary["test_accuracy"]) <= 0.02
