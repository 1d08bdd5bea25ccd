"""bench/earlier_runs.py: a later GPU lease takes in the finished runs of earlier ones, and reslab reuses them."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
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


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


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
    assert earlier_runs.main(["take", str(tarball), str(runs)]) == 0
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
    assert earlier_runs.main(["take", str(lease_one(tmp_path)), str(tmp_path / "runs")]) == 0
    assert (tmp_path / "runs/ex1/mlp-seed0/summary.json").is_file()
    assert not (tmp_path / "runs/ex1/mlp-seed0/best_model.pth").exists()   # weights never travel between leases
    capsys.readouterr()
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    for source in (tmp_path / "missing.tar.gz", tmp_path / "broken.tar.gz"):
        assert earlier_runs.main(["take", str(source), str(tmp_path / "runs2")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: earlier runs from {source}: ")


def test_a_later_lease_reuses_the_runs_and_trains_only_the_missing_seed(tmp_path, tiny_data, capsys):
    overrides = {"epochs": 1, "wandb": "disabled", "data_dir": str(tiny_data)}
    study.run_experiment("ex1", seeds=1, overrides={**overrides, "out": str(tmp_path / "lease1")})
    tarball = pack(tmp_path / "lease1", tmp_path / "runs.tar.gz")
    assert earlier_runs.main(["take", str(tarball), str(tmp_path / "lease2")]) == 0
    capsys.readouterr()
    result = study.run_experiment("ex1", seeds=2, overrides={**overrides, "out": str(tmp_path / "lease2")})
    out = capsys.readouterr().out
    assert f"reusing finished run {tmp_path / 'lease2' / 'ex1' / 'mlp-seed0'}" in out
    assert result["status"] == "done" and result["runs"] == ["mlp-seed0", "mlp-seed1"]
    first = json.loads((tmp_path / "lease1/ex1/mlp-seed0/summary.json").read_text())
    assert json.loads((tmp_path / "lease2/ex1/mlp-seed0/summary.json").read_text()) == first
    assert (tmp_path / "lease2/ex1/mlp-seed1/best_model.pth").is_file()   # seed 1 trained in this lease
    assert "± " in (tmp_path / "lease2" / "ex1" / "report.md").read_text()   # the report covers both seeds


def test_the_weights_of_an_unfinished_transfer_seed_travel_and_the_seed_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(earlier_runs, "PART_BYTES", 4)   # b"weights": two parts
    earlier, out = lease_one(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "weights-ex1.3-rescnn6-seed9.part0").write_bytes(b"stale")   # an earlier package's, no longer needed
    assert earlier_runs.main(["send", str(earlier), str(out)]) == 0
    # Seed 0's ex2.1 finished; seed 1's did not (the lowest such seed; seed 2 waits for a later lease).
    assert capsys.readouterr().out == ("weights of ex1.3/rescnn6-seed1 sent for the next lease: 0.0 MiB in 2 "
                                       "part(s); its ex2.1 seed has not finished\n")
    assert sorted(p.name for p in out.iterdir()) == ["weights-ex1.3-rescnn6-seed1.part0",
                                                     "weights-ex1.3-rescnn6-seed1.part1"]
    listed = json.loads((earlier / "weights.json").read_text())["runs"]
    assert listed == {"ex1.3/rescnn6-seed1": {"file": "best_model.pth", "bytes": 7, "md5": md5(b"weights"),
                                              "parts": sorted(p.name for p in out.iterdir())}}

    tarball = pack(earlier, tmp_path / "runs.tar.gz")
    assert earlier_runs.main(["take", str(tarball), str(tmp_path / "runs"), "--weights", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("ex1.3: 3 run(s) taken in; with their weights: rescnn6-seed1; transfer seed incomplete, "
                        "trained again: rescnn6-seed2")
    assert lines[2] == ("ex2.1: 4 run(s) taken in; cut short, trained again: finetune-seed1; transfer seed "
                        "incomplete, trained again: finetune-seed2, knn-seed2, svm-seed2")
    assert (tmp_path / "runs/ex1.3/rescnn6-seed1/best_model.pth").read_bytes() == b"weights"
    assert not (tmp_path / "runs/ex1.3/rescnn6-seed0/best_model.pth").exists()   # its seed is whole: not needed

    # Weights damaged or left behind: that seed starts again from a new source, as without them.
    (out / "weights-ex1.3-rescnn6-seed1.part1").write_bytes(b"hts?")
    for args, problem in ((["--weights", str(out)], f"md5 {md5(b'weights?')}, weights.json says {md5(b'weights')}"),
                          ([], "missing weights-ex1.3-rescnn6-seed1.part0, weights-ex1.3-rescnn6-seed1.part1")):
        runs = tmp_path / f"runs{len(args)}"
        assert earlier_runs.main(["take", str(tarball), str(runs), *args]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"weights of ex1.3/rescnn6-seed1: {problem}")
        assert lines[0].endswith("; its transfer seed starts again")
        assert lines[2].startswith("ex1.3: 2 run(s) taken in; transfer seed incomplete, trained again: "
                                   "rescnn6-seed1, rescnn6-seed2")
        assert not (runs / "ex1.3/rescnn6-seed1").exists()


def test_send_removes_what_is_no_longer_needed_and_refuses_weights_too_large(tmp_path, capsys, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    done = {"stopped_by": "stagnation"}
    make_run(runs, "ex1.3/rescnn6-seed0", done)
    for method in ("svm", "knn", "logreg", "finetune"):
        make_run(runs, f"ex2.1/{method}-seed0", done)
    (out / "weights-ex1.3-rescnn6-seed0.part0").write_bytes(b"w")   # sent while seed 0 was unfinished
    (runs / "weights.json").write_text("{}")
    (out / "log.txt").write_text("kept\n")
    assert earlier_runs.main(["send", str(runs), str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in out.iterdir()) == ["log.txt"] and not (runs / "weights.json").exists()
    shutil.rmtree(runs / "ex2.1" / "finetune-seed0")
    monkeypatch.setattr(earlier_runs, "PART_BYTES", 2)   # b"weights" would take 4 parts; 2 travel
    assert earlier_runs.main(["send", str(runs), str(out)]) == 0
    assert capsys.readouterr().out == ("weights of ex1.3/rescnn6-seed0: 0.0 MiB, more than 2 parts of 0 MiB: "
                                       "not sent\n")
    assert sorted(p.name for p in out.iterdir()) == ["log.txt"]
    for args, wrong in (([tmp_path / "missing", out], "RUNS_DIR"), ([runs, tmp_path / "missing"], "OUT_DIR")):
        assert earlier_runs.main(["send", *map(str, args)]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: weights from {args[0]} into {args[1]}: {wrong} is not a folder"]


def test_a_later_lease_fine_tunes_the_network_an_earlier_one_trained(tmp_path, tiny_data, capsys):
    """Lease 1 trains ex2.1's source and probes, the fine-tuning is cut; lease 2 gets the weights and goes on."""
    overrides = {"epochs": 1, "wandb": "disabled", "data_dir": str(tiny_data), "model_args": {"width": 8},
                 "train_subset": 100, "val_fraction": 0.2, "out": str(tmp_path / "runs")}
    study.run_experiment("ex2.1", seeds=1, overrides=overrides)
    runs, out = tmp_path / "runs", tmp_path / "out"
    weights = (runs / "ex1.3/rescnn6-seed0/best_model.pth").read_bytes()
    probe = json.loads((runs / "ex2.1/svm-seed0/summary.json").read_text())
    shutil.rmtree(runs / "ex2.1" / "finetune-seed0")   # cut before it wrote anything that travels
    out.mkdir()
    assert earlier_runs.main(["send", str(runs), str(out)]) == 0
    tarball = pack(runs, tmp_path / "runs.tar.gz")
    shutil.rmtree(runs)   # the machine is gone; the next lease works in the same folder (the path is a setting)
    assert earlier_runs.main(["take", str(tarball), str(runs), "--weights", str(out)]) == 0
    capsys.readouterr()
    result = study.run_experiment("ex2.1", seeds=1, overrides=overrides)
    printed = capsys.readouterr().out
    assert result["status"] == "done"
    assert "-- ex2.1: reusing source" in printed and "training source" not in printed
    assert f"reusing finished run {runs / 'ex2.1' / 'svm-seed0'}" in printed
    assert "-- ex2.1: finetune seed 0 from" in printed
    assert (runs / "ex1.3/rescnn6-seed0/best_model.pth").read_bytes() == weights
    assert json.loads((runs / "ex2.1/svm-seed0/summary.json").read_text()) == probe
    assert json.loads((runs / "ex2.1/finetune-seed0/summary.json").read_text())["dataset"] == "cifar100"
