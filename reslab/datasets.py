"""Dataset files in torchvision's folder layouts: read them, check them, fetch them when missing."""
from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .download import extract_tar, fetch, md5sum
from .errors import DataError

DATA_ENV = "RESLAB_DATA"
OFFLINE_ENV = "RESLAB_OFFLINE"   # set to 1 to never download (a missing file is then an error at once)

_MNIST_URLS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
_FASHION_URLS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under the data folder, its official files and checksums, and its shape."""

    name: str
    folder: str                      # relative to the data folder, as torchvision lays it out
    format: str                      # "idx" or "cifar"
    md5: dict[str, str]              # official file name -> md5
    urls: list[str]                  # base urls of the official files (or of the archive)
    input_shape: tuple[int, int, int]
    num_classes: int
    classes: tuple[str, ...] = ()
    archive: tuple[str, str] | None = None   # (archive name, md5) that unpacks into `folder`
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    label_key: bytes = b"labels"
    meta: tuple[str, bytes] | None = None    # (meta file, key holding the class names)


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "MNIST/raw", "idx",
        dict(zip(_IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                              "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
        _MNIST_URLS, (1, 28, 28), 10, tuple(str(d) for d in range(10)),
        train_files=_IDX_FILES[:2], test_files=_IDX_FILES[2:]),
    "fashionmnist": DatasetSpec(
        "fashionmnist", "FashionMNIST/raw", "idx",
        dict(zip(_IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                              "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
        _FASHION_URLS, (1, 28, 28), 10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        train_files=_IDX_FILES[:2], test_files=_IDX_FILES[2:]),
    "cifar10": DatasetSpec(
        "cifar10", "cifar-10-batches-py", "cifar",
        {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
         "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
         "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
         "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
        [_CIFAR_URL], (3, 32, 32), 10,
        archive=("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        label_key=b"labels", meta=("batches.meta", b"label_names")),
    "cifar100": DatasetSpec(
        "cifar100", "cifar-100-python", "cifar",
        {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
         "meta": "7973b15100ade9c7d40fb424638fde48"},
        [_CIFAR_URL], (3, 32, 32), 100,
        archive=("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
        train_files=("train",), test_files=("test",),
        label_key=b"fine_labels", meta=("meta", b"fine_label_names")),
}


@dataclass
class Dataset:
    """A dataset's train and test splits as uint8 arrays (N, C, H, W) with int64 labels."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    official: bool                  # every file matched the official md5
    files: list[Path] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def list_datasets() -> list[str]:
    """Names of the datasets reslab can read."""
    return sorted(SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by name, or a one-line error listing the valid names."""
    key = str(name).lower().replace("-", "").replace("_", "")   # str(): a YAML file may hold `dataset: 10`
    if key not in SPECS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return SPECS[key]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data folder: the argument, else $RESLAB_DATA, else ./data."""
    return Path(data_dir or os.environ.get(DATA_ENV) or "data").expanduser()


def ensure_files(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """The paths of a dataset's files in the data folder, downloading missing ones when allowed."""
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    explicit = data_dir is not None or DATA_ENV in os.environ
    if explicit and not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data folder {root} {what} (set --data-dir or ${DATA_ENV} to the folder that "
                        f"holds {spec.folder}/)")
    folder = root / spec.folder
    paths = {f: _find(folder, f) for f in spec.md5}
    missing = [f for f, p in paths.items() if p is None]
    if missing:
        if not download or os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
            raise DataError(f"{spec.name}: missing {', '.join(missing)} in {folder} (downloads are off)")
        _download(spec, root, missing)
        paths = {f: _find(folder, f) for f in spec.md5}
        still_missing = [f for f, p in paths.items() if p is None]
        if still_missing:   # an archive that does not hold every file
            raise DataError(f"{spec.name}: the download did not provide {', '.join(still_missing)} in {folder}")
    return paths


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Read a dataset's train and test splits from the data folder, downloading missing files when allowed."""
    spec = get_spec(name)
    paths = ensure_files(name, data_dir, download)
    if spec.format == "idx":
        train_x, train_y = _read_idx_pair(paths[spec.train_files[0]], paths[spec.train_files[1]], spec)
        test_x, test_y = _read_idx_pair(paths[spec.test_files[0]], paths[spec.test_files[1]], spec)
        classes = list(spec.classes)
    else:
        train_x, train_y = _read_cifar_batches([paths[f] for f in spec.train_files], spec)
        test_x, test_y = _read_cifar_batches([paths[f] for f in spec.test_files], spec)
        classes = _read_cifar_classes(paths[spec.meta[0]], spec)
    official = all(file_status(spec, p) == "official" for p in paths.values())
    return Dataset(spec.name, train_x, train_y, test_x, test_y, classes, official, list(paths.values()))


def file_status(spec: DatasetSpec, path: Path | None) -> str:
    """'official' when the file's md5 is the official one, 'missing', or 'not official (...)'."""
    if path is None or not path.exists():
        return "missing"
    expected = spec.md5.get(path.name)
    if expected is None:
        return "not official (no official checksum for this uncompressed copy)"
    got = md5sum(path)
    return "official" if got == expected else f"not official (md5 {got}, official {expected})"


def verify_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """For every file of a dataset, whether the data folder holds the official release of it."""
    spec = get_spec(name)
    folder = resolve_data_dir(data_dir) / spec.folder
    rows = []
    for filename in spec.md5:
        path = _find(folder, filename)
        rows.append((path or folder / filename, file_status(spec, path)))
    return rows


def _find(folder: Path, filename: str) -> Path | None:
    """The file itself, or its uncompressed twin for an IDX .gz (torchvision keeps both)."""
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _download(spec: DatasetSpec, root: Path, missing: list[str]) -> None:
    """Fetch the missing files (or the archive that holds them) into the data folder."""
    where = root / spec.folder
    try:
        if spec.archive:
            archive_name, archive_md5 = spec.archive
            archive = fetch(archive_name, [u + archive_name for u in spec.urls], archive_md5, root)
            extract_tar(archive, root)
        else:
            for filename in missing:
                fetch(filename, [u + filename for u in spec.urls], spec.md5[filename], where)
    except DataError as exc:
        raise DataError(f"{spec.name}: {', '.join(missing)} not found in {where} and the download failed: {exc}") from exc


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when it ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a complete gzip file ({exc}); delete it to download it again") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dimensions, checking its header against its length."""
    raw = _read_bytes(path)
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero, dtype, dims_count = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or dims_count != ndim:
        raise DataError(f"{path}: wrong magic number 0x{raw[:4].hex()} (expected 0x000008{ndim:02x}, "
                        f"an IDX file of {ndim}-d unsigned bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims)   # Python ints: a corrupt header cannot overflow
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes but its header {dims} says {expected}; the file is truncated "
                        "or corrupt")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_idx_pair(images_path: Path, labels_path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) and labels (N,) from an IDX images/labels pair."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != spec.input_shape[1:]:
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                        f"{spec.input_shape[1]}x{spec.input_shape[2]}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    _check_labels(labels, spec, labels_path)
    return images[:, None], labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers only: nothing in a data file is executed."""

    def find_class(self, module: str, name: str):
        import codecs  # protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, 'latin1')
        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
        if (module, name) in allowed:
            return allowed[(module, name)]
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        raise DataError(f"refusing to load {module}.{name} from a dataset pickle")


def _numpy_reconstruct():
    """numpy's array reconstructor, wherever this numpy version keeps it."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _unpickle(path: Path) -> dict:
    """Load one CIFAR python-pickle file safely."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:  # truncated or garbled pickles raise many types
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict in the pickle, found {type(obj).__name__}")
    return obj


def _read_cifar_batches(paths: list[Path], spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) from CIFAR python-pickle batches."""
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        if b"data" not in batch or spec.label_key not in batch:
            raise DataError(f"{path}: missing key {b'data' if b'data' not in batch else spec.label_key!r}")
        data = np.asarray(batch[b"data"])
        try:
            y = np.asarray(batch[spec.label_key], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{path}: labels under {spec.label_key!r} are not integers") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        if y.shape != (len(data),):
            raise DataError(f"{path}: {len(y)} labels for {len(data)} images")
        _check_labels(y, spec, path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _read_cifar_classes(path: Path, spec: DatasetSpec) -> list[str]:
    """Class names from a CIFAR meta file."""
    meta = _unpickle(path)
    names = meta.get(spec.meta[1])
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{path}: expected {spec.num_classes} class names under {spec.meta[1]!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _check_labels(labels: np.ndarray, spec: DatasetSpec, path: Path) -> None:
    """Every label must be a class index of the dataset."""
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{path}: labels range {labels.min()}..{labels.max()}, expected 0..{spec.num_classes - 1}")
