"""Dataset readers on generated files in the real formats: shapes, labels, class names, and clear errors."""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from fakedata import (
    CIFAR10_NAMES,
    IDX_NAMES,
    cifar_records,
    expect_records,
    idx_bytes,
    make_images,
    only_layout,
    patch_layout,
    write_cifar10,
    write_cifar10_binary,
    write_cifar100,
    write_cifar100_binary,
    write_idx_dataset,
)

from reslab import datasets
from reslab.cli import main
from reslab.datasets import (
    OFFICIAL_TEXT,
    SPECS,
    UNCHECKED,
    layout_to_read,
    list_datasets,
    load_dataset,
    read_idx,
    resolve_data_dir,
    verify_dataset,
)
from reslab.download import md5sum
from reslab.errors import DataError


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _assert_names(exc: pytest.ExceptionInfo, path: Path, *phrases: str) -> None:
    """The error is one line, names the file and says what is wrong."""
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_loads_plain_and_gzipped(tmp_path, gz):
    write_idx_dataset(tmp_path, "MNIST/raw", n_train=50, n_test=20, gz=gz, seed=3)
    data = load_dataset("mnist", tmp_path, download=False)
    train_x, train_y = make_images(50, (1, 28, 28), 10, 3)
    test_x, test_y = make_images(20, (1, 28, 28), 10, 4)
    assert data.train_images.shape == (50, 1, 28, 28) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 1, 28, 28) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(data.train_images, train_x)
    np.testing.assert_array_equal(data.train_labels, train_y)
    np.testing.assert_array_equal(data.test_images, test_x)
    np.testing.assert_array_equal(data.test_labels, test_y)
    assert data.classes == [str(d) for d in range(10)]
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.official is False
    suffix = ".gz" if gz else ""
    assert sorted(p.name for p in data.files) == sorted(n + suffix for n in IDX_NAMES)


def test_fashionmnist_reads_its_own_folder_and_names(tiny_data):
    data = load_dataset("fashionmnist", tiny_data, download=False)
    assert data.train_images.shape == (300, 1, 28, 28) and data.test_images.shape == (100, 1, 28, 28)
    np.testing.assert_array_equal(data.train_labels, make_images(300, (1, 28, 28), 10, 10)[1])
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert all(p.parent == tiny_data / "FashionMNIST" / "raw" for p in data.files)


def test_read_idx_returns_header_shape(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(path, 3), array)
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(gz, 3), array)


def test_idx_wrong_magic_number(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 2, 2), np.uint8)))   # a 3-d file read as 1-d
    with pytest.raises(DataError) as exc:
        read_idx(path, 1)
    _assert_names(exc, path, "wrong magic number", "0x00000803", "expected 0x00000801")

    blob = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    blob[2] = 0x0D                                               # float data type
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as exc:
        read_idx(path, 1)
    _assert_names(exc, path, "wrong magic number")


def test_idx_truncated_file(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    blob = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(blob[:-100])
    with pytest.raises(DataError) as exc:
        read_idx(path, 3)
    _assert_names(exc, path, f"{len(blob) - 100} bytes", f"says {len(blob)}", "truncated")

    path.write_bytes(blob + b"\0")                                # trailing bytes are corrupt too
    with pytest.raises(DataError) as exc:
        read_idx(path, 3)
    _assert_names(exc, path, f"{len(blob) + 1} bytes")

    path.write_bytes(blob[:10])                                   # not even a header
    with pytest.raises(DataError) as exc:
        read_idx(path, 3)
    _assert_names(exc, path, "too short")


def test_idx_header_whose_size_overflows_is_refused(tmp_path):
    # 2**31 * 2**31 * 4 = 2**64 wraps to 0 in int64: the header must not pass as "0 bytes of pixels".
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB3I", 0, 8, 3, 2 ** 31, 2 ** 31, 4))
    with pytest.raises(DataError) as exc:
        read_idx(path, 3)
    _assert_names(exc, path, "truncated")


def test_idx_truncated_gzip(tmp_path):
    write_idx_dataset(tmp_path, n_train=30, n_test=10)
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path, download=False)
    _assert_names(exc, path, "not a complete gzip file", "delete it")

    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path, download=False)
    _assert_names(exc, path, "not a complete gzip file")


