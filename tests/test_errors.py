"""Every mistake a user can make ends in one line on stderr, exit code 2, and no file changed."""
from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fakedata import idx_bytes, write_cifar10, write_idx_dataset

import reslab.checkpoint
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
    ("--dataset", "mnsit", "unknown dataset 'mnsit' (did you mean 'mnist'?); choose one of: cifar10"),
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


@pytest.mark.parametrize("extra, words", [(["--model", "resnet50"], "unknown model 'resnet50'"),
                                          (["--blocks", "3"], "takes no argument blocks"),
                                          (["--model", "rescn"], "unknown model 'rescn' (did you mean 'rescnn'?)")])
def test_a_model_mistake_is_named_before_the_data_is_looked_for(tmp_path, capsys, extra, words):
    empty = tmp_path / "empty"   # no dataset here: reading it would fail, or try a download, first
    empty.mkdir()
    argv = _run(empty, tmp_path / "runs")
    if "--model" in extra:
        del argv[argv.index("--model"):argv.index("--model") + 2]
    err = _fails_cleanly(argv + extra, capsys, tmp_path)
    assert words in err and "download" not in err and "not found" not in err


def test_a_mistyped_model_argument_in_a_config_file_names_the_closest(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: rescnn\nmodel_args: {depht: 2}\n")
    argv = _run(data, tmp_path / "runs", "--config", str(cfg))
    del argv[argv.index("--model"):argv.index("--model") + 2]   # the file names the model
    err = _fails_cleanly(argv, capsys, tmp_path)
    assert "model 'rescnn' takes no argument depht (did you mean 'depth'?); it takes: depth, width" in err


def test_a_model_argument_that_is_no_name_is_a_one_line_error(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model_args: {1: 2}\n")   # a YAML key that is a number
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--config", str(cfg)), capsys, tmp_path)
    assert "model 'mlp' takes no argument 1; it takes: hidden, dropout" in err


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


def test_output_folder_that_cannot_be_made_is_named_before_the_data_is_looked_for(tmp_path, capsys):
    empty = tmp_path / "empty"   # no dataset here: reading it would fail, or try a download, first
    empty.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    err = _fails_cleanly(_run(empty, blocker / "runs"), capsys, tmp_path)
    assert f"output folder {blocker / 'runs' / 'mlp-mnist-seed0'} cannot be made: {blocker} is a file, not a " \
        "folder" in err


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


def _write_empty(path: Path) -> None:
    """A well-formed dataset file holding no images: an IDX file (images or labels) or a CIFAR python batch."""
    if path.name.endswith(".gz"):
        shape = (0, 28, 28) if "images" in path.name else (0,)
        path.write_bytes(gzip.compress(idx_bytes(np.zeros(shape, np.uint8))))
    else:
        with open(path, "wb") as f:
            pickle.dump({b"batch_label": b"empty", b"labels": [], b"data": np.zeros((0, 3072), np.uint8),
                         b"filenames": []}, f, protocol=4)   # protocol 2 would spell b"" as a call of bytes()


@pytest.mark.parametrize("dataset, files", [
    ("mnist", ("MNIST/raw/train-images-idx3-ubyte.gz", "MNIST/raw/train-labels-idx1-ubyte.gz")),
    ("mnist", ("MNIST/raw/t10k-images-idx3-ubyte.gz", "MNIST/raw/t10k-labels-idx1-ubyte.gz")),
    ("cifar10", ("cifar-10-batches-py/data_batch_3",)),
    ("cifar10", ("cifar-10-batches-py/test_batch",)),
], ids=["idx-train", "idx-test", "cifar-train-batch", "cifar-test-batch"])
def test_a_valid_but_empty_dataset_file(data, tmp_path, capsys, dataset, files):
    for name in files:
        _write_empty(data / name)
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--dataset", dataset), capsys, tmp_path)
    assert f"{data / files[0]}: holds no images" in err


@pytest.mark.parametrize("flags, words", [
    (["--batch-size", str(10 ** 9)], "batch_size must be an integer in [1, 1048576], got 1000000000"),
    (["--eval-batch-size", str(10 ** 9)], "eval_batch_size must be an integer in [1, 1048576]"),
    (["--model", "resmlp", "--width", str(10 ** 9)], "width must be an integer in [1, 65536]"),
    (["--hidden", str(10 ** 9)], "hidden size must be an integer in [1, 65536]"),
    (["--model", "rescnn", "--dataset", "cifar10", "--depth", str(10 ** 9)], "depth must be an integer in [1, 1000]"),
    (["--threads", str(10 ** 6)], "threads must be an integer in [1, 4096], got 1000000"),
], ids=["batch-size", "eval-batch-size", "width", "hidden", "depth", "threads"])
def test_absurd_sizes(data, tmp_path, capsys, flags, words):
    assert words in _fails_cleanly(_run(data, tmp_path / "runs", *flags), capsys, tmp_path)


def test_a_batch_larger_than_the_training_split_is_the_whole_split(data, tmp_path):
    assert main(_run(data, tmp_path / "runs", "--batch-size", str(2 ** 20), "--name", "big")) == 0
    records = (tmp_path / "runs" / "big" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in records] == [1]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # as a write into an open file raises it: no path


def _full_at_last_pth(monkeypatch):
    original = torch.save

    def save(obj, f, *args, **kwargs):   # torch wraps a failed write of its own in a RuntimeError
        if isinstance(obj, dict) and "history" in obj:
            try:
                _no_space()
            except OSError as exc:
                raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from exc
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(reslab.checkpoint.torch, "save", save)
    return "last.pth"


def _full_at_summary(monkeypatch):
    original = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == "summary.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))   # os.replace names the source
        return original(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return "summary.json"


def _full_at_metrics(monkeypatch):
    original = os.fsync

    def fsync(fd):   # the first line of metrics.jsonl (the file behind the descriptor, as Linux names it)
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name == "metrics.jsonl":
            _no_space()
        return original(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return "metrics.jsonl"


@pytest.mark.parametrize("fill", [_full_at_last_pth, _full_at_summary, _full_at_metrics],
                         ids=["torch.save-of-last.pth-wrapped", "summary.json", "metrics.jsonl"])
def test_a_full_disk_is_one_line_naming_the_file(data, tmp_path, capsys, monkeypatch, fill):
    name = fill(monkeypatch)
    assert main(_run(data, tmp_path / "runs", "--name", "r")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err == f"reslab: error: no space left on device: {tmp_path / 'runs' / 'r' / name}"


@pytest.fixture(scope="module")
def study(tiny_data, tmp_path_factory) -> Path:
    """A finished ex1 study folder (one run), to be copied and damaged."""
    out = tmp_path_factory.mktemp("study")
    assert main(["run", "ex1", "--epochs", "1", "--wandb", "disabled", "--data-dir", str(tiny_data),
                 "--out", str(out)]) == 0
    return out


def _edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _edit_yaml(path: Path, change) -> None:
    value = yaml.safe_load(path.read_text())
    change(value)
    path.write_text(yaml.safe_dump(value))


@pytest.mark.parametrize("file, damage, words, commands", [
    ("mlp-seed0/summary.json", lambda p: p.write_text("[1, 2]"), "summary.json is damaged (not a JSON object)",
     ("report", "run")),
    ("mlp-seed0/summary.json", lambda p: _edit_json(p, lambda v: v.pop("test_accuracy")),
     "summary.json is damaged (test_accuracy missing or of the wrong type)", ("report", "run")),
    ("mlp-seed0/summary.json", lambda p: _edit_json(p, lambda v: v.pop("stopped_by")),
     "summary.json is damaged (stopped_by missing or of the wrong type)", ("report", "run")),
    ("mlp-seed0/metrics.jsonl", lambda p: p.write_text("[1, 2]\n"), "metrics.jsonl is damaged (a line is not a JSON "
     "object", ("report",)),
    ("study.json", lambda p: _edit_json(p, lambda v: v.pop("runs")), "study.json is damaged (runs missing",
     ("report",)),
    ("experiment.yaml", lambda p: _edit_yaml(p, lambda v: v.pop("profile")), "experiment.yaml is damaged (profile "
     "missing", ("report",)),
], ids=["summary-a-list", "summary-without-test_accuracy", "summary-without-stopped_by", "metrics-not-objects",
        "study-without-runs", "experiment-without-profile"])
def test_run_files_of_the_wrong_shape(study, tiny_data, tmp_path, capsys, file, damage, words, commands):
    out = tmp_path / "runs"
    shutil.copytree(study, out)
    damage(out / "ex1" / file)
    argv = {"report": ["report", str(out / "ex1")],
            "run": ["run", "ex1", "--epochs", "1", "--wandb", "disabled", "--data-dir", str(tiny_data), "--out",
                    str(out)]}
    for command in commands:
        err = _fails_cleanly(argv[command], capsys, out)
        assert f"{out / 'ex1' / file} is damaged" in err and words in err


EDITS = {"state_dict-missing": lambda c: c.pop("state_dict"),
         "state_dict-a-list": lambda c: c.update(state_dict=[1, 2]),
         "model_args-not-a-mapping": lambda c: c.update(model_args=[128, 64]),
         "input_shape-two-numbers": lambda c: c.update(input_shape=[28, 28]),
         "input_shape-other-images": lambda c: c.update(input_shape=[3, 32, 32])}


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize("edit", EDITS)
def test_a_hand_edited_checkpoint(data, tmp_path, capsys, command, edit):
    run_dir = tmp_path / "runs" / "m"
    assert main(_run(data, tmp_path / "runs", "--name", "m")) == 0
    path = run_dir / ("best_model.pth" if command == "evaluate" else "last.pth")
    checkpoint = torch.load(path, weights_only=True)
    EDITS[edit](checkpoint)
    torch.save(checkpoint, path)
    (run_dir / "summary.json").unlink()          # as if killed: a run to resume
    capsys.readouterr()
    argv = ["evaluate", str(path), "--data-dir", str(data)] if command == "evaluate" else ["resume", str(run_dir)]
    assert str(path) in _fails_cleanly(argv, capsys, tmp_path)


def test_a_refused_study_changes_no_file(data, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["run", "ex1", "--wandb", "disabled", "--data-dir", str(data), "--out", str(out)]
    assert main(argv + ["--epochs", "1"]) == 0
    capsys.readouterr()
    err = _fails_cleanly(argv + ["--epochs", "2"], capsys, out)   # experiment.yaml, study.json, every run file
    assert "epochs=1, this one wants 2" in err


@pytest.mark.parametrize("foreign, words", [
    ("last.pth", "is another run's, not this folder's (model='resmlp' there, 'mlp' in config.yaml"),
    ("best_model.pth", "best_model.pth do not fit model 'mlp'"),
])
def test_a_resume_refused_for_another_run_s_checkpoint_changes_no_file(data, tmp_path, capsys, foreign, words):
    out = tmp_path / "runs"
    assert main(_run(data, out, "--name", "mine")) == 0
    assert main(_run(data, out, "--name", "other", "--model", "resmlp")) == 0
    (out / "mine" / "summary.json").unlink()          # as if killed: a run to resume
    shutil.copy(out / "other" / foreign, out / "mine" / foreign)
    capsys.readouterr()
    err = _fails_cleanly(["resume", str(out / "mine")], capsys, tmp_path)   # metrics.jsonl, config.yaml, ...
    assert err.startswith("reslab: error: cannot resume: ") and words in err


def test_resume_after_the_data_moved(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    write_idx_dataset(old, "MNIST/raw")
    run_dir = (tmp_path / "runs" / "r").resolve()
    assert main(_run(old, tmp_path / "runs", "--name", "r", "--epochs", "2")) == 0
    (run_dir / "summary.json").unlink()          # as if killed after its last epoch
    old.rename(new)
    capsys.readouterr()
    err = _fails_cleanly(["resume", str(run_dir)], capsys, tmp_path)
    assert f"data folder {old} does not exist" in err
    assert f"reslab resume {run_dir} --data-dir NEW_FOLDER" in err
    assert main(["resume", str(run_dir), "--data-dir", str(new)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]], ids=["plain", "overwrite", "resume"])
def test_a_folder_of_other_files_is_never_a_run_folder(data, tmp_path, capsys, extra):
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--name", "mine", *extra), capsys, tmp_path)
    assert "run folder" not in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]   # not even a lock file


def test_train_resume_with_a_last_pth_that_holds_no_settings(data, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "m"
    assert main(_run(data, tmp_path / "runs", "--name", "m", "--epochs", "2")) == 0
    checkpoint = torch.load(run_dir / "last.pth", weights_only=True)
    checkpoint.pop("config")
    torch.save(checkpoint, run_dir / "last.pth")
    (run_dir / "summary.json").unlink()          # as if killed: a run to resume
    capsys.readouterr()
    err = _fails_cleanly(_run(data, tmp_path / "runs", "--name", "m", "--epochs", "2", "--resume"), capsys, tmp_path)
    assert f"{run_dir / 'last.pth'}: not a usable reslab checkpoint (config missing" in err


def test_an_experiment_folder_of_someone_else_s_files_is_refused(data, tmp_path, capsys):
    folder = tmp_path / "runs" / "ex1"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "report.md").write_text("my own report")
    err = _fails_cleanly(["run", "ex1", "--epochs", "1", "--wandb", "disabled", "--data-dir", str(data), "--out",
                          str(tmp_path / "runs")], capsys, tmp_path)
    assert f"{folder} holds files that are not a reslab study's (notes.txt)" in err


def test_a_full_disk_while_writing_the_report_names_it(study, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "study"
    shutil.copytree(study, folder)
    original = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "report.md":   # a write into an open file: the error names no file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert main(["report", str(folder / "ex1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"reslab: error: no space left on device: {folder / 'ex1' / 'report.md'}"
