"""report.md: generated from the run folders alone, identical when regenerated, with its tables and figures."""
from __future__ import annotations

import json
import shutil

import pytest

from reslab import study
from reslab.errors import ReslabError
from reslab.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ex1_2(tmp_path_factory):
    """ex1.2 (MLP and residual MLP, gradient flow) on tiny MNIST with two seeds, quick profile."""
    from fakedata import write_idx_dataset
    data = tmp_path_factory.mktemp("data")
    write_idx_dataset(data, "MNIST/raw")
    out = tmp_path_factory.mktemp("runs")
    study.run_experiment("ex1.2", seeds=2, profile="quick", overrides={"epochs": 2, "wandb": "disabled",
                                                                       "train_subset": 100, "data_dir": str(data),
                                                                       "out": str(out)})
    return out / "ex1.2"


def test_report_is_regenerated_identically(ex1_2):
    first = (ex1_2 / "report.md").read_text()
    path = write_report(ex1_2)
    assert path == ex1_2 / "report.md"
    assert path.read_text() == first


def test_report_moves_with_its_folder(ex1_2, tmp_path):
    """Only the folder's own files feed the report: a copy elsewhere gives the same text."""
    copy = shutil.copytree(ex1_2, tmp_path / "ex1.2")
    (copy / "report.md").unlink()
    shutil.rmtree(copy / "figures")
    assert write_report(copy).read_text() == (ex1_2 / "report.md").read_text()


def test_figures_are_written_non_empty_pngs(ex1_2):
    report = (ex1_2 / "report.md").read_text()
    names = ["train_loss.png", "val_loss.png", "learning_curves.png", "grad_norms_init.png", "grad_norms_epochs.png"]
    for name in names:
        path = ex1_2 / "figures" / name
        assert f"](figures/{name})" in report
        assert path.stat().st_size > 5000 and path.read_bytes()[:8] == PNG


