"""Downloads from a local HTTP server: fetch, checksum, extract; clear errors; nothing reaches the internet."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from fakedata import IDX_NAMES, expect_records, patch_layout, write_cifar10, write_cifar10_binary, write_idx_dataset

from reslab.datasets import SPECS, load_dataset
from reslab.download import extract_tar, fetch, md5sum
from reslab.errors import DataError


def _closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def offline_specs(monkeypatch) -> str:
    """Every dataset's official urls point at a closed local port, so no test can reach the internet."""
    nowhere = f"http://127.0.0.1:{_closed_port()}/official/"
    for name, spec in SPECS.items():
        monkeypatch.setitem(SPECS, name, dataclasses.replace(spec, urls=[nowhere]))
    return nowhere


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; RESLAB_MIRROR points at it."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setenv("RESLAB_MIRROR", url)
    yield root, url, requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _set_md5(monkeypatch, name: str, **changes) -> None:
    patch_layout(monkeypatch, name, None, **changes)             # the layout that is downloaded


def _serve_mnist(served: Path, tmp_path: Path) -> Path:
    """Generated MNIST .gz files copied into the served folder; returns the folder they came from."""
    source = write_idx_dataset(tmp_path / "source", n_train=40, n_test=20)
    for name in IDX_NAMES:
        (served / f"{name}.gz").write_bytes((source / f"{name}.gz").read_bytes())
    return source


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_mnist_is_downloaded_checked_and_loaded(server, tmp_path, monkeypatch):
    served, url, requests = server
    source = _serve_mnist(served, tmp_path)
    _set_md5(monkeypatch, "mnist", md5={f"{n}.gz": md5sum(served / f"{n}.gz") for n in IDX_NAMES})
    empty = tmp_path / "data"
    empty.mkdir()

    data = load_dataset("mnist", empty)

    assert sorted(requests) == sorted(f"/{n}.gz" for n in IDX_NAMES)
    assert _leftovers(empty) == sorted(f"{n}.gz" for n in IDX_NAMES)   # no .part files
    for name in IDX_NAMES:
        assert (empty / "MNIST/raw" / f"{name}.gz").read_bytes() == (source / f"{name}.gz").read_bytes()
    assert data.official is True
    assert data.train_images.shape == (40, 1, 28, 28) and len(data.test_labels) == 20
    expected = load_dataset("mnist", tmp_path / "source", download=False)
    np.testing.assert_array_equal(data.train_images, expected.train_images)
    np.testing.assert_array_equal(data.test_labels, expected.test_labels)

    requests.clear()                                              # a second load reads the files in place
    load_dataset("mnist", empty)
    assert requests == []


def test_only_missing_files_are_downloaded(server, tmp_path, monkeypatch):
    served, url, requests = server
    _serve_mnist(served, tmp_path)
    _set_md5(monkeypatch, "mnist", md5={f"{n}.gz": md5sum(served / f"{n}.gz") for n in IDX_NAMES})
    root = tmp_path / "data"
    raw = root / "MNIST/raw"
    raw.mkdir(parents=True)
    for name in IDX_NAMES[:3]:
        (raw / f"{name}.gz").write_bytes((served / f"{name}.gz").read_bytes())
    assert load_dataset("mnist", root).official is True
    assert requests == [f"/{IDX_NAMES[3]}.gz"]


def _cifar10_archive(tmp_path: Path) -> bytes:
    source = write_cifar10(tmp_path / "source", per_batch=10, n_test=10)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    return buffer.getvalue()


def test_cifar10_archive_is_downloaded_checked_and_extracted(server, tmp_path, monkeypatch):
    served, url, requests = server
    (served / "cifar-10-python.tar.gz").write_bytes(_cifar10_archive(tmp_path))
    source = tmp_path / "source" / "cifar-10-batches-py"
    _set_md5(monkeypatch, "cifar10", archive=("cifar-10-python.tar.gz", md5sum(served / "cifar-10-python.tar.gz")),
             md5={n: md5sum(source / n) for n in SPECS["cifar10"].get_layout().md5})
    empty = tmp_path / "data"
    empty.mkdir()

    data = load_dataset("cifar10", empty)

    assert requests == ["/cifar-10-python.tar.gz"]
    for name in SPECS["cifar10"].get_layout().md5:
        assert (empty / "cifar-10-batches-py" / name).read_bytes() == (source / name).read_bytes()
    assert not list(empty.rglob("*.part"))
    assert data.official is True
    assert data.train_images.shape == (50, 3, 32, 32) and data.test_images.shape == (10, 3, 32, 32)
    assert data.classes[0] == "airplane"


def test_complete_binary_layout_is_read_without_a_download(server, tmp_path, monkeypatch):
    served, url, requests = server
    (served / "cifar-10-python.tar.gz").write_bytes(_cifar10_archive(tmp_path))
    _set_md5(monkeypatch, "cifar10", archive=("cifar-10-python.tar.gz", md5sum(served / "cifar-10-python.tar.gz")))
    root = tmp_path / "data"
    write_cifar10_binary(root, per_batch=10, n_test=10)
    expect_records(monkeypatch, "cifar10", 10, 10)
    data = load_dataset("cifar10", root)
    assert requests == [] and data.layout == "cifar-10-batches-bin"
    assert not (root / "cifar-10-batches-py").exists()


