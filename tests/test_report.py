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
    assert "| Model | Depth | Epochs | Test Loss | Test Accuracy (%) | Test Precision (%) | Reference (%) | " in report
    summaries = [json.loads((ex1_2 / f"resmlp-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
    accuracies = [100 * s["test_accuracy"] for s in summaries]
    mean = sum(accuracies) / 2
    std = abs(accuracies[0] - accuracies[1]) / 2 ** 0.5
    row = next(line for line in report.splitlines() if line.startswith("| resmlp |"))
    assert f"| {mean:.2f} ± {std:.2f} |" in row and "| 97.7 |" in row
    assert "| fc1 |" in report and "mlp 0.19, resmlp 0.466" in report


def test_report_states_quick_profile_data_and_protocol(ex1_2):
    report = (ex1_2 / "report.md").read_text()
    assert "**Quick run** (`--profile quick`): shrunk from the full protocol: train.epochs 50 → 8" in report
    assert "**Data is not the official release**: the mnist files" in report
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