def _bad_labels() -> np.ndarray:
    labels = np.arange(30, dtype=np.uint8) % 10
    labels[7] = 10
    return labels


@pytest.mark.parametrize("filename, array, phrases", [
    ("train-images-idx3-ubyte", np.zeros((30, 27, 28), np.uint8), ("27x28", "expected 28x28")),
    ("t10k-labels-idx1-ubyte", np.zeros(9, np.uint8), ("9 labels for 10 images",)),
    ("train-labels-idx1-ubyte", _bad_labels(), ("0..10", "expected 0..9")),
], ids=["wrong image size", "label count mismatch", "labels out of range"])
def test_idx_files_with_wrong_contents(tmp_path, filename, array, phrases):
    dest = write_idx_dataset(tmp_path, n_train=30, n_test=10, gz=False)
    path = dest / filename
    path.write_bytes(idx_bytes(array))
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path, download=False)
    _assert_names(exc, path, *phrases)


# ---------------------------------------------------------------- CIFAR


def test_cifar10_loads(tiny_data):
    data = load_dataset("cifar10", tiny_data, download=False)
    assert data.train_images.shape == (300, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (100, 3, 32, 32) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    # Batches are concatenated in order 1..5, each image row-major as C, H, W.
    expected_x = np.concatenate([make_images(60, (3, 32, 32), 10, k)[0] for k in range(1, 6)])
    expected_y = np.concatenate([make_images(60, (3, 32, 32), 10, k)[1] for k in range(1, 6)])
    np.testing.assert_array_equal(data.train_images, expected_x)
    np.testing.assert_array_equal(data.train_labels, expected_y)
    np.testing.assert_array_equal(data.test_labels, make_images(100, (3, 32, 32), 10, 9)[1])
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"]
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.official is False


def test_cifar100_uses_fine_labels(tiny_data):
    data = load_dataset("cifar100", tiny_data, download=False)
    assert data.train_images.shape == (500, 3, 32, 32) and data.test_images.shape == (200, 3, 32, 32)
    x, y = make_images(500, (3, 32, 32), 100, 0)
    np.testing.assert_array_equal(data.train_images, x)
    np.testing.assert_array_equal(data.train_labels, y)           # fine, not coarse (y // 5)
    assert data.train_labels.max() == 99
    np.testing.assert_array_equal(data.test_labels, make_images(200, (3, 32, 32), 100, 1)[1])
    assert data.classes == [f"class{i}" for i in range(100)]
    assert data.num_classes == 100 and data.official is False


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    return write_cifar10(tmp_path, per_batch=20, n_test=20)


def _rewrite_batch(path: Path, **changes) -> None:
    batch = _read_pickle(path)
    batch.update({k.encode(): v for k, v in changes.items()})
    _write_pickle(path, batch)


@pytest.mark.parametrize("batch, changes, words", [
    ("data_batch_3", {"data": np.zeros((20, 1024), np.uint8)}, ("(20, 1024)", "(N, 3072)")),
    ("test_batch", {"data": np.zeros((20, 3072), np.float32)}, ("float32", "expected uint8")),
    ("data_batch_2", {"labels": [0] * 19}, ("19 labels for 20 images",)),
    ("data_batch_1", {"labels": [0] * 19 + [-1]}, ("-1..", "expected 0..9")),
    ("data_batch_4", {"labels": [b"cat"] * 20}, ("labels",)),
], ids=["wrong-image-size", "wrong-dtype", "label-count-mismatch", "labels-out-of-range", "labels-not-numbers"])
def test_damaged_cifar_batch(cifar10_dir, batch, changes, words):
    path = cifar10_dir / batch
    _rewrite_batch(path, **changes)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", cifar10_dir.parent, download=False)
    _assert_names(exc, path, *words)


def test_cifar100_fine_label_out_of_range(tmp_path):
    dest = write_cifar100(tmp_path, n_train=100, n_test=100)
    path = dest / "test"
    _rewrite_batch(path, fine_labels=[100] + [0] * 99)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar100", tmp_path, download=False)
    _assert_names(exc, path, "0..100", "expected 0..99")


def test_cifar_missing_key(cifar10_dir):
    path = cifar10_dir / "data_batch_5"
    batch = _read_pickle(path)
    del batch[b"labels"]
    _write_pickle(path, batch)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", cifar10_dir.parent, download=False)
    _assert_names(exc, path, "missing key", "labels")


@pytest.mark.parametrize("damage", ["truncated", "garbled", "not a dict"])
def test_cifar_unreadable_pickle(cifar10_dir, damage):
    path = cifar10_dir / "data_batch_2"
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbled":
        path.write_bytes(bytes(range(256)) * 8)
    else:
        _write_pickle(path, [1, 2, 3])
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", cifar10_dir.parent, download=False)
    _assert_names(exc, path)


def test_cifar_meta_with_wrong_class_count(cifar10_dir):
    path = cifar10_dir / "batches.meta"
    _write_pickle(path, {b"label_names": [b"a", b"b"]})
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", cifar10_dir.parent, download=False)
    _assert_names(exc, path, "10 class names")


class _Calls:
    """Pickles as a call of `fn(*args)`: loading it with plain pickle would run it."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("file", ["data_batch_1", "batches.meta"])
def test_cifar_pickle_calling_os_system_is_refused(cifar10_dir, tmp_path, file):
    marker = tmp_path / "pwned"
    path = cifar10_dir / file
    _write_pickle(path, {b"data": _Calls(os.system, f"touch {marker}"), b"labels": [0], b"label_names": []})
    assert b"system" in path.read_bytes()                        # the payload is really in the file
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", cifar10_dir.parent, download=False)
    _assert_names(exc, path, "refusing to load", "system")
    assert not marker.exists()


def test_cifar_pickle_calling_builtin_exec_is_refused(cifar10_dir, tmp_path):
    marker = tmp_path / "pwned"
    path = cifar10_dir / "test_batch"
    _write_pickle(path, {b"labels": [0], b"data": _Calls(exec, f"open({str(marker)!r}, 'w').close()")})
    _read_pickle(path)                                           # plain pickle runs the payload...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError) as exc:                         # ...reslab's reader refuses it
        load_dataset("cifar10", cifar10_dir.parent, download=False)
    _assert_names(exc, path, "refusing to load", "exec")
    assert not marker.exists()


# ---------------------------------------------------------------- CIFAR binary layouts


def _binary_cifar10(root: Path, per_batch: int = 20, n_test: int = 20, monkeypatch=None) -> Path:
    dest = write_cifar10_binary(root, per_batch=per_batch, n_test=n_test)
    expect_records(monkeypatch, "cifar10", per_batch, n_test)
    return dest


def test_cifar10_binary_loads(tmp_path, monkeypatch):
    dest = _binary_cifar10(tmp_path, monkeypatch=monkeypatch)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.train_images.shape == (100, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (20, 3, 32, 32) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert data.train_images.flags.c_contiguous and data.test_images.flags.c_contiguous
    expected_x = np.concatenate([make_images(20, (3, 32, 32), 10, k)[0] for k in range(1, 6)])
    expected_y = np.concatenate([make_images(20, (3, 32, 32), 10, k)[1] for k in range(1, 6)])
    np.testing.assert_array_equal(data.train_images, expected_x)
    np.testing.assert_array_equal(data.train_labels, expected_y)
    np.testing.assert_array_equal(data.test_images, make_images(20, (3, 32, 32), 10, 9)[0])
    np.testing.assert_array_equal(data.test_labels, make_images(20, (3, 32, 32), 10, 9)[1])
    assert data.classes == list(CIFAR10_NAMES)                     # the trailing blank line is not a class
    assert data.layout == "cifar-10-batches-bin" and data.official is False
    assert data.provenance == "not the official release (md5 differs from the official files)"
    assert [p.name for p in data.files] == [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin",
                                                                                             "batches.meta.txt"]
    assert all(p.parent == dest for p in data.files)


def test_cifar100_binary_uses_fine_labels(tmp_path, monkeypatch):
    write_cifar100_binary(tmp_path, n_train=100, n_test=50)
    expect_records(monkeypatch, "cifar100", 100, 50)
    data = load_dataset("cifar100", tmp_path, download=False)
    x, y = make_images(100, (3, 32, 32), 100, 0)
    np.testing.assert_array_equal(data.train_images, x)
    np.testing.assert_array_equal(data.train_labels, y)            # fine, not coarse (y // 5)
    assert data.train_labels.max() > 19
    np.testing.assert_array_equal(data.test_images, make_images(50, (3, 32, 32), 100, 1)[0])
    np.testing.assert_array_equal(data.test_labels, make_images(50, (3, 32, 32), 100, 1)[1])
    assert data.classes == [f"class{i}" for i in range(100)]
    assert data.num_classes == 100 and data.layout == "cifar-100-binary" and data.official is False


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_both_layouts_complete_binary_is_read_with_equal_arrays(tiny_binary_data, monkeypatch, name):
    binary, python = (layout.folder for layout in SPECS[name].layouts)
    assert layout_to_read(name, tiny_binary_data).folder == binary
    data = load_dataset(name, tiny_binary_data, download=False)
    assert data.layout == binary and all(p.parent == tiny_binary_data / binary for p in data.files)
    only_layout(monkeypatch, name, python)
    pickled = load_dataset(name, tiny_binary_data, download=False)
    assert pickled.layout == python
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        got, expected = getattr(data, field), getattr(pickled, field)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    assert data.classes == pickled.classes


def test_incomplete_binary_layout_falls_back_to_the_complete_pickles(tiny_binary_data, tmp_path, monkeypatch):
    shutil.copytree(tiny_binary_data / "cifar-100-binary", tmp_path / "cifar-100-binary")
    shutil.copytree(tiny_binary_data / "cifar-100-python", tmp_path / "cifar-100-python")
    (tmp_path / "cifar-100-binary" / "test.bin").unlink()
    assert layout_to_read("cifar100", tmp_path).folder == "cifar-100-python"
    assert load_dataset("cifar100", tmp_path, download=False).layout == "cifar-100-python"


def _set_label(column: int, value: int, width: int = 3073, record: int = 3):
    """Damage: one record's label byte `column` set to `value`."""
    def damage(blob: bytes) -> bytes:
        out = bytearray(blob)
        out[record * width + column] = value
        return bytes(out)
    return damage


@pytest.mark.parametrize("name, file, damage, phrases", [
    ("cifar10", "data_batch_3.bin", lambda b: b[:-100], ("61,360 bytes", "whole number of 3073-byte records",
                                                          "truncated")),
    ("cifar10", "data_batch_1.bin", lambda b: b + b"\0", ("61,461 bytes", "3073-byte records")),
    ("cifar10", "test_batch.bin", lambda b: b[:-3073], ("19 records, expected 20",)),
    ("cifar10", "data_batch_5.bin", lambda b: b + b[:3073], ("21 records, expected 20",)),
    ("cifar10", "data_batch_2.bin", lambda b: b"", ("0 records, expected 20",)),
    ("cifar10", "data_batch_4.bin", _set_label(0, 10), ("labels range 0..10", "expected 0..9")),
    ("cifar100", "test.bin", _set_label(1, 100, 3074), ("fine labels range 0..100", "expected 0..99")),
    ("cifar100", "train.bin", _set_label(0, 20, 3074), ("coarse labels range 0..20", "expected 0..19")),
    ("cifar100", "test.bin", lambda b: b[:-3073], ("whole number of 3074-byte records",)),
    ("cifar10", "batches.meta.txt", lambda b: b"airplane\ncat\n", ("2 lines of class names", "expected 10")),
    ("cifar10", "batches.meta.txt", lambda b: b.replace(b"\ncat\n", b"\n\n"), ("expected 10 non-blank",)),
    ("cifar100", "fine_label_names.txt", lambda b: b"\xff\xfe" + b, ("not a UTF-8 text file of class names",)),
], ids=["truncated", "trailing-byte", "record-missing", "record-extra", "empty", "label-out-of-range",
        "fine-label-out-of-range", "coarse-label-out-of-range", "partial-record",
        "too-few-class-names", "blank-class-name", "class-names-not-text"])
def test_damaged_cifar_binary_file(tmp_path, monkeypatch, name, file, damage, phrases):
    if name == "cifar10":
        dest = _binary_cifar10(tmp_path, monkeypatch=monkeypatch)
    else:
        dest = write_cifar100_binary(tmp_path, n_train=20, n_test=20)
        expect_records(monkeypatch, "cifar100", 20, 20)
    path = dest / file
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError) as exc:
        load_dataset(name, tmp_path, download=False)
    _assert_names(exc, path, *phrases)


