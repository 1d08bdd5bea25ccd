"""Shared fixtures: a tiny data folder in the real formats, and the real data when it is present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fakedata import expect_records, write_all

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"
# Where the CIFAR packs are unpacked (git-ignored): $RESLAB_DATA as the suite starts (each test then clears it), and
# the repo's data/ folder.
UNPACKED_DATA = [Path(p).expanduser() for p in (os.environ.get("RESLAB_DATA"), REPO / "data") if p]
CIFAR_FOLDERS = ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar-100-binary", "cifar-100-python")

# One thread: the suite runs many tiny models, where threads only contend (and CI has 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")   # for the child processes some tests start
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data folder holding tiny MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 in their official layouts."""
    return write_all(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def _tiny_binary_root(tmp_path_factory) -> Path:
    return write_all(tmp_path_factory.mktemp("data"), binary=True)


@pytest.fixture
def tiny_binary_data(_tiny_binary_root, monkeypatch) -> Path:
    """tiny_data plus CIFAR-10 and CIFAR-100 in the binary layouts, whose record counts the specs then expect."""
    expect_records(monkeypatch, "cifar10", 60, 100)
    expect_records(monkeypatch, "cifar100", 500, 200)
    return _tiny_binary_root


@pytest.fixture
def unpacked_data() -> Path:
    """The first of $RESLAB_DATA and the repo's data/ that holds an unpacked CIFAR folder, or skip."""
    for root in UNPACKED_DATA:
        if any((root / folder).is_dir() for folder in CIFAR_FOLDERS):
            return root
    pytest.skip(f"no unpacked CIFAR in {' or '.join(map(str, UNPACKED_DATA))} (unpack it with "
                f"{REAL_DATA / 'cifar-lossless' / 'cifarpack.py'}, see the README there)")


@pytest.fixture
def real_data() -> Path:
    """../shared/data next to the repo, or skip."""
    if not (REAL_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch):
    """W&B never reaches the network from a test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("RESLAB_DATA", raising=False)
    monkeypatch.delenv("RESLAB_MIRROR", raising=False)
    yield
