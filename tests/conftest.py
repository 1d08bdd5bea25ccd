"""Shared fixtures: a tiny data folder in the real formats, and the real data when it is present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fakedata import write_all

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# One thread: the suite runs many tiny models, where threads only contend (and CI has 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")   # for the child processes some tests start
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data folder holding tiny MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 in their official layouts."""
    return write_all(tmp_path_factory.mktemp("data"))


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
