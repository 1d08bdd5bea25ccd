"""bench/study_flops.py: the FLOP count it plans GPU leases with, checked against arithmetic done by hand."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study_flops", REPO / "bench" / "study_flops.py")
study_flops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_flops)

LAYERS = [(784, 128), (128, 64), (64, 10)]   # the MLP's linear layers


def test_the_mlp_step_is_counted_as_its_matrix_products():
    params, train_step, forward = study_flops.step_flops("mlp", {}, "mnist", 128)
    assert params == sum(i * o + o for i, o in LAYERS)
    assert forward == sum(2 * i * o for i, o in LAYERS)                 # per image
    # forward, the weights' gradients (as many), the inputs' gradients of every layer but the first
    assert train_step == 128 * (2 * forward + sum(2 * i * o for i, o in LAYERS[1:]))


def test_a_run_folder_is_counted_with_its_own_model_splits_and_epochs(tmp_path):
    run = tmp_path / "ex1" / "mlp-seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "mlp", "dataset": "mnist", "epochs": 50,
                                                     "data_official": True}))
    summary = {"model": "mlp", "model_args": {"hidden": [128, 64], "dropout": 0.2}, "epochs_run": 2,
               "train_seconds": 4.0, "dataset": "mnist", "seed": 0, "test_accuracy": 0.9, "test_precision": 0.9,
               "test_loss": 0.3, "best_epoch": 2, "stopped_by": "stagnation"}   # what reslab checks in one
    (run / "summary.json").write_text(json.dumps(summary))
    (row,) = study_flops.measured_rows(tmp_path)
    _, train_step, forward = study_flops.step_flops("mlp", {}, "mnist", 128)
    per_epoch = train_step / 128 * 54000 + forward * 6000               # 90/10 split of 60,000 images
    assert abs(row["tflop"] - 2 * per_epoch / 1e12) < 1e-12 and row["seconds"] == 4.0


def test_the_command_prints_the_lab_and_the_time_at_a_rate():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "study_flops.py"), "--experiments", "ex1,ex2.1",
                          "--seeds", "2", "--rate", "100:test"], capture_output=True, text=True, check=True).stdout
    assert "ex2.1      finetune" in out and "6.03M" in out                # ex1.3's rescnn6 with a 100-class head
    assert "at 100.0 TFLOP/s sustained (test):" in out


def test_another_width_changes_the_conv_nets_only():
    default = {r["run"]: r for r in study_flops.run_rows("ex1.3", "full", {})}
    narrow = {r["run"]: r for r in study_flops.run_rows("ex1.3", "full", {"model_args": {"width": 64}})}
    assert narrow["cnn2"]["params"] == default["cnn2"]["params"]             # the Simple CNN is 64 wide already
    assert narrow["rescnn2"]["params"] < default["rescnn2"]["params"] / 3
    rows = study_flops.run_rows("ex1.2", "full", {"model_args": {"width": 64}})
    (resmlp,) = [r for r in rows if r["run"] == "resmlp"]
    assert resmlp["params"] == study_flops.step_flops("resmlp", {}, "mnist", 128)[0]   # its width is not a conv's


def test_a_user_s_mistake_is_one_line_and_exit_2():
    script = str(REPO / "bench" / "study_flops.py")
    for args, message in ((["--measured", "rescnn=2.0"], "want MODEL:DEPTH:WIDTH=SECONDS"),
                          (["--experiments", "ex9"], "error: unknown experiment 'ex9'")):
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