@pytest.mark.parametrize("download", [False, True])
def test_binary_layout_without_class_names_is_an_error(tmp_path, monkeypatch, download):
    dest = _binary_cifar10(tmp_path, monkeypatch=monkeypatch)
    (dest / "batches.meta.txt").unlink()
    monkeypatch.setitem(SPECS, "cifar10", dataclasses.replace(SPECS["cifar10"], urls=["http://127.0.0.1:9/"]))
    with pytest.raises(DataError) as exc:                         # no download either: the copy is a mistake
        load_dataset("cifar10", tmp_path, download=download)
    _assert_names(exc, dest, "missing batches.meta.txt")
    if download:
        assert "remove that folder to download cifar-10-batches-py" in str(exc.value)
    assert not (tmp_path / "cifar-10-batches-py").exists() and not (tmp_path / "cifar-10-python.tar.gz").exists()


def test_official_binary_release_in_the_real_record_counts(tmp_path):
    # The spec's own counts: an official-sized file passes, one record short is refused.
    dest = tmp_path / "cifar-100-binary"
    dest.mkdir()
    x = np.zeros((10000, 3, 32, 32), np.uint8)
    y = np.arange(10000) % 100
    records = cifar_records(x, y // 5, y)
    path = dest / "test.bin"
    path.write_bytes(records)
    layout = SPECS["cifar100"].get_layout("cifar-100-binary")
    images, labels = datasets._read_binary_batches([(path, layout.records["test.bin"])], layout)
    assert images.shape == (10000, 3, 32, 32) and labels.tolist() == y.tolist()
    path.write_bytes(records[:-3074])
    with pytest.raises(DataError) as exc:
        datasets._read_binary_batches([(path, layout.records["test.bin"])], layout)
    _assert_names(exc, path, "9,999 records, expected 10,000")


# ---------------------------------------------------------------- official files and verify


def test_verify_reports_per_file_status(tmp_path, monkeypatch):
    dest = write_idx_dataset(tmp_path, n_train=20, n_test=10)
    first, second = IDX_NAMES[0] + ".gz", IDX_NAMES[1] + ".gz"
    monkeypatch.setitem(SPECS["mnist"].get_layout().md5, first, md5sum(dest / first))
    (dest / second).unlink()
    rows = dict((p.name, s) for p, s in verify_dataset("mnist", tmp_path))
    assert list(rows) == [n + ".gz" for n in IDX_NAMES]
    assert rows[first] == "official"
    assert rows[second] == "missing"
    for name in IDX_NAMES[2:]:
        got, official = md5sum(dest / (name + ".gz")), SPECS["mnist"].get_layout().md5[name + ".gz"]
        assert rows[name + ".gz"] == f"not official (md5 {got}, official {official})"
    paths = [p for p, _ in verify_dataset("mnist", tmp_path)]
    assert paths[1] == dest / second                              # a missing file is reported where it belongs


def test_verify_missing_folder_reports_every_file_missing(tmp_path):
    rows = verify_dataset("cifar100", tmp_path)
    assert [(p, s) for p, s in rows] == [(tmp_path / "cifar-100-python" / f, "missing")
                                        for f in ("train", "test", "meta")]


def test_uncompressed_twin_is_not_official(tmp_path):
    write_idx_dataset(tmp_path, n_train=20, n_test=10, gz=False)
    rows = verify_dataset("mnist", tmp_path)
    assert all(s.startswith("not official (no official checksum") for _, s in rows)
    assert load_dataset("mnist", tmp_path, download=False).official is False


def test_official_when_every_md5_matches(tmp_path, monkeypatch):
    dest = write_cifar10(tmp_path, per_batch=10, n_test=10)
    layout = SPECS["cifar10"].get_layout("cifar-10-batches-py")
    patch_layout(monkeypatch, "cifar10", layout.folder, md5={name: md5sum(dest / name) for name in layout.md5})
    assert load_dataset("cifar10", tmp_path, download=False).official is True
    assert all(s == "official" for _, s in verify_dataset("cifar10", tmp_path))
    _rewrite_batch(dest / "data_batch_5", batch_label=b"changed")  # one byte off is enough
    assert load_dataset("cifar10", tmp_path, download=False).official is False


def test_generated_files_are_not_official(tiny_data):
    for name in list_datasets():
        assert load_dataset(name, tiny_data, download=False).official is False
        assert all(s.startswith("not official") for _, s in verify_dataset(name, tiny_data))


# ---------------------------------------------------------------- provenance


def _official_binary(monkeypatch, root: Path, name: str) -> None:
    """Make the spec take the generated binary files of `name` under root for the official release."""
    layout = next(layout for layout in SPECS[name].layouts if layout.format == "binary")
    md5 = {f: (md5sum(root / layout.folder / f) if official else None) for f, official in layout.md5.items()}
    patch_layout(monkeypatch, name, layout.folder, md5=md5)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_official_binary_release(tiny_binary_data, monkeypatch, name):
    _official_binary(monkeypatch, tiny_binary_data, name)
    data = load_dataset(name, tiny_binary_data, download=False)
    # The class-name file has no official md5: unchecked, and not held against the copy.
    assert data.official is True and data.provenance == OFFICIAL_TEXT == "official release (md5 verified)"
    rows = {p.name: s for p, s in verify_dataset(name, tiny_binary_data)}
    classes_file = SPECS[name].layouts[0].classes_file
    assert rows[classes_file] == UNCHECKED
    assert all(s == "official" for f, s in rows.items() if f.endswith(".bin"))
    assert all(s.startswith("not official (md5 ") for f, s in rows.items() if "." not in f)   # the pickles


def test_official_wins_over_an_inexact_list(tiny_binary_data, tmp_path, monkeypatch):
    shutil.copytree(tiny_binary_data / "cifar-10-batches-bin", tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-inexact-images.txt").write_text("header\ntrain 1\n")
    _official_binary(monkeypatch, tmp_path, "cifar10")
    assert load_dataset("cifar10", tmp_path, download=False).provenance == OFFICIAL_TEXT


@pytest.mark.parametrize("where", ["data folder", "layout folder"])
@pytest.mark.parametrize("folder", ["cifar-10-batches-bin", "cifar-10-batches-py"])
def test_inexact_list_gives_the_exact_count(tiny_binary_data, tmp_path, monkeypatch, where, folder):
    shutil.copytree(tiny_binary_data / folder, tmp_path / folder)
    listed = tmp_path / ("" if where == "data folder" else folder) / "cifar-10-inexact-images.txt"
    listed.write_text("split index (official order) of the inexact images\ntrain 4\ntest 99\ntrain 299\n\n")
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.layout == folder and data.official is False
    # 5 x 60 train + 100 test images, 3 listed.
    assert data.provenance == "CIFAR-10: 397/400 images exact (3 from a JPEG copy, per cifar-10-inexact-images.txt)"


@pytest.mark.parametrize("text, phrases", [
    ("header\ntrain 4\nvalidation 3\n", ("line 3 'validation 3' is not 'train N' or 'test N'",)),
    ("header\ntrain 4\ntest -1\n", ("line 3 'test -1'",)),
    ("header\ntrain 300\n", ("line 2 names train image 300", "the train split holds 300")),
    ("header\ntest 100\n", ("test split holds 100",)),
    ("header\ntest 7\ntrain 1\ntest 7\n", ("line 4 lists test 7 twice",)),
    ("header only\n\n", ("no line 'train N' or 'test N'",)),
    (b"\xff\xfe\n".decode("latin-1"), ("not a UTF-8",)),
], ids=["unknown-split", "negative-index", "train-index-too-large", "test-index-too-large", "duplicate", "empty",
        "not-text"])
def test_malformed_inexact_list(tiny_binary_data, tmp_path, text, phrases):
    shutil.copytree(tiny_binary_data / "cifar-10-batches-bin", tmp_path / "cifar-10-batches-bin")
    listed = tmp_path / "cifar-10-inexact-images.txt"
    listed.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path, download=False)
    _assert_names(exc, listed, *phrases)
    if "not a UTF-8" not in phrases:
        assert "malformed list of inexact images" in str(exc.value)


def test_md5_differs_provenance(tiny_data):
    for name in list_datasets():
        assert load_dataset(name, tiny_data, download=False).provenance == \
            "not the official release (md5 differs from the official files)"


def test_uncompressed_copies_cannot_be_verified(tmp_path):
    write_idx_dataset(tmp_path, n_train=20, n_test=10, gz=False)
    data = load_dataset("mnist", tmp_path, download=False)
    assert data.official is False and data.layout == "MNIST/raw"
    assert data.provenance == "not verified as the official release (no official md5 for uncompressed copies)"


# ---------------------------------------------------------------- reslab data verify


def test_data_verify_lists_every_layout_and_marks_the_one_read(tiny_binary_data, monkeypatch, capsys):
    _official_binary(monkeypatch, tiny_binary_data, "cifar100")
    assert main(["data", "verify", "--dataset", "cifar100", "--data-dir", str(tiny_binary_data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = [f for layout in SPECS["cifar100"].layouts for f in layout.md5]
    assert len(lines) == len(files) == 6                           # one line per file, binary layout first
    for line, file in zip(lines, files):
        assert line.startswith("cifar100 ") and file in line
        binary = file in SPECS["cifar100"].layouts[0].md5
        assert line.endswith("(read by reslab train)") == binary
        assert str(tiny_binary_data / ("cifar-100-binary" if binary else "cifar-100-python") / file) in line
    assert "official " in lines[0] and "official " in lines[1] and UNCHECKED in lines[2]
    assert all("not official (md5 " in line for line in lines[3:])


def test_data_verify_exit_code_follows_the_layout_read(tiny_binary_data, tmp_path, monkeypatch, capsys):
    _official_binary(monkeypatch, tiny_binary_data, "cifar100")
    argv = ["data", "verify", "--data-dir", str(tiny_binary_data), "--dataset"]
    assert main(argv + ["cifar10"]) == 1                          # generated, not official
    assert main(argv + ["cifar100", "cifar10"]) == 1              # every dataset asked must be official
    assert main(argv + ["cifar100"]) == 0
    only_layout(monkeypatch, "cifar100", "cifar-100-python")
    assert main(argv + ["cifar100"]) == 1                         # the pickles are read: their md5 differ
    capsys.readouterr()
    assert main(["data", "verify", "--data-dir", str(tmp_path), "--dataset", "cifar100"]) == 1   # nothing there
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(" missing " in line and "read by" not in line for line in lines[:3])
    assert lines[3] == ("cifar100      no complete copy in cifar-100-python/: "   # the one layout left here
                        "`reslab data download --dataset cifar100` fetches the official release")


# ---------------------------------------------------------------- names and folders


def test_list_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "fashionmnist", "mnist"]


@pytest.mark.parametrize("alias, name", [("MNIST", "mnist"), ("Fashion-MNIST", "fashionmnist"),
                                         ("fashion_mnist", "fashionmnist"), ("CIFAR-10", "cifar10")])
def test_dataset_name_aliases(alias, name):
    assert datasets.get_spec(alias).name == name


def test_unknown_dataset_lists_valid_names(tiny_data):
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet", tiny_data)
    message = str(exc.value)
    assert "'imagenet'" in message and "\n" not in message
    for name in list_datasets():
        assert name in message


def test_dataset_name_that_is_not_a_string(tiny_data):
    with pytest.raises(DataError, match="unknown dataset 10; choose one of: cifar10, cifar100"):
        load_dataset(10, tiny_data)


def test_missing_files_without_download(tmp_path):
    dest = write_idx_dataset(tmp_path, n_train=20, n_test=10)
    (dest / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path, download=False)
    _assert_names(exc, dest, "missing t10k-labels-idx1-ubyte.gz")


def test_missing_explicit_data_folder(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", missing)
    _assert_names(exc, missing, "does not exist", "MNIST/raw")
    assert not missing.exists()                                   # nothing was created or downloaded

    monkeypatch.setenv("RESLAB_DATA", str(missing))
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10")
    _assert_names(exc, missing, "does not exist", "cifar-10-batches-py")
    _assert_names(exc, missing, "holds cifar-10-batches-bin/ or cifar-10-batches-py/")


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    assert resolve_data_dir(None) == Path("data")
    monkeypatch.setenv("RESLAB_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("~/d") == tmp_path / "d"


def test_data_folder_from_environment_and_default(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_DATA", str(tiny_data))
    assert len(load_dataset("mnist").train_labels) == 300
    monkeypatch.delenv("RESLAB_DATA")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_data / "MNIST", tmp_path / "data" / "MNIST")
    data = load_dataset("mnist", download=False)
    assert len(data.test_labels) == 100
    assert all(p.is_relative_to(Path("data")) for p in data.files)
