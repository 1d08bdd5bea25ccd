"""Every mistake a user can make ends in one line on stderr, exit code 2, and no file changed."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from fakedata import write_cifar10, write_idx_dataset
from reslab.cli import main

BASE = ["train", "--model", "mlp", "--dataset", "mnist", "--epochs", "1", "--wandb", "disabled"]


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under the roots with its size and modification time (a folder's lock file holds only the
    process id of its last writer, so it is left out)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots if root.exists() for p in sorted(root.rglob("*")) if p.name != ".reslab.lock"}


def _fails_cleanly(argv: list[str], capsys, *roots: Path) -> str:
    """Run the CLI, assert exit 2 with one error line and unchanged files; return the message."""
    before = _tree(*roots)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("reslab: error: ") and "Traceback" not in err
    assert _tree(*roots) == before
    return err


@pytest.fixture
def data(tmp_path) -> Path:
    """A private tiny MNIST + CIFAR-10 data folder each test may damage."""
    root = tmp_path / "data"
    write_idx_dataset(root, "MNIST/raw")
    write_cifar10(root)
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("RESLAB_OFFLINE", "1")


def _run(data: Path, out: Path, *extra: str) -> list[str]:
    return BASE + ["--data-dir", str(data), "--out", str(out), *extra]


def test_missing_data_folder(tmp_path, capsys):
    err = _fails_cleanly(_run(tmp_path / "nope", tmp_path / "runs"), capsys, tmp_path)
    assert "data folder" in err and "does not exist" in err


def test_missing_dataset_file(data, tmp_path, capsys):
    (data / "MNIST/raw/t10k-labels-idx1-ubyte.gz").unlink()
    err = _fails_cleanly(_run(data, tmp_path / "runs"), capsys, tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in err and "MNIST/raw" in err


def _truncate(raw: bytes) -> bytes:
    return raw[:-100]


def _bad_magic(raw: bytes) -> bytes:
    return raw[:3] + b"\x01" + raw[4:]


def _label_42(raw: bytes) -> bytes:
    return raw[:8] + bytes([42]) + raw[9:]


@pytest.mark.parametrize("filename, damage, words", [
    ("train-images-idx3-ubyte.gz", _truncate, "truncated"),
    ("t10k-images-idx3-ubyte.gz", _bad_magic, "magic"),
    ("train-labels-idx1-ubyte.gz", _label_42, "labels range 0..42, expected 0..9"),
], ids=["truncated", "wrong-magic", "label-out-of-range"])
def test_damaged_idx_file(data, tmp_path, capsys, filename, damage, words):
    path = data / "MNIST/raw" / filename
    path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes()))))
    err = _fails_cleanly(_run(data, tmp_path / "runs"), capsys, tmp_path)
    assert filename in err and words in err


def test_truncated_gzip(data, tmp_path, capsys):
    path = data / "MNIST/raw/train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    err = _fails_cleanly(_run(data, tmp_path / "runs"), capsys, tmp_path)
    assert "train-labels-idx1-ubyte.gz" in err and "gzip" in err


def test_wrong_cifar_shape(data, tmp_path, capsys):
    shutil.copy(data / "MNIST/raw/train-images-idx3-ubyte.gz", data / "cifar-10-batches-py/data_batch_2")
    err = _fails_cleanly(["train", "--model", "cnn", "--dataset", "cifar10", "--data-dir", str(data),
                          "--out", str(tmp_path / "runs"), "--wandb", "disabled"], capsys, tmp_path)
    assert "data_batch_2" in err


@pytest.mark.parametrize("flag, value, words", [
    ("--model", "resnet50", "unknown model 'resnet50'; choose one of: cnn, mlp, noskipcnn, rescnn, resmlp"),
    ("--dataset", "imagenet", "unknown dataset 'imagenet'; choose one of: cifar10, cifar100, fashionmnist, mnist"),
    ("--lr", "0", "lr must be a number > 0"),
    ("--lr", "-1e-3", "lr must be a number > 0"),
    ("--batch-size", "0", "batch_size must be an integer in [1, 1048576]"),
    ("--epochs", "0", "epochs must be an integer >= 1"),
    ("--val-fraction", "0", "val_fraction must be a number in (0, 1)"),
    ("--val-fraction", "1.5", "val_fraction must be a number in (0, 1)"),
    ("--patience", "-1", "patience must be an integer >= 0"),
    ("--val-fraction", "0.001", "leaves class"),
])
def test_bad_values(data, tmp_path, capsys, flag, value, words):
    argv = _run(data, tmp_path / "runs")
    if flag in argv:
        del argv[argv.index(flag):argv.index(flag) + 2]
    argv.append(f"{flag}={value}")   # the = form lets argparse take a negative number
    assert words in _fails_cleanly(argv, capsys, tmp_path)


def test_depth_below_one(data, tmp_path, capsys):
    err = _fails_cleanly(["train", "--model", "rescnn", "--depth", "0", "--dataset", "cifar10", "--data-dir",
                          str(data), "--out", str(tmp_path / "runs"), "--wandb", "disabled"], capsys, tmp_path)
    assert "depth must be an integer in [1, 1000]" in err


def test_unknown_model_argument(data, tmp_path, capsys):
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--blocks", "3"), capsys, tmp_path)
    assert "takes no argument blocks" in err


def test_mistyped_yaml_key(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: mlp\npatince: 3\n")
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--config", str(cfg)), capsys, tmp_path)
    assert "'patince'" in err and "did you mean 'patience'" in err


def test_bad_yaml(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: [mlp\n")
    assert "not valid YAML" in _fails_cleanly(_run(data, tmp_path / "runs", "--config", str(cfg)), capsys, tmp_path)


def test_missing_config_file(data, tmp_path, capsys):
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--config", str(tmp_path / "no.yaml")), capsys, tmp_path)
    assert "does not exist" in err


def test_output_folder_not_writable(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    err = _fails_cleanly(_run(data, blocker / "runs"), capsys, tmp_path)
    assert "not writable" in err


def test_existing_run_folder(data, tmp_path, capsys):
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--name", "mine"), capsys, tmp_path)
    assert "already exists" in err and "--resume" in err and "--overwrite" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    assert "cannot resume" in _fails_cleanly(["resume", str(tmp_path / "runs" / "r")], capsys, tmp_path)


def test_checkpoint_for_another_dataset(data, tmp_path, capsys):
    assert main(_run(data, tmp_path / "runs", "--name", "m")) == 0
    capsys.readouterr()
    err = _fails_cleanly(["evaluate", str(tmp_path / "runs/m/best_model.pth"), "--dataset", "cifar10",
                          "--data-dir", str(data)], capsys, tmp_path)
    assert "mnist" in err and "cifar10" in err


def test_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "best_model.pth"
    bogus.write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in _fails_cleanly(["evaluate", str(bogus)], capsys, tmp_path)


def test_debug_flag_shows_traceback(data, tmp_path, capsys):
    assert main(_run(data, tmp_path / "runs", "--model", "nope", "--debug")) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_run_name_cannot_reach_outside_the_output_folder(data, tmp_path, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file.txt").write_text("mine")
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--name", "..", "--overwrite"), capsys, tmp_path)
    assert "plain folder name" in err and (keep / "file.txt").read_text() == "mine"


@pytest.mark.parametrize("device, message", [
    ("cuda:abc", "device must be one of"),
    ("mps", "MPS is not available"),
    ("cuda", "no CUDA device"),
])
def test_a_device_this_machine_lacks(data, tmp_path, capsys, device, message):
    import torch
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--device", device), capsys, tmp_path)
    assert message in err


def test_seed_out_of_range(data, tmp_path, capsys):
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--seed", str(2 ** 32)), capsys, tmp_path)
    assert "seed must be an integer in [0, 4294967295]" in err


def test_resume_mistakes(data, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(_run(data, out)) == 0
    run_dir = out / "mlp-mnist-seed0"
    capsys.readouterr()
    err = _fails_cleanly(_run(data, out, "--resume", "--epochs", "5"), capsys, tmp_path)
    assert "epochs=1 cannot change" in err
    (run_dir / "summary.json").unlink()          # as if killed before the end: a finished run is never resumed
    shutil.copy(run_dir / "last.pth", tmp_path / "last.pth")
    shutil.copy(run_dir / "best_model.pth", run_dir / "last.pth")        # not a last.pth
    err = _fails_cleanly(["resume", str(run_dir)], capsys, tmp_path)
    assert "holds no training state" in err
    shutil.copy(tmp_path / "last.pth", run_dir / "last.pth")
    (run_dir / "best_model.pth").unlink()                                # the best weights are gone
    err = _fails_cleanly(["resume", str(run_dir)], capsys, tmp_path)
    assert "best_model.pth (the weights of epoch 1) is missing" in err


def test_a_damaged_summary_in_a_study_folder(tmp_path, capsys):
    from fakedata import write_all
    data = write_all(tmp_path / "d")
    out = tmp_path / "runs"
    assert main(["run", "ex1", "--epochs", "1", "--wandb", "disabled", "--data-dir", str(data), "--out", str(out)]) == 0
    (out / "ex1" / "mlp-seed0" / "summary.json").write_text('{"test_acc')
    capsys.readouterr()
    err = _fails_cleanly(["report", str(out / "ex1")], capsys)
    assert "summary.json is damaged" in err


def test_a_train_subset_too_small_to_stratify(data, tmp_path, capsys):
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--train-subset", "1"), capsys, tmp_path)
    assert "train_subset 1 of" in err and "val_fraction" not in err
