"""bench/earlier_runs.py: a later GPU lease takes in the finished runs of earlier ones, and reslab reuses them."""
from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

from reslab import study

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("earlier_runs", ROOT / "bench" / "earlier_runs.py")
earlier_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(earlier_runs)


# The fields reslab requires of every summary.json (reslab.runfolder.FIELDS), plus a trained run's or a probe's.
COMMON = {"model": "mlp", "model_args": {}, "dataset": "mnist", "seed": 0, "test_accuracy": 0.9,
          "test_precision": 0.9, "train_seconds": 1.0}
TRAINED = {"epochs_run": 3, "best_epoch": 2, "test_loss": 0.3}


def make_run(root: Path, path: str, summary: dict | None) -> Path:
    run = root / path
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "metrics.jsonl").write_text("{}\n")
    (run / ".reslab.lock").write_text("")
    if summary is not None:
        fields = {**COMMON, **({} if "method" in summary else TRAINED), **summary}
        (run / "summary.json").write_text(json.dumps(fields))
        (run / "best_model.pth").write_bytes(b"weights")     # as a run folder holds them here
    return run


def pack(source: Path, tarball: Path) -> Path:
    """As bench/gpu_lab.sh packs its runs: runs/<experiment>/<run>/..., no checkpoints."""
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(source, arcname="runs", filter=lambda info: None if info.name.endswith(".pth") else info)
    return tarball


def lease_one(tmp_path: Path) -> Path:
    earlier = tmp_path / "earlier"
    done = {"stopped_by": "stagnation", "test_accuracy": 0.9}
    make_run(earlier, "ex1/mlp-seed0", done)
    make_run(earlier, "ex1/mlp-seed1", {"stopped_by": "interrupted"})   # cut by the deadline
    make_run(earlier, "ex1/mlp-seed2", None)                            # killed before its summary
    make_run(earlier, "ex1.3/rescnn6-seed0", done)
    make_run(earlier, "ex1.3/rescnn6-seed1", done)                      # its ex2.1 seed did not finish
    make_run(earlier, "ex1.3/cnn2-seed0", done)
    for probe in ("svm", "knn", "logreg"):   # a probe has no stopped_by
        make_run(earlier, f"ex2.1/{probe}-seed0", {"method": probe, "source_dataset": "cifar10"})
    make_run(earlier, "ex1/mlp-seed3", {"stopped_by": "stagnation", "seed": "three"})   # damaged: trained again
    make_run(earlier, "ex2.1/finetune-seed0", done)
    make_run(earlier, "ex2.1/finetune-seed1", {"stopped_by": "interrupted"})
    make_run(earlier, "ex1.3/rescnn6-seed2", done)                      # its ex2.1 seed lacks a probe (logreg)
    for method in ("svm", "knn", "finetune"):
        make_run(earlier, f"ex2.1/{method}-seed2", done)
    (earlier / "ex1" / "report.md").write_text("# report\n")            # experiment files are written anew
    return earlier


def test_finished_runs_are_taken_in_and_the_rest_trained_again(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "ex1.3/cnn2-seed0", {"stopped_by": "max_epochs", "test_accuracy": 0.5})   # this lease's
    tarball = pack(lease_one(tmp_path), tmp_path / "runs.tar.gz")
    assert earlier_runs.main([str(tarball), str(runs)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ex1: 1 run(s) taken in; cut short, trained again: mlp-seed1, mlp-seed2, mlp-seed3",
        "ex1.3: 1 run(s) taken in; transfer seed incomplete, trained again: rescnn6-seed1, rescnn6-seed2; "
        "this lease's kept: cnn2-seed0",
        "ex2.1: 4 run(s) taken in; cut short, trained again: finetune-seed1; transfer seed incomplete, trained "
        "again: finetune-seed2, knn-seed2, svm-seed2"]
    taken = sorted(str(p.parent.relative_to(runs)) for p in runs.glob("*/*/summary.json"))
    assert taken == ["ex1.3/cnn2-seed0", "ex1.3/rescnn6-seed0", "ex1/mlp-seed0"] + [
        f"ex2.1/{method}-seed0" for method in ("finetune", "knn", "logreg", "svm")]
    assert json.loads((runs / "ex1.3/cnn2-seed0/summary.json").read_text())["test_accuracy"] == 0.5
    assert sorted(p.name for p in (runs / "ex1/mlp-seed0").iterdir()) == ["config.yaml", "metrics.jsonl",
                                                                         "summary.json"]
    assert not (runs / "ex1" / "report.md").exists()


def test_a_runs_folder_serves_as_well_and_bad_sources_are_one_line(tmp_path, capsys):
    assert earlier_runs.main([str(lease_one(tmp_path)), str(tmp_path / "runs")]) == 0
    assert (tmp_path / "runs/ex1/mlp-seed0/summary.json").is_file()
    assert not (tmp_path / "runs/ex1/mlp-seed0/best_model.pth").exists()   # weights never travel between leases
    capsys.readouterr()
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    for source in (tmp_path / "missing.tar.gz", tmp_path / "broken.tar.gz"):
        assert earlier_runs.main([str(source), str(tmp_path / "runs2")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: earlier runs from {source}: ")


def test_a_later_lease_reuses_the_runs_and_trains_only_the_missing_seed(tmp_path, tiny_data, capsys):
    overrides = {"epochs": 1, "wandb": "disabled", "data_dir": str(tiny_data)}
    study.run_experiment("ex1", seeds=1, overrides={**overrides, "out": str(tmp_path / "lease1")})
    tarball = pack(tmp_path / "lease1", tmp_path / "runs.tar.gz")
    assert earlier_runs.main([str(tarball), str(tmp_path / "lease2")]) == 0
    capsys.readouterr()
    result = study.run_experiment("ex1", seeds=2, overrides={**overrides, "out": str(tmp_path / "lease2")})
    out = capsys.readouterr().out
    assert f"reusing finished run {tmp_path / 'lease2' / 'ex1' / 'mlp-seed0'}" in out
    assert result["status"] == "done" and result["runs"] == ["mlp-seed0", "mlp-seed1"]
    first = json.loads((tmp_path / "lease1/ex1/mlp-seed0/summary.json").read_text())
    assert json.loads((tmp_path / "lease2/ex1/mlp-seed0/summary.json").read_text()) == first
    assert (tmp_path / "lease2/ex1/mlp-seed1/best_model.pth").is_file()   # seed 1 trained in this lease
    assert "± " in (tmp_path / "lease2" / "ex1" / "report.md").read_text()   # the report covers both seeds
