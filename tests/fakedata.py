"""Tiny datasets written in the real file formats (IDX, CIFAR python pickles and binary records), learnable by small
models; and the spec changes that make reslab expect them."""
from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from reslab.datasets import SPECS

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def make_images(n: int, shape: tuple[int, int, int], num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels and uint8 images: noise plus a bright patch whose place says the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    c, h, w = shape
    images = rng.integers(0, 60, size=(n, c, h, w), dtype=np.uint8)
    cells = int(np.ceil(np.sqrt(num_classes)))
    ph, pw = h // cells, w // cells
    for i, label in enumerate(labels):
        r, q = divmod(int(label), cells)
        images[i, :, r * ph:(r + 1) * ph, q * pw:(q + 1) * pw] = 200 + rng.integers(0, 55)
    return images, labels.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding `array`."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_dataset(root: Path, folder: str = "MNIST/raw", n_train: int = 300, n_test: int = 100,
                      gz: bool = True, seed: int = 0) -> Path:
    """Write an MNIST-layout dataset (train/t10k images and labels) under root/folder."""
    dest = Path(root) / folder
    dest.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_images(n_train, (1, 28, 28), 10, seed)
    test_x, test_y = make_images(n_test, (1, 28, 28), 10, seed + 1)
    for name, array in zip(IDX_NAMES, (train_x[:, 0], train_y, test_x[:, 0], test_y)):
        blob = idx_bytes(array)
        if gz:
            (dest / f"{name}.gz").write_bytes(gzip.compress(blob, mtime=0))
        else:
            (dest / name).write_bytes(blob)
    return dest


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 60, n_test: int = 100, seed: int = 0) -> Path:
    """Write a cifar-10-batches-py folder with five small data batches, a test batch and batches.meta."""
    dest = Path(root) / "cifar-10-batches-py"
    dest.mkdir(parents=True, exist_ok=True)
    for k in range(1, 6):
        x, y = make_images(per_batch, (3, 32, 32), 10, seed + k)
        _pickle(dest / f"data_batch_{k}", {b"batch_label": f"training batch {k} of 5".encode(),
                                           b"labels": [int(v) for v in y], b"data": x.reshape(len(x), -1),
                                           b"filenames": [b"x.png"] * len(x)})
    x, y = make_images(n_test, (3, 32, 32), 10, seed + 9)
    _pickle(dest / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in y],
                                  b"data": x.reshape(len(x), -1), b"filenames": [b"x.png"] * len(x)})
    names = [n.encode() for n in CIFAR10_NAMES]
    _pickle(dest / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072})
    return dest


def write_cifar100(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    """Write a cifar-100-python folder (train, test, meta) with fine and coarse labels."""
    dest = Path(root) / "cifar-100-python"
    dest.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = make_images(n, (3, 32, 32), 100, s)
        _pickle(dest / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                              b"fine_labels": [int(v) for v in y], b"coarse_labels": [int(v) // 5 for v in y],
                              b"data": x.reshape(n, -1)})
    _pickle(dest / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return dest


def cifar_records(images: np.ndarray, *label_columns: np.ndarray) -> bytes:
    """CIFAR binary records: per image its label bytes, then its 3,072 pixel bytes (C, H, W, row-major)."""
    labels = [np.asarray(c, dtype=np.uint8)[:, None] for c in label_columns]
    return np.concatenate(labels + [images.reshape(len(images), -1)], axis=1).tobytes()


def write_cifar10_binary(root: Path, per_batch: int = 60, n_test: int = 100, seed: int = 0) -> Path:
    """Write a cifar-10-batches-bin folder holding the same images and labels as write_cifar10 with these arguments."""
    dest = Path(root) / "cifar-10-batches-bin"
    dest.mkdir(parents=True, exist_ok=True)
    for k in range(1, 6):
        x, y = make_images(per_batch, (3, 32, 32), 10, seed + k)
        (dest / f"data_batch_{k}.bin").write_bytes(cifar_records(x, y))
    x, y = make_images(n_test, (3, 32, 32), 10, seed + 9)
    (dest / "test_batch.bin").write_bytes(cifar_records(x, y))
    (dest / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")   # the release ends with a blank line
    return dest


def write_cifar100_binary(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    """Write a cifar-100-binary folder holding the same images and labels as write_cifar100 with these arguments."""
    dest = Path(root) / "cifar-100-binary"
    dest.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = make_images(n, (3, 32, 32), 100, s)
        (dest / f"{name}.bin").write_bytes(cifar_records(x, y // 5, y))     # coarse label, then fine label
    (dest / "fine_label_names.txt").write_text("".join(f"class{i}\n" for i in range(100)))
    (dest / "coarse_label_names.txt").write_text("".join(f"super{i}\n" for i in range(20)))
    return dest


def patch_layout(monkeypatch, name: str, folder: str | None = None, **changes) -> None:
    """Replace fields of one layout of SPECS[name] (default: the downloaded one) for the test's duration."""
    spec = SPECS[name]
    old = spec.get_layout(folder)
    layouts = tuple(dataclasses.replace(layout, **changes) if layout is old else layout for layout in spec.layouts)
    monkeypatch.setitem(SPECS, name, dataclasses.replace(spec, layouts=layouts))


def expect_records(monkeypatch, name: str, per_train_file: int, n_test: int) -> None:
    """Make the binary layout of SPECS[name] expect tiny files (the official ones hold 10,000 records and more)."""
    layout = next(layout for layout in SPECS[name].layouts if layout.format == "binary")
    counts = {f: per_train_file for f in layout.train_files} | {f: n_test for f in layout.test_files}
    patch_layout(monkeypatch, name, layout.folder, records=counts)


def only_layout(monkeypatch, name: str, folder: str) -> None:
    """Make SPECS[name] know just the layout kept in `folder` (to read it though another one is complete)."""
    spec = SPECS[name]
    monkeypatch.setitem(SPECS, name, dataclasses.replace(spec, layouts=(spec.get_layout(folder),)))


def write_all(root: Path, binary: bool = False) -> Path:
    """Every dataset reslab reads, tiny, under one data folder (CIFAR also in the binary layouts when `binary`).

    The binary files hold write_cifar10/100's default sizes: use expect_records(monkeypatch, "cifar10", 60, 100)
    and (..., "cifar100", 500, 200) before reading them.
    """
    write_idx_dataset(root, "MNIST/raw", seed=0)
    write_idx_dataset(root, "FashionMNIST/raw", seed=10)
    write_cifar10(root)
    write_cifar100(root)
    if binary:
        write_cifar10_binary(root)
        write_cifar100_binary(root)
    return Path(root)
