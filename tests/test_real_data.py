"""The real datasets in ../shared/data, when present: sizes, official status, and a short training run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from reslab.cli import main
from reslab.datasets import SPECS, load_dataset, verify_dataset


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


def test_cifar10_loads_but_is_not_official(real_data):
    if not (real_data / "cifar-10-batches-py").is_dir():
        pytest.skip("no CIFAR-10 in the shared data")
    data = load_dataset("cifar10", real_data, download=False)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.official is False
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    status = {path.name: s for path, s in verify_dataset("cifar10", real_data)}
    assert set(status) == set(SPECS["cifar10"].md5)
    assert status["batches.meta"] == "official"
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        assert status[name].startswith("not official (md5 ")
    # The JPEG round trip keeps the per-channel means of the official release to about 3 decimals.
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