def test_nothing_present_downloads_the_python_archive(server, tmp_path, monkeypatch):
    served, url, requests = server
    (served / "cifar-10-python.tar.gz").write_bytes(_cifar10_archive(tmp_path))
    _set_md5(monkeypatch, "cifar10", archive=("cifar-10-python.tar.gz", md5sum(served / "cifar-10-python.tar.gz")))
    root = tmp_path / "data"
    root.mkdir()
    assert load_dataset("cifar10", root).layout == "cifar-10-batches-py"
    assert requests == ["/cifar-10-python.tar.gz"]


def test_incomplete_binary_layout_is_not_hidden_by_a_download(server, tmp_path, monkeypatch):
    served, url, requests = server
    (served / "cifar-10-python.tar.gz").write_bytes(_cifar10_archive(tmp_path))
    _set_md5(monkeypatch, "cifar10", archive=("cifar-10-python.tar.gz", md5sum(served / "cifar-10-python.tar.gz")))
    root = tmp_path / "data"
    dest = write_cifar10_binary(root, per_batch=10, n_test=10)
    (dest / "test_batch.bin").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", root)
    message = str(exc.value)
    assert "\n" not in message and f"missing test_batch.bin in {dest}" in message
    assert "remove that folder to download cifar-10-batches-py" in message
    assert requests == [] and not (root / "cifar-10-batches-py").exists()


def test_archive_without_every_file_names_the_missing_one(server, tmp_path, monkeypatch):
    served, url, requests = server
    source = write_cifar10(tmp_path / "source", per_batch=10, n_test=10)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in SPECS["cifar10"].get_layout().md5:
            if name != "test_batch":
                tar.add(source / name, arcname=f"cifar-10-batches-py/{name}")
    (served / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    _set_md5(monkeypatch, "cifar10", archive=("cifar-10-python.tar.gz", md5sum(served / "cifar-10-python.tar.gz")))
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", empty)
    message = str(exc.value)
    assert "test_batch" in message and str(empty / "cifar-10-batches-py") in message and "\n" not in message


def test_checksum_mismatch_leaves_no_file(server, tmp_path, monkeypatch):
    served, url, requests = server
    _serve_mnist(served, tmp_path)                                # spec md5s stay the official ones
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", empty)
    message = str(exc.value)
    got = md5sum(served / f"{IDX_NAMES[0]}.gz")
    assert f"has md5 {got}, expected {SPECS['mnist'].get_layout().md5[IDX_NAMES[0] + '.gz']}" in message
    assert "removed" in message and "\n" not in message
    assert _leftovers(empty) == []


def test_archive_checksum_mismatch_leaves_no_file(server, tmp_path):
    served, url, requests = server
    (served / "cifar-10-python.tar.gz").write_bytes(_cifar10_archive(tmp_path))
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", empty)
    assert "c58f30108f718f92721af3b95e74349a" in str(exc.value)   # the official archive md5
    assert _leftovers(empty) == []


def test_fetch_falls_back_to_the_next_url(server, tmp_path, monkeypatch, offline_specs):
    served, url, requests = server
    (served / "file.bin").write_bytes(b"payload")
    dest = tmp_path / "dest"
    monkeypatch.setenv("RESLAB_MIRROR", offline_specs)            # the mirror refuses; the second url answers
    path = fetch("file.bin", [offline_specs + "file.bin", url + "file.bin"], md5sum(served / "file.bin"), dest)
    assert path == dest / "file.bin" and path.read_bytes() == b"payload"
    assert requests == ["/file.bin"]
    assert _leftovers(dest) == ["file.bin"]


def test_missing_file_on_server_is_a_clear_error(server, tmp_path):
    served, url, requests = server
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("fashionmnist", empty)
    message = str(exc.value)
    assert "404" in message and "\n" not in message
    assert _leftovers(empty) == []


def test_unreachable_server_is_a_one_line_error(tmp_path, monkeypatch, offline_specs):
    monkeypatch.setenv("RESLAB_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", empty)
    message = str(exc.value)
    assert "\n" not in message
    assert str(empty / "MNIST" / "raw") in message
    for name in IDX_NAMES:
        assert f"{name}.gz" in message
    assert "Connection refused" in message or "refused" in message.lower()
    assert _leftovers(empty) == []

    with pytest.raises(DataError) as exc:                           # an archive dataset says the same
        load_dataset("cifar100", empty)
    message = str(exc.value)
    assert "\n" not in message and str(empty / "cifar-100-python") in message
    for name in ("train", "test", "meta"):
        assert name in message


def test_extract_tar_refuses_members_outside_the_folder(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError) as exc:
        extract_tar(archive, dest)
    assert "points outside" in str(exc.value) and "../escaped.txt" in str(exc.value)
    assert not (tmp_path / "escaped.txt").exists()


def test_extract_tar_refuses_links(tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError) as exc:
        extract_tar(archive, dest)
    assert "unexpected member" in str(exc.value)
    assert _leftovers(dest) == [] and not (dest / "cifar-10-batches-py" / "data_batch_1").is_symlink()

