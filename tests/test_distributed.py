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


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None and
                    shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_runs_a_whole_experiment(tiny_data, tmp_path):
    """Several runs in one torchrun job: the process group outlives each run; rank 0 alone writes the study."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "reslab", "run", "ex1.2",
                           "--epochs", "2", "--batch-size", "16", "--wandb", "disabled", "--data-dir", str(tiny_data),
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    folder = tmp_path / "ex1.2"
    assert json.loads((folder / "study.json").read_text())["runs"] == ["mlp-seed0", "resmlp-seed0"]
    for run in ("mlp-seed0", "resmlp-seed0"):
        assert json.loads((folder / run / "summary.json").read_text())["world_size"] == 2
    assert proc.stdout.count("rank 1: stopped by") == 2
    assert proc.stdout.count("== ex1.2") == 1 and proc.stdout.count("report:") == 1
    assert (folder / "report.md").is_file() and (folder / "gradient_flow.json").is_file()


def test_what_cannot_run_under_torchrun_is_refused(tmp_path, monkeypatch):
    from reslab import study
    from reslab.errors import ConfigError
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="without torchrun"):
        study.run_experiment("ex2.1", overrides={"out": str(tmp_path)})
    with pytest.raises(ConfigError, match="lab cannot run under torchrun"):
        study.run_lab(overrides={"out": str(tmp_path)})
