"""Checkpoints: atomic writes, weights-only loading, identical rebuilt models, clear errors for bad files."""
from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab.checkpoint import FORMAT, load_checkpoint, read_checkpoint, save_atomic
from reslab.config import TrainConfig
from reslab.datasets import load_dataset
from reslab.errors import ReslabError
from reslab.evaluate import evaluate
from reslab.loader import TensorLoader
from reslab.models import build_model
from reslab.run import run_training


def _checkpoint_of(model: torch.nn.Module, input_shape, num_classes: int) -> dict:
    """A checkpoint dict in the self-describing format train_model writes."""
    return {"format": FORMAT, "model": model.reslab_spec["name"], "model_args": dict(model.reslab_spec["args"]),
            "input_shape": list(input_shape), "num_classes": num_classes,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    """A finished 3-epoch run on tiny MNIST: its folder and summary."""
    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(model="resmlp", model_args={"width": 32, "blocks": 1}, dataset="mnist",
                         data_dir=str(tiny_data), out=str(out), epochs=3, wandb="disabled", device="cpu")
    summary = run_training(config, console=False)
    return out / config.run_name, summary


def test_save_atomic_writes_a_loadable_file_and_no_temp_file(tmp_path):
    obj = {"format": FORMAT, "weights": torch.arange(6.0).reshape(2, 3), "epoch": 4}
    save_atomic(obj, tmp_path / "ckpt.pth")
    assert os.listdir(tmp_path) == ["ckpt.pth"]
    loaded = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert loaded["epoch"] == 4 and torch.equal(loaded["weights"], obj["weights"])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "ckpt.pth").stat().st_mode) == 0o666 & ~umask


def test_save_atomic_replaces_an_existing_file(tmp_path):
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 1}, path)
    save_atomic({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 2}
    assert os.listdir(tmp_path) == ["last.pth"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "best_model.pth"
    save_atomic({"epoch": 1}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_atomic({"epoch": 2, "bad": lambda: None}, path)     # a lambda cannot be pickled
    assert os.listdir(tmp_path) == ["best_model.pth"]
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_load_checkpoint_rebuilds_an_identical_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("rescnn", (3, 32, 32), 10, depth=2, width=8, max_width=16)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))                        # BatchNorm running stats move off their init
    save_atomic(_checkpoint_of(model, (3, 32, 32), 10), tmp_path / "ckpt.pth")

    torch.manual_seed(123)                                      # a fresh init would differ
    loaded, ckpt = load_checkpoint(tmp_path / "ckpt.pth")
    assert type(loaded) is type(model) and loaded.reslab_spec == model.reslab_spec
    model.eval()
    loaded.eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert ckpt["num_classes"] == 10


def test_run_checkpoints_load_with_weights_only(trained_run):
    run_dir, _ = trained_run
    for name in ("best_model.pth", "last.pth"):
        ckpt = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert ckpt["format"] == FORMAT
        assert ckpt["model"] == "resmlp" and ckpt["model_args"]["width"] == 32
        assert ckpt["input_shape"] == [1, 28, 28] and ckpt["num_classes"] == 10
        assert set(ckpt["normalization"]) == {"mean", "std"}


def test_best_checkpoint_reproduces_the_test_score(trained_run, tiny_data):
    run_dir, summary = trained_run
    model, ckpt = load_checkpoint(run_dir / "best_model.pth")
    assert ckpt["epoch"] == summary["best_epoch"]
    data = load_dataset("mnist", tiny_data)
    norm = ckpt["normalization"]
    loader = TensorLoader(data.test_images, data.test_labels, 64, norm["mean"], norm["std"])
    metrics = evaluate(model, loader, ckpt["num_classes"])
    assert metrics["accuracy"] == summary["test_accuracy"]
    assert metrics["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ReslabError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize("content", ["text", "tensor", "dict without format", "wrong format"])
def test_non_checkpoint_files_are_refused(tmp_path, content):
    path = tmp_path / "model.pth"
    if content == "text":
        path.write_text("these are not weights\n")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "dict without format":
        torch.save({"state_dict": {}}, path)
    else:
        torch.save({"format": "someone-else-1", "state_dict": {}}, path)
    with pytest.raises(ReslabError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert str(path) in message and "\n" not in message


def test_truncated_checkpoint_is_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    blob = (run_dir / "best_model.pth").read_bytes()
    for cut in (len(blob) // 2, len(blob) - 10, 100):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(blob[:cut])
        with pytest.raises(ReslabError) as exc:
            load_checkpoint(path)
        assert str(path) in str(exc.value) and "not a readable checkpoint" in str(exc.value)


class _Calls:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format": FORMAT, "payload": _Calls(os.system, f"touch {marker}")}, path)
    with pytest.raises(ReslabError) as exc:
        read_checkpoint(path)
    assert str(path) in str(exc.value)
    assert not marker.exists()


def test_checkpoint_with_numpy_arrays_is_refused(tmp_path):
    # weights_only refuses arbitrary globals, numpy's reconstructor among them.
    path = tmp_path / "np.pth"
    torch.save({"format": FORMAT, "x": np.zeros(3)}, path)
    with pytest.raises(ReslabError):
        read_checkpoint(path)