def test_report_has_the_reference_layout_with_mean_and_std(ex1_2):
    report = (ex1_2 / "report.md").read_text()
    assert ("| Model | Depth | Parameters | Epochs | Test Loss | Test Accuracy (%) | Test Precision (%) | "
            "Reference (%) | ") in report
    summaries = [json.loads((ex1_2 / f"resmlp-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
    accuracies = [100 * s["test_accuracy"] for s in summaries]
    mean = sum(accuracies) / 2
    std = abs(accuracies[0] - accuracies[1]) / 2 ** 0.5
    row = next(line for line in report.splitlines() if line.startswith("| resmlp |"))
    assert f"| {mean:.2f} ± {std:.2f} |" in row and "| 97.73 | 97.8 |" in row
    assert f"| {summaries[0]['num_parameters'] / 1e6:.2f} M |" in row
    assert "| fc1 |" in report and "mlp 0.19, resmlp 0.466" in report


def test_report_states_quick_profile_data_and_protocol(ex1_2):
    report = (ex1_2 / "report.md").read_text()
    assert "**Quick run** (`--profile quick`): shrunk from the full protocol: train.epochs 50 → 8" in report
    assert "**Data is not the official release** (mnist: not the official release (md5 differs" in report
    assert "- Seeds: 0..1; profile: quick" in report
    assert "- Hardware: " in report and "- Wall time of the command" in report
    assert "- Command-line overrides: epochs=2, wandb=disabled, train_subset=100" in report


def test_report_of_a_folder_without_results_is_an_error(tmp_path):
    with pytest.raises(ReslabError, match="holds no study results"):
        write_report(tmp_path)


def test_not_run_exercise_is_reported_with_its_reason(tmp_path):
    (tmp_path / "experiment.yaml").write_text("name: ex2.1\nprofile: full\nseeds: 1\noverrides: {}\n")
    status = {"experiment": "ex2.1", "description": "transfer", "profile": "full", "seeds": 1, "status": "not run",
              "reason": "cifar100: missing", "runs": [], "wall_seconds": 0.1}
    (tmp_path / "study.json").write_text(json.dumps(status))
    assert "**Not run**: cifar100: missing" in write_report(tmp_path).read_text()


def _fake_run(folder, model, depth, seed, accuracy, parameters):
    """A finished run folder holding just what the report reads."""
    run_dir = folder / f"{model}{depth}-seed{seed}"
    run_dir.mkdir(parents=True)
    summary = {"model": model, "model_args": {"depth": depth}, "dataset": "cifar10", "seed": seed, "epochs_run": 1,
               "best_epoch": 1, "test_loss": 1.0, "test_accuracy": accuracy, "test_precision": accuracy,
               "stopped_by": "max_epochs", "train_seconds": 1.0, "num_parameters": parameters,
               "hardware": "cpu", "device": "cpu", "data_official": True}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    record = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}
    (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return run_dir.name


def test_report_states_residual_minus_twin_against_the_seed_spread(tmp_path):
    (tmp_path / "experiment.yaml").write_text(
        "name: x\nprofile: full\nseeds: 3\noverrides: {}\nmodels: [{model: rescnn, depths: [2, 6]}, "
        "{model: noskipcnn, depths: [2, 6]}]\ncompare: [[rescnn, noskipcnn]]\n")
    accuracies = {("rescnn", 2): [0.70, 0.72, 0.74], ("noskipcnn", 2): [0.69, 0.73, 0.72],   # differences 1, -1, 2
                  ("rescnn", 6): [0.80, 0.81, 0.82], ("noskipcnn", 6): [0.75, 0.75, 0.76]}   # differences 5, 6, 6
    runs = [_fake_run(tmp_path, model, depth, seed, accuracy, 1_220_000 if model == "rescnn" else 1_190_000)
            for (model, depth), values in accuracies.items() for seed, accuracy in enumerate(values)]
    status = {"experiment": "x", "description": "d", "profile": "full", "seeds": 3, "status": "done",
              "reason": None, "runs": runs, "wall_seconds": 1.0}
    (tmp_path / "study.json").write_text(json.dumps(status))
    report = write_report(tmp_path).read_text()
    rows = {line.split("|")[3].strip(): line for line in report.splitlines()
            if line.startswith("| rescnn | noskipcnn |")}
    # depth 2: mean 0.67, std 1.53 against spreads 2.00 / 2.08: no. depth 6: 5.67 ± 0.58 against 1.00 / 0.58: yes.
    assert rows["2"] == "| rescnn | noskipcnn | 2 | 1.22 M / 1.19 M | 0.67 ± 1.53 | 2.08 | no |"
    assert rows["6"] == "| rescnn | noskipcnn | 6 | 1.22 M / 1.19 M | 5.67 ± 0.58 | 1.00 | yes, A ahead |"
    assert "larger than the larger of the two models' sample std over seeds" in report
    assert ("**Finding at the deepest depth (6)**: rescnn 81.00% against noskipcnn 75.33% (mean of 3 seed(s)): "
            "rescnn is at least as good as noskipcnn, as the lab expects.") in report


@pytest.mark.parametrize("profile, expected", [("quick", "this cannot show the lab's finding"),
                                               ("full", "The lab's finding does not hold in these runs.")])
def test_a_finding_that_does_not_hold_says_why(tmp_path, profile, expected):
    (tmp_path / "experiment.yaml").write_text(
        f"name: x\nprofile: {profile}\nseeds: 1\noverrides: {{}}\nmodels: [{{model: rescnn, depths: [3]}}, "
        "{model: noskipcnn, depths: [3]}]\ncompare: [[rescnn, noskipcnn]]\n")
    runs = [_fake_run(tmp_path, "rescnn", 3, 0, 0.40, 1), _fake_run(tmp_path, "noskipcnn", 3, 0, 0.45, 1)]
    status = {"experiment": "x", "description": "d", "profile": profile, "seeds": 1, "status": "done",
              "reason": None, "runs": runs, "wall_seconds": 1.0}
    (tmp_path / "study.json").write_text(json.dumps(status))
    report = write_report(tmp_path).read_text()
    assert "rescnn 40.00% against noskipcnn 45.00% (mean of 1 seed(s)): rescnn is below noskipcnn." in report
    assert expected in report
