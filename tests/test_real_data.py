"""The real datasets, when present: MNIST and Fashion-MNIST in ../shared/data, CIFAR unpacked from the lossless
packs there into the repo's data/ (or $RESLAB_DATA); sizes, official status, provenance, and a short training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fakedata import only_layout

from reslab import datasets
from reslab.cli import main
from reslab.datasets import OFFICIAL_TEXT, SPECS, layout_to_read, load_dataset, verify_dataset


@pytest.mark.parametrize("name", ["mnist", "fashionmnist"])
def test_idx_datasets_are_official(real_data, name):
    data = load_dataset(name, real_data, download=False)
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
    assert data.official is True
    assert np.bincount(data.test_labels).tolist() == np.bincount(data.test_labels, minlength=10).tolist()
    assert len(np.unique(data.train_labels)) == 10
    assert all(status == "official" for _, status in verify_dataset(name, real_data))


def test_mnist_known_facts(real_data):
    data = load_dataset("mnist", real_data, download=False)
    # Published MNIST facts: the first training digit is a 5, the test set holds 980 zeros and 1135 ones.
    assert data.train_labels[0] == 5
    assert np.bincount(data.test_labels)[:2].tolist() == [980, 1135]
    assert 0.13 < data.train_images.mean() / 255 < 0.131


def test_cifar100_binary_test_split_is_official(unpacked_data):
    # Decoding the test split from cifar100.npz with the pack's cifarpack.decode takes about 8.5 s on 2 shared cores
    # (measured), too slow for a quick check: the already-unpacked file is read instead.
    path = unpacked_data / "cifar-100-binary" / "test.bin"
    if not path.is_file():
        pytest.skip(f"no {path} (unpack cifar100.npz there)")
    layout = SPECS["cifar100"].get_layout("cifar-100-binary")
    assert datasets.file_status(layout, "test.bin", path) == "official"
    images, labels = datasets._read_binary_batches([(path, layout.records["test.bin"])], layout)
    assert images.shape == (10000, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 99
    assert np.bincount(labels).tolist() == [100] * 100


@pytest.mark.parametrize("name, per_class, official, provenance", [
    ("cifar10", 5000, False,
     "CIFAR-10: 59,889/60,000 images exact (111 from a JPEG copy, per cifar-10-inexact-images.txt)"),
    ("cifar100", 500, True, OFFICIAL_TEXT),
], ids=["cifar10", "cifar100"])
def test_unpacked_cifar_binary_and_pickles(unpacked_data, monkeypatch, name, per_class, official, provenance):
    binary, python = SPECS[name].layouts
    if layout_to_read(name, unpacked_data) != binary:
        pytest.skip(f"no complete {binary.folder} in {unpacked_data}")
    data = load_dataset(name, unpacked_data, download=False)
    assert data.layout == binary.folder
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64
    num_classes = SPECS[name].num_classes
    assert len(data.classes) == num_classes and len(set(data.classes)) == num_classes
    assert np.bincount(data.train_labels).tolist() == [per_class] * num_classes
    assert np.bincount(data.test_labels).tolist() == [per_class // 5] * num_classes
    assert data.official is official
    assert data.provenance == provenance
    if not all((unpacked_data / python.folder / f).is_file() for f in python.md5):
        return
    only_layout(monkeypatch, name, python.folder)
    pickled = load_dataset(name, unpacked_data, download=False)
    assert pickled.layout == python.folder
    assert pickled.official is False                            # the pack's pickles lack the per-image file names
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(data, field), getattr(pickled, field))
    assert data.classes == pickled.classes


def test_cifar10_loads_but_is_not_official(unpacked_data):
    layout = layout_to_read("cifar10", unpacked_data)
    if layout is None:
        pytest.skip(f"no complete CIFAR-10 in {unpacked_data}")
    data = load_dataset("cifar10", unpacked_data, download=False)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.official is False
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    present = [other for other in SPECS["cifar10"].layouts if (unpacked_data / other.folder).is_dir()]
    status = {path.name: s for path, s in verify_dataset("cifar10", unpacked_data)}
    assert set(status) == {f for other in present for f in other.md5}
    if "batches.meta" in status:
        assert status["batches.meta"] == "official"
    for other in present:
        for name in other.train_files + other.test_files:
            assert status[name].startswith("not official (md5 ")
    # The official release's per-channel means, kept to about 3 decimals (0.01: the first 10,000 images only).
    means = data.train_images[:10000].reshape(10000, 3, -1).mean(axis=(0, 2)) / 255
    assert np.allclose(means, [0.4914, 0.4822, 0.4465], atol=0.01)


def test_short_training_on_real_mnist(real_data, tmp_path, capsys):
    code = main(["train", "--model", "mlp", "--dataset", "mnist", "--data-dir", str(real_data), "--out",
                 str(tmp_path), "--train-subset", "2000", "--epochs", "1", "--device", "cpu", "--wandb", "disabled"])
    assert code == 0
    out = capsys.readouterr().out
    assert "not the official release" not in out
    summary = json.loads((tmp_path / "mlp-mnist-seed0" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["data_official"] is True
    assert summary["test_accuracy"] > 0.5                       # 2000 images, 16 steps: far above chance (0.1)
