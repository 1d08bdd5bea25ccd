"""Dataset files in their official folder layouts: read them, check them, fetch them when missing."""
from __future__ import annotations

import gzip
import importlib
import math
import os
import pickle
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import did_you_mean
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
class Layout:
    """One folder layout a dataset can be stored in: its files, their official md5s, and how to read them."""

    folder: str                      # relative to the data folder, as the official archive (or torchvision) lays it out
    format: str                      # "idx", "pickle" (CIFAR python batches) or "binary" (CIFAR binary records)
    md5: dict[str, str | None]       # every file the layout needs -> official md5 (None: no official md5 is known)
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    classes_file: str | None = None  # the file holding the class names (idx: none, the spec lists them)
    classes_key: bytes = b""         # pickle: key of the class names in classes_file
    label_key: bytes = b""           # pickle: key of the labels in each batch
    record_labels: tuple[tuple[str, int], ...] = ()   # binary: (name, number of values) of each label byte of a record
    class_label: int = 0             # binary: which of record_labels is the class
    records: dict[str, int] = field(default_factory=dict)   # binary: records per file in the official release
    archive: tuple[str, str] | None = None   # (archive name, md5) that unpacks into `folder`
    download: bool = False           # fetched (its files, or `archive`) when no layout is complete


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: the layouts it can be stored in (preferred first), where to fetch it, and its shape."""

    name: str
    title: str                       # the name papers use, for provenance texts
    layouts: tuple[Layout, ...]      # the first complete one is read
    urls: list[str]                  # base urls of the official files (or of the archive)
    input_shape: tuple[int, int, int]
    num_classes: int
    classes: tuple[str, ...] = ()    # class names, for layouts without a class-name file
    inexact_list: str | None = None  # a list of images known not to be exact, if such a copy is around

    @property
    def download_layout(self) -> Layout:
        """The layout fetched when no layout is complete."""
        return next(layout for layout in self.layouts if layout.download)

    def get_layout(self, folder: str | None = None) -> Layout:
        """The layout kept in `folder` (default: the downloaded one)."""
        if folder is None:
            return self.download_layout
        return next(layout for layout in self.layouts if layout.folder == folder)


def _cifar10_bin() -> Layout:
    train = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
    md5 = ("5dd7e06a14cb22eb9f671a540d1b7c25", "5ea93a67294ea407fff1d09f752e9692", "942cd6a4bcdd0dd3c604fbe906cb4421",
           "ae636b3ba5c66a11e91e8cb52e771fcb", "53f37980c15c3d472c316c40844f3f0d", "803d5f7f4d78ea53de84dbe85f74fb6d")
    return Layout("cifar-10-batches-bin", "binary",
                  {**dict(zip(train + ("test_batch.bin",), md5)), "batches.meta.txt": None},
                  train, ("test_batch.bin",), classes_file="batches.meta.txt", record_labels=(("labels", 10),),
                  records={f: 10000 for f in train + ("test_batch.bin",)})


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "MNIST",
        (Layout("MNIST/raw", "idx",
                dict(zip(_IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                      "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
                _IDX_FILES[:2], _IDX_FILES[2:], download=True),),
        _MNIST_URLS, (1, 28, 28), 10, tuple(str(d) for d in range(10))),
    "fashionmnist": DatasetSpec(
        "fashionmnist", "Fashion-MNIST",
        (Layout("FashionMNIST/raw", "idx",
                dict(zip(_IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                      "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
                _IDX_FILES[:2], _IDX_FILES[2:], download=True),),
        _FASHION_URLS, (1, 28, 28), 10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10",
        (_cifar10_bin(),
         Layout("cifar-10-batches-py", "pickle",
                {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                 "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                 "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
                 "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                classes_file="batches.meta", classes_key=b"label_names", label_key=b"labels",
                archive=("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"), download=True)),
        [_CIFAR_URL], (3, 32, 32), 10, inexact_list="cifar-10-inexact-images.txt"),
    "cifar100": DatasetSpec(
        "cifar100", "CIFAR-100",
        (Layout("cifar-100-binary", "binary",
                {"train.bin": "6172c7755cfe09b2fe270c85cebc1b15", "test.bin": "4499cfba6c016c1be1438163640a0898",
                 "fine_label_names.txt": None},
                ("train.bin",), ("test.bin",), classes_file="fine_label_names.txt",
                record_labels=(("coarse labels", 20), ("fine labels", 100)), class_label=1,
                records={"train.bin": 50000, "test.bin": 10000}),
         Layout("cifar-100-python", "pickle",
                {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                 "meta": "7973b15100ade9c7d40fb424638fde48"},
                ("train",), ("test",), classes_file="meta", classes_key=b"fine_label_names", label_key=b"fine_labels",
                archive=("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"), download=True)),
        [_CIFAR_URL], (3, 32, 32), 100),
}

# The status of a file that has no official md5 (the binary releases' class-name text files): it is not checked,
# and does not keep a copy from being official; the pixels and labels are all in the files that do have one.
UNCHECKED = "unchecked (no official md5 for this class-name file)"
OFFICIAL_TEXT = "official release (md5 verified)"


@dataclass
class Dataset:
    """A dataset's train and test splits as uint8 arrays (N, C, H, W) with int64 labels."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    official: bool                  # every file of the layout read that has an official md5 matched it
    files: list[Path] = field(default_factory=list)
    layout: str = ""                # the folder read, relative to the data folder, e.g. "cifar-100-binary"
    provenance: str = ""            # one sentence on how exactly the files match the official release

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
        raise DataError(f"unknown dataset {name!r}{did_you_mean(key, SPECS)}; choose one of: "
                        f"{', '.join(list_datasets())}")
    return SPECS[key]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data folder: the argument, else $RESLAB_DATA, else ./data."""
    return Path(data_dir or os.environ.get(DATA_ENV) or "data").expanduser()


def ensure_files(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> dict[str, Path]:
    """The paths of the files of the layout a dataset is read from, downloading one when none is complete."""
    return _ensure(get_spec(name), data_dir, download)[2]


def layout_to_read(name: str, data_dir: str | os.PathLike | None = None) -> Layout | None:
    """The layout load_dataset reads from the data folder now; None when none is complete (it would download)."""
    return _complete_layout(get_spec(name), resolve_data_dir(data_dir))


# Datasets read by this process, by their files' identity: a study's runs share one read (and one md5 pass).
_CACHE: dict[tuple, Dataset] = {}
_CACHE_SIZE = 2


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Read a dataset's train and test splits from the data folder, downloading missing files when allowed.

    The arrays are read-only; a second call for unchanged files returns the same Dataset without reading them."""
    spec = get_spec(name)
    root, layout, paths = _ensure(spec, data_dir, download)
    stats = [(str(path.resolve()), path.stat()) for path in paths.values()]
    key = (spec.name, layout.folder, *((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _read_dataset(spec, root, layout, paths)
    return _CACHE[key]


def clear_dataset_cache() -> None:
    """Forget the datasets this process has read: the next load_dataset reads the files again."""
    _CACHE.clear()


def _read_dataset(spec: DatasetSpec, root: Path, layout: Layout, paths: dict[str, Path]) -> Dataset:
    """Read and check one layout's files."""
    train_x, train_y, test_x, test_y, classes = _READERS[layout.format](spec, layout, paths)
    statuses = {f: file_status(layout, f, p) for f, p in paths.items()}
    official = all(s == "official" for f, s in statuses.items() if layout.md5[f] is not None)
    provenance = _provenance(spec, root, layout, official, statuses, {"train": len(train_y), "test": len(test_y)})
    for array in (train_x, train_y, test_x, test_y):
        array.setflags(write=False)
    return Dataset(spec.name, train_x, train_y, test_x, test_y, classes, official, list(paths.values()),
                   layout.folder, provenance)


def file_status(layout: Layout, filename: str, path: Path | None) -> str:
    """'official' when the file's md5 is the official one, 'missing', UNCHECKED, or 'not official (...)'."""
    if path is None or not path.exists():
        return "missing"
    if path.name != filename:
        return "not official (no official checksum for this uncompressed copy)"
    expected = layout.md5[filename]
    if expected is None:
        return UNCHECKED
    got = md5sum(path)
    return "official" if got == expected else f"not official (md5 {got}, official {expected})"


def verify_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """For every file of every layout in the data folder (or of the downloaded one, when none is), its status."""
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    found = [(layout, _present(root, layout)) for layout in spec.layouts]
    shown = [(layout, paths) for layout, paths in found if any(paths.values())]
    if not shown:
        shown = [(spec.download_layout, _present(root, spec.download_layout))]
    return [(path or root / layout.folder / filename, file_status(layout, filename, path))
            for layout, paths in shown for filename, path in paths.items()]


def _data_root(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> Path:
    """The data folder, which must exist when it was named explicitly (argument or environment)."""
    root = resolve_data_dir(data_dir)
    explicit = data_dir is not None or DATA_ENV in os.environ
    if explicit and not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        folders = " or ".join(f"{layout.folder}/" for layout in spec.layouts)
        raise DataError(f"data folder {root} {what} (set --data-dir or ${DATA_ENV} to the folder that holds {folders})")
    return root


def _present(root: Path, layout: Layout) -> dict[str, Path | None]:
    """Each file of a layout -> its path in the data folder, or None when absent."""
    return {f: _find(root / layout.folder, f) for f in layout.md5}


def _paths(present: dict[str, Path | None]) -> dict[str, Path]:
    """The paths of a layout whose every file is present."""
    return {f: p for f, p in present.items() if p is not None}


def _complete_layout(spec: DatasetSpec, root: Path) -> Layout | None:
    """The first layout (in the spec's order of preference) whose every file is present."""
    return next((layout for layout in spec.layouts if all(_present(root, layout).values())), None)


def _ensure(spec: DatasetSpec, data_dir: str | os.PathLike | None,
            download: bool) -> tuple[Path, Layout, dict[str, Path]]:
    """The data folder, the layout to read and its files' paths; downloads when no layout is complete and allowed."""
    root = _data_root(spec, data_dir)
    complete = _complete_layout(spec, root)
    if complete is not None:
        return root, complete, _paths(_present(root, complete))
    layout = spec.download_layout
    partial = [other for other in spec.layouts if any(_present(root, other).values())]
    # A partial copy of another layout, with none of the downloaded one, is most likely a mistake (say, its class-name
    # file not copied): name its missing files rather than fetch a second layout beside it.
    shown = layout if layout in partial or not partial else partial[0]
    missing = [f for f, p in _present(root, shown).items() if p is None]
    folder = root / shown.folder
    if not download or os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise DataError(f"{spec.name}: missing {', '.join(missing)} in {folder} (downloads are off)")
    if shown is not layout:
        raise DataError(f"{spec.name}: missing {', '.join(missing)} in {folder}; add them, or remove that folder "
                        f"to download {layout.folder}")
    _download(spec, layout, root, missing)
    paths = _present(root, layout)
    still_missing = [f for f, p in paths.items() if p is None]
    if still_missing:   # an archive that does not hold every file
        raise DataError(f"{spec.name}: the download did not provide {', '.join(still_missing)} in {folder}")
    return root, layout, _paths(paths)


def _find(folder: Path, filename: str) -> Path | None:
    """The file itself, or its uncompressed twin for an IDX .gz (torchvision keeps both)."""
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _download(spec: DatasetSpec, layout: Layout, root: Path, missing: list[str]) -> None:
    """Fetch the missing files (or the archive that holds them) into the data folder."""
    where = root / layout.folder
    try:
        if layout.archive:
            archive_name, archive_md5 = layout.archive
            archive = fetch(archive_name, [u + archive_name for u in spec.urls], archive_md5, root)
            extract_tar(archive, root)
        else:
            for filename in missing:
                md5 = layout.md5[filename]
                if md5 is None:  # a download must be verified: only files with an official md5 are fetched one by one
                    raise DataError(f"{filename} has no official md5 to verify a download against")
                fetch(filename, [u + filename for u in spec.urls], md5, where)
    except DataError as exc:
        raise DataError(f"{spec.name}: {', '.join(missing)} not found in {where} and the download failed: "
                        f"{exc}") from exc


def _provenance(spec: DatasetSpec, root: Path, layout: Layout, official: bool, statuses: dict[str, str],
                sizes: dict[str, int]) -> str:
    """One sentence for a results table: how exactly the files read match the official release."""
    if official:
        return OFFICIAL_TEXT
    listed = _find_inexact_list(spec, root, layout)
    if listed is not None:
        inexact, total = _count_inexact(listed, sizes), sum(sizes.values())
        return (f"{spec.title}: {total - inexact:,}/{total:,} images exact ({inexact} from a JPEG copy, "
                f"per {listed.name})")
    if any(s.startswith("not official (md5 ") for s in statuses.values()):
        return "not the official release (md5 differs from the official files)"
    return "not verified as the official release (no official md5 for uncompressed copies)"


def _find_inexact_list(spec: DatasetSpec, root: Path, layout: Layout) -> Path | None:
    """The list of inexact images, in the data folder or in the layout's folder, if there is one."""
    if spec.inexact_list is None:
        return None
    for candidate in (root / spec.inexact_list, root / layout.folder / spec.inexact_list):
        if candidate.is_file():
            return candidate
    return None


_INEXACT_ENTRY = re.compile(r"(train|test) ([0-9]+)")


def _count_inexact(path: Path, sizes: dict[str, int]) -> int:
    """How many images a list of inexact images names (lines 'train N' / 'test N' after a header line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text list of inexact images") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    seen: set[tuple[str, int]] = set()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        entry = _INEXACT_ENTRY.fullmatch(text)
        if entry is None:
            if text and number > 1:   # the first line is a header; blank lines are padding
                raise DataError(f"{path}: malformed list of inexact images, line {number} {text!r} is not "
                                "'train N' or 'test N'")
            continue
        split, index = entry[1], int(entry[2])
        if index >= sizes[split]:
            raise DataError(f"{path}: malformed list of inexact images, line {number} names {split} image {index} "
                            f"but the {split} split holds {sizes[split]:,}")
        if (split, index) in seen:
            raise DataError(f"{path}: malformed list of inexact images, line {number} lists {split} {index} twice")
        seen.add((split, index))
    if not seen:   # an empty list cannot explain why the md5 differs
        raise DataError(f"{path}: malformed list of inexact images, no line 'train N' or 'test N'")
    return len(seen)


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
    _check_not_empty(len(images), images_path)
    _check_labels(labels, spec, labels_path)
    return images[:, None], labels.astype(np.int64)


def _read_idx_layout(spec: DatasetSpec, layout: Layout, paths: dict[str, Path]) -> tuple:
    """Train images and labels, test images and labels, and class names from an IDX layout."""
    train_x, train_y = _read_idx_pair(paths[layout.train_files[0]], paths[layout.train_files[1]], spec)
    test_x, test_y = _read_idx_pair(paths[layout.test_files[0]], paths[layout.test_files[1]], spec)
    return train_x, train_y, test_x, test_y, list(spec.classes)


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
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")._reconstruct


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


def _classes_file(layout: Layout) -> str:
    """The file of a CIFAR layout that holds the class names."""
    if layout.classes_file is None:
        raise ValueError(f"layout {layout.folder} names no class-name file")
    return layout.classes_file


def _read_pickle_layout(spec: DatasetSpec, layout: Layout, paths: dict[str, Path]) -> tuple:
    """Train images and labels, test images and labels, and class names from a CIFAR python-pickle layout."""
    train_x, train_y = _read_cifar_batches([paths[f] for f in layout.train_files], layout, spec)
    test_x, test_y = _read_cifar_batches([paths[f] for f in layout.test_files], layout, spec)
    return train_x, train_y, test_x, test_y, _read_cifar_classes(paths[_classes_file(layout)], layout, spec)


def _read_cifar_batches(paths: list[Path], layout: Layout, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) from CIFAR python-pickle batches."""
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        if b"data" not in batch or layout.label_key not in batch:
            raise DataError(f"{path}: missing key {b'data' if b'data' not in batch else layout.label_key!r}")
        data = np.asarray(batch[b"data"])
        try:
            y = np.asarray(batch[layout.label_key], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{path}: labels under {layout.label_key!r} are not integers") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        if y.shape != (len(data),):
            raise DataError(f"{path}: {len(y)} labels for {len(data)} images")
        _check_not_empty(len(data), path)
        _check_labels(y, spec, path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _read_cifar_classes(path: Path, layout: Layout, spec: DatasetSpec) -> list[str]:
    """Class names from a CIFAR meta file."""
    meta = _unpickle(path)
    names = meta.get(layout.classes_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{path}: expected {spec.num_classes} class names under {layout.classes_key!r}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_binary_layout(spec: DatasetSpec, layout: Layout, paths: dict[str, Path]) -> tuple:
    """Train images and labels, test images and labels, and class names from a CIFAR binary layout."""
    train_x, train_y = _read_binary_batches([(paths[f], layout.records[f]) for f in layout.train_files], layout)
    test_x, test_y = _read_binary_batches([(paths[f], layout.records[f]) for f in layout.test_files], layout)
    return train_x, train_y, test_x, test_y, _read_class_names_text(paths[_classes_file(layout)], spec)


def _read_binary_batches(files: list[tuple[Path, int]], layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) from CIFAR binary files of (path, expected record count)."""
    images, labels = [], []
    for path, expected in files:
        records = _read_records(path, len(layout.record_labels) + 3 * 32 * 32, expected)
        for column, (what, limit) in enumerate(layout.record_labels):
            values = records[:, column]
            if len(values) and values.max() >= limit:   # uint8: never below 0
                raise DataError(f"{path}: {what} range {values.min()}..{values.max()}, expected 0..{limit - 1}")
        images.append(records[:, len(layout.record_labels):].reshape(-1, 3, 32, 32))
        labels.append(records[:, layout.class_label].astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)   # concatenate copies: contiguous, not views of the file


def _read_records(path: Path, width: int, expected: int) -> np.ndarray:
    """A binary file of fixed-size records as a (records, width) uint8 array, checking its size and record count."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if len(raw) % width:
        raise DataError(f"{path}: {len(raw):,} bytes is not a whole number of {width}-byte records; the file is "
                        "truncated or corrupt")
    if len(raw) // width != expected:
        raise DataError(f"{path}: {len(raw) // width:,} records, expected {expected:,}; the file is truncated or not "
                        "the official one")
    _check_not_empty(len(raw) // width, path)
    return raw.reshape(-1, width)


def _read_class_names_text(path: Path, spec: DatasetSpec) -> list[str]:
    """Class names from a text file, one a line (the binary releases end it with blank lines)."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file of class names") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    while names and not names[-1]:
        names.pop()
    if len(names) != spec.num_classes or not all(names):
        raise DataError(f"{path}: {len(names)} lines of class names, expected {spec.num_classes} non-blank lines")
    return names


def _check_not_empty(count: int, path: Path) -> None:
    """A well-formed file with no images is an error here, not an empty split that fails later in training."""
    if count == 0:
        raise DataError(f"{path}: holds no images (a valid but empty file); replace it with the dataset's own file")


def _check_labels(labels: np.ndarray, spec: DatasetSpec, path: Path) -> None:
    """Every label must be a class index of the dataset."""
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{path}: labels range {labels.min()}..{labels.max()}, expected 0..{spec.num_classes - 1}")


_READERS = {"idx": _read_idx_layout, "pickle": _read_pickle_layout, "binary": _read_binary_layout}
