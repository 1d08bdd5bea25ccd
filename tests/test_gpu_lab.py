"""bench/gpu_lab.sh --smoke: the GPU script runs every step on the CPU, so it cannot rot between GPU runs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_lab_smoke(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_lab.sh"), str(out), "--smoke"], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "finished with 0 failed step(s)" in proc.stdout
    for step in ("ex1.3 seed 0 done (rc 0)", "ex1 done (rc 0)", "ex1.2 done (rc 0)"):
        assert step in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bench.txt", "log.txt", "report-ex1.2.md", "report-ex1.3.md", "report-ex1.md", "runs.tar.gz",
                     "timing.md"]
    assert len(names) <= 8                                   # what the device tool brings back
    timing = (out / "timing.md").read_text().splitlines()
    assert len([line for line in timing if line.startswith("| ex1.3 |")]) == 9
    with tarfile.open(out / "runs.tar.gz") as tar:
        members = tar.getnames()
        assert not [m for m in members if m.endswith(".pth")]   # no checkpoints travel back
        summaries = [m for m in members if m.endswith("summary.json")]
        assert {m.split("/")[2] for m in summaries if m.startswith("runs/ex1.3/")} == {
            f"{model}{depth}-seed0" for model in ("cnn", "rescnn", "noskipcnn") for depth in (2, 3, 6)}
        one = json.load(tar.extractfile("runs/ex1.3/rescnn6-seed0/summary.json"))
        assert one["epochs_run"] == 1 and one["model_args"]["depth"] == 6


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_lab_past_its_deadline_skips_training_and_still_returns_the_log(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "RESLAB_GPU_DEADLINE": "0"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_lab.sh"), str(out), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stdout.count("deadline reached: skipped reslab run") == 3   # ex1.3, ex1, ex1.2
    assert "finished with 3 failed step(s)" in proc.stdout
    assert "finished with 3 failed step(s)" in (out / "log.txt").read_text()
