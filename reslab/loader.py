"""Splits and the device-resident batch loader: uint8 data on the device, normalized and augmented per batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_int
from .config import TrainConfig
from .datasets import Dataset
from .errors import ConfigError


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and val indices with every class split in the same proportion; the same seed gives the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(members) * val_fraction))
        if n_val == 0 or n_val == len(members):
            raise ConfigError(f"val_fraction {val_fraction} leaves class {cls} ({len(members)} samples) with an "
                              "empty train or val part; use a larger dataset or another fraction")
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the 0..1 scale."""
    # A 256-bin histogram per channel, counted in chunks: exact, and no float copy of the whole dataset.
    counts = np.zeros((images.shape[1], 256), dtype=np.int64)
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096]
        for c in range(images.shape[1]):
            counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
    levels = np.arange(256) / 255.0
    n = counts.sum(axis=1)
    mean = counts @ levels / n
    std = np.sqrt(np.maximum(counts @ levels ** 2 / n - mean ** 2, 0.0))
    return [float(m) for m in mean], [float(s) for s in std]


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Per-sample random crop from a zero-padded image and random horizontal flip, as batched tensor ops."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    flip = torch.rand(n, 1, generator=generator, device=dev) < 0.5
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx          # flipping is reading columns backwards
    rows = torch.arange(h, device=dev).expand(n, h) + dy
    batch = torch.arange(n, device=dev)[:, None, None]
    # Advanced indexing around the channel slice gathers (N, H, W, C); move channels back.
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _copy_to(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of an array or tensor on the device (the arrays may be read-only views of the files' bytes)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device, copy=True)
    return torch.tensor(np.asarray(values), device=device)


class TensorLoader:
    """Batches of one split held as a uint8 tensor on the device, yielded as normalized float (x, y)."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, batch_size: int,
                 mean: list[float], std: list[float], device: torch.device | str = "cpu", shuffle: bool = False,
                 augment: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False):
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.device = torch.device(device)
        self.images = _copy_to(images, self.device)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ConfigError(f"TensorLoader takes uint8 images (N, C, H, W) with values 0..255, got "
                              f"{self.images.dtype} {tuple(self.images.shape)}; convert them, e.g. "
                              "(images * 255).round().to(torch.uint8), or use a torch DataLoader")
        self.labels = _copy_to(labels, self.device).long()
        if self.labels.shape != (len(self.images),):
            raise ConfigError(f"TensorLoader: {tuple(self.labels.shape)} labels for {len(self.images)} images")
        if len(mean) != self.images.shape[1] or len(std) != self.images.shape[1]:
            raise ConfigError(f"TensorLoader: mean and std need one value per channel ({self.images.shape[1]})")
        self.mean, self.std = list(mean), list(std)
        # x/255 normalized is one multiply-add: x * scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.shuffle, self.augment = shuffle, augment
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per pass."""
        return len(self._order(torch.arange(len(self.labels))))

    def _order(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's stride of an order over all samples. Training shards are cut to equal length, since
        DDP needs the same number of steps on every rank; evaluation shards keep every sample."""
        if self.world_size == 1:
            return order
        if self.shuffle:
            order = order[: len(order) // self.world_size * self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        order = self._order(order)   # every rank draws the same permutation and takes its own stride
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = torch.index_select(self.images, 0, idx)   # ~8x faster than images[idx] on the CPU
            if self.augment:
                x = random_crop_flip(x, self.generator)
            x = x.float().mul_(self.scale).add_(self.shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, torch.index_select(self.labels, 0, idx)

    def state_dict(self) -> dict:
        """The generator state, so a resumed run draws the same batches."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def split_indices(data: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The run's stratified train/val split; with train_subset, a stratified subset of the train part."""
    train_idx, val_idx = stratified_split(data.train_labels, config.val_fraction, config.seed)
    if config.train_subset is not None and config.train_subset < len(train_idx):
        try:
            keep, _ = stratified_split(data.train_labels[train_idx], 1 - config.train_subset / len(train_idx),
                                       config.seed)
        except ConfigError:   # said in terms of the setting the user gave, not of the fraction derived from it
            raise ConfigError(f"train_subset {config.train_subset} of {len(train_idx)} training images leaves a "
                              "class with none or all of its images; use a subset further from both ends") from None
        train_idx = train_idx[keep]
    return train_idx, val_idx


def uses_augmentation(data: Dataset, config: TrainConfig) -> bool:
    """Random crop + flip: as the config says, else on for 32x32 colour images (CIFAR)."""
    return config.augment if config.augment is not None else data.input_shape == (3, 32, 32)


@dataclass
class Loaders:
    """The three loaders of a run and what they were built with."""

    train: TensorLoader
    val: TensorLoader
    test: TensorLoader
    mean: list[float]
    std: list[float]
    augment: bool


def make_loaders(data: Dataset, config: TrainConfig, device: torch.device | str = "cpu", *,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1) -> Loaders:
    """The run's stratified split, normalized with its train part's channel statistics, as three loaders."""
    device = torch.device(device)
    train_idx, val_idx = split_indices(data, config)
    mean, std = channel_stats(data.train_images[train_idx])
    augment = uses_augmentation(data, config)
    common: dict[str, Any] = dict(mean=mean, std=std, device=device, channels_last=channels_last)
    sharded = dict(common, rank=rank, world_size=world_size)
    return Loaders(
        train=TensorLoader(data.train_images[train_idx], data.train_labels[train_idx], config.batch_size,
                           shuffle=True, augment=augment, seed=config.seed, **sharded),
        val=TensorLoader(data.train_images[val_idx], data.train_labels[val_idx], config.eval_batch_size, **sharded),
        # The test set is scored by rank 0 alone, over all of it.
        test=TensorLoader(data.test_images, data.test_labels, config.eval_batch_size, **common),
        mean=mean, std=std, augment=augment)
