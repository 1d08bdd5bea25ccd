"""bench/gpu_lab.sh --smoke: the GPU script runs every step on the CPU, so it cannot rot between GPU runs."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The steps in their order (--smoke: ex1 and ex1.2 with one seed, then seed 1 of ex1.3 and ex2.1). Within a seed's
# round ex2.1 runs beside ex1.3's other runs; the round ends with ex1.3 over all its runs.
STEPS = ("ex2.1 seed 0 done (rc 0)", "ex1.3 seed 0 done (rc 0)", "speed benchmark:", "ex1 done (rc 0)",
         "ex1.2 done (rc 0)", "ex2.1 seed 1 done (rc 0)", "ex1.3 seed 1 done (rc 0)", "ex1.3-deep done (rc 0)")
MODELS = {f"{model}{depth}" for model in ("cnn", "rescnn", "noskipcnn") for depth in (2, 3, 6)}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_lab_smoke(tmp_path):
    out = tmp_path / "out"
    # 137 s on 2 idle cores, 205 s beside another test process (2026-12-03): the timeout only catches a hang.
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_lab.sh"), str(out), "--smoke"], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "finished with 0 failed step(s)" in proc.stdout
    places = [proc.stdout.find(step) for step in STEPS]
    assert -1 not in places, [step for step, place in zip(STEPS, places) if place == -1]
    assert places == sorted(places)                          # in priority order
    for seed in (0, 1):   # the other 8 runs of ex1.3 in priority order, rescnn6 left to ex2.1
        assert f"ex1.3 seed {seed} without rescnn6 done (rc 0)" in proc.stdout
    order = [proc.stdout.find(f"-- ex1.3: {label} seed 0\n") for label in
             ("noskipcnn6", "rescnn3", "noskipcnn3", "rescnn2", "noskipcnn2", "cnn6", "cnn3", "cnn2")]
    assert -1 not in order and order == sorted(order)
    # ex2.1 trains rescnn6-seed0; ex1.3's call over all its runs reuses it.
    assert proc.stdout.count("training source rescnn6-seed0 ") == 1
    assert re.search(r"reusing finished run \S+/ex1\.3/rescnn6-seed0\n", proc.stdout)
    benchmark = "study_speed.py" if (ROOT / "bench" / "study_speed.py").is_file() else "epoch_speed.py instead"
    assert f"speed benchmark: bench/{benchmark}" in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    expected = ["bench.txt", "log.txt", "reports.md", "runs.tar.gz", "timing.md"]
    assert names == sorted(expected + (["bench.json"] if benchmark == "study_speed.py" else []))
    assert len(names) <= 8                                   # what the device tool brings back
    assert "separate/batched" in (out / "bench.txt").read_text()   # bench/batched_seeds.py ran, and checked itself
    assert "CUDA graphs: none on cpu; every run trained eagerly, as it should\n" in (out / "bench.txt").read_text()
    assert "the runs train with --cuda-graphs" in proc.stdout
    reports = (out / "reports.md").read_text()
    for exp in ("ex1.3", "ex2.1", "ex1", "ex1.2", "ex1.3-deep"):   # every experiment's report comes back
        assert f"<!-- {exp}/report.md -->\n# reslab report: {exp}\n" in reports
    timing = (out / "timing.md").read_text().splitlines()
    assert timing[0].endswith("| stopped by | data |")         # with the data provenance
    rows = {exp: [line for line in timing if line.startswith(f"| {exp} |")]
            for exp in ("ex1.3", "ex2.1", "ex1", "ex1.2", "ex1.3-deep")}
    assert len(rows["ex1.3"]) == 18                          # every run folder, both seeds
    assert len([line for line in rows["ex1.3"] if "-seed0 |" in line]) == 9
    assert len(rows["ex2.1"]) == 8                           # 3 probes and the fine-tuning, seeds 0 and 1
    assert len([line for line in rows["ex2.1"] if " probe: fit " in line]) == 6
    assert (len(rows["ex1"]), len(rows["ex1.2"]), len(rows["ex1.3-deep"])) == (1, 2, 6)
    assert all(line.endswith("| not the official release (md5 differs from the official files) |")
               for lines in rows.values() for line in lines)   # fakedata's files, and the table says so
    with tarfile.open(out / "runs.tar.gz") as tar:
        members = tar.getnames()
        assert not [m for m in members if m.endswith(".pth")]   # no checkpoints travel back
        summaries = [m for m in members if m.endswith("summary.json")]
        assert {m.split("/")[2] for m in summaries if m.startswith("runs/ex1.3/")} == {
            f"{model}-seed{seed}" for model in MODELS for seed in (0, 1)}
        assert {m.split("/")[2] for m in summaries if m.startswith("runs/ex2.1/")} == {
            f"{method}-seed{seed}" for method in ("svm", "knn", "logreg", "finetune") for seed in (0, 1)}
        one = json.load(tar.extractfile("runs/ex1.3/rescnn6-seed0/summary.json"))
        assert one["epochs_run"] == 1 and one["model_args"]["depth"] == 6
        tuned = json.load(tar.extractfile("runs/ex2.1/finetune-seed0/summary.json"))
        assert tuned["dataset"] == "cifar100" and tuned["model_args"]["depth"] == 6   # ex1.3's rescnn6, reused
        assert "reusing source" in proc.stdout and "/ex1.3/rescnn6-seed0" in proc.stdout
        assert "runs/ex2.1/report.md" in members and "runs/ex1.3-deep/report.md" in members


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_lab_past_its_deadline_skips_training_and_still_returns_the_log(tmp_path):
    out = tmp_path / "out"
    # An earlier lease's finished runs (bench/earlier_runs.py): an MLP, and ex2.1's source with one probe, whose
    # weights came along (weights.json, and the part in a folder of their own).
    summary = {"model": "mlp", "model_args": {}, "dataset": "mnist", "seed": 0, "test_accuracy": 0.9,
               "test_precision": 0.9, "train_seconds": 1.0}
    trained = {"epochs_run": 3, "best_epoch": 2, "stopped_by": "stagnation", "test_loss": 0.3}
    for run, fields in (("ex1/mlp-seed0", trained), ("ex1.3/rescnn6-seed0", trained), ("ex2.1/svm-seed0", {})):
        (tmp_path / "earlier" / run).mkdir(parents=True)
        (tmp_path / "earlier" / run / "config.yaml").write_text("seed: 0\n")
        (tmp_path / "earlier" / run / "summary.json").write_text(json.dumps({**summary, **fields}))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "weights-ex1.3-rescnn6-seed0.part0").write_bytes(b"weights")
    (tmp_path / "earlier" / "weights.json").write_text(json.dumps({"runs": {"ex1.3/rescnn6-seed0": {
        "file": "best_model.pth", "bytes": 7, "md5": hashlib.md5(b"weights").hexdigest(),
        "parts": ["weights-ex1.3-rescnn6-seed0.part0"]}}}))
    env = {**os.environ, "PYTHON": sys.executable, "RESLAB_GPU_DEADLINE": "0",
           "RESLAB_GPU_EARLIER": str(tmp_path / "earlier"), "RESLAB_GPU_EARLIER_WEIGHTS": str(tmp_path / "weights"),
           "RESLAB_GPU_WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_lab.sh"), str(out), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "ex1: 1 run(s) taken in" in proc.stdout         # taken in before any step, whatever the deadline
    assert "ex1.3: 1 run(s) taken in; with their weights: rescnn6-seed0" in proc.stdout
    assert (tmp_path / "work" / "runs" / "ex1" / "mlp-seed0" / "summary.json").is_file()
    # Its ex2.1 seed is still unfinished: the weights go back out for the next lease, named in runs.tar.gz.
    assert (out / "weights-ex1.3-rescnn6-seed0.part0").read_bytes() == b"weights"
    assert len(list(out.iterdir())) <= 8
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert json.load(tar.extractfile("runs/weights.json"))["runs"]["ex1.3/rescnn6-seed0"]["bytes"] == 7
    # Every training step, in order: per seed round, ex2.1 beside ex1.3's other runs (two calls), then ex1.3 over
    # all of them; between the rounds ex1 and ex1.2, after them ex1.3-deep.
    skipped = [line.split("skipped reslab run ")[1].split()[0] for line in proc.stdout.splitlines()
               if "deadline reached: skipped reslab run" in line]
    for first in (0, 6):
        assert sorted(skipped[first:first + 3]) == ["ex1.3", "ex1.3", "ex2.1"] and skipped[first + 3] == "ex1.3"
    assert skipped[4:6] + skipped[10:] == ["ex1", "ex1.2", "ex1.3-deep"]
    assert "deadline reached: skipped the speed benchmark" in proc.stdout
    # Counted: ex2.1 and ex1.3 (the call over all its runs) per round, the benchmark, ex1, ex1.2, ex1.3-deep.
    assert "finished with 8 failed step(s)" in proc.stdout
    assert "finished with 8 failed step(s)" in (out / "log.txt").read_text()


def load_timing_table():
    spec = importlib.util.spec_from_file_location("timing_table", ROOT / "bench" / "timing_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timing_table_covers_every_run_folder(tmp_path):
    """Trained runs, probes, and a run killed before its summary; seeds in order; provenance from either file."""
    def run(path: str, summary: dict | None = None, config: str = "", metrics: list[dict] | None = None) -> None:
        folder = tmp_path / path
        folder.mkdir(parents=True)
        if summary is not None:
            (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "config.yaml").write_text(config)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics or []))
    trained = {"epochs_run": 4, "train_seconds": 10.0, "test_accuracy": 0.8512, "stopped_by": "overfitting",
               "hardware": "GPU X", "data_provenance": "CIFAR-10: 59889/60000 images exact"}
    for seed in (10, 2, 0):
        run(f"ex1.3/rescnn6-seed{seed}", {**trained, "cuda_graph": seed == 2})
    run("ex2.1/svm-seed0", {"method": "svm", "train_seconds": 3.0, "extract_seconds": 1.5, "test_accuracy": 0.25,
                            "hardware": "GPU X", "data_provenance": "official release (md5 verified)"})
    run("ex1.3-deep/rescnn27-seed0", config="hardware: GPU X\ndata_provenance: official release\n",
        metrics=[{"epoch": 1, "seconds": 2.0}, {"epoch": 2, "seconds": 3.0}])
    rows = load_timing_table().timing_rows(tmp_path)
    assert [row.split(" | ")[1] for row in rows] == [
        "rescnn6-seed0", "rescnn6-seed2", "rescnn6-seed10", "rescnn27-seed0", "svm-seed0"]
    assert rows[0] == "| ex1.3 | rescnn6-seed0 | GPU X | 4 | 2.50 | 10.0 | 85.12 | overfitting | " \
                      "CIFAR-10: 59889/60000 images exact |"
    assert rows[1].startswith("| ex1.3 | rescnn6-seed2 | GPU X (CUDA graph) | 4 |")
    assert rows[3] == "| ex1.3-deep | rescnn27-seed0 | GPU X | 2 | 2.50 | 5.0 | – | unfinished (no summary.json) | " \
                      "official release |"
    assert rows[4] == "| ex2.1 | svm-seed0 | GPU X | – | – | 3.0 | 25.00 | svm probe: fit (features 1.5 s) | " \
                      "official release (md5 verified) |"
