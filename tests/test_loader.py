"""stratified_split, channel_stats, random_crop_flip and the device-resident TensorLoader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reslab.errors import ConfigError
from reslab.loader import TensorLoader, channel_stats, random_crop_flip, stratified_split

# ---------------------------------------------------------------- stratified_split

# Per-class sizes chosen so that n * 0.2 is never a tie for rounding: 2.0, 5.0, 1.4, 8.6, 3.8.
CLASS_SIZES = {0: 10, 1: 25, 2: 7, 3: 43, 4: 19}


def _labels(seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in CLASS_SIZES.items()])
    return np.random.default_rng(seed).permutation(labels)


def test_split_keeps_class_proportions():
    labels = _labels()
    train, val = stratified_split(labels, 0.2, seed=0)
    for cls, n in CLASS_SIZES.items():
        n_val = round(n * 0.2)
        assert (labels[val] == cls).sum() == n_val
        assert (labels[train] == cls).sum() == n - n_val
    assert len(val) == sum(round(n * 0.2) for n in CLASS_SIZES.values())


def test_split_is_disjoint_and_covering():
    labels = _labels()
    train, val = stratified_split(labels, 0.3, seed=4)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert train.dtype.kind == "i" and val.dtype.kind == "i"


def test_split_depends_on_the_seed_only():
    labels = _labels()
    a_train, a_val = stratified_split(labels, 0.2, seed=7)
    b_train, b_val = stratified_split(labels.copy(), 0.2, seed=7)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_val, b_val)
    c_train, c_val = stratified_split(labels, 0.2, seed=8)
    assert not np.array_equal(a_val, c_val)
    assert len(c_val) == len(a_val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fraction_out_of_range(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split(_labels(), fraction, seed=0)


def test_split_error_when_a_class_cannot_be_split():
    labels = np.array([0] * 20 + [1] * 2)          # class 1: round(2 * 0.1) = 0 validation samples
    with pytest.raises(ConfigError) as exc:
        stratified_split(labels, 0.1, seed=0)
    message = str(exc.value)
    assert "class 1" in message and "2 samples" in message
    with pytest.raises(ConfigError, match="class 1"):
        stratified_split(labels, 0.9, seed=0)        # round(2 * 0.9) = 2: nothing left to train on


# ---------------------------------------------------------------- channel_stats


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 8, 6), dtype=np.uint8)
    images[:, 1] //= 4                                                # channels really differ
    mean, std = channel_stats(images)
    assert len(mean) == len(std) == 3
    for c in range(3):
        channel = images[:, c].astype(np.float64) / 255.0
        assert mean[c] == pytest.approx(channel.mean(), abs=1e-12)
        assert std[c] == pytest.approx(channel.std(), abs=1e-12)
    assert mean[1] < mean[0] / 2


def test_channel_stats_single_channel():
    images = np.array([[[[0, 255]]], [[[255, 255]]]], dtype=np.uint8)  # values 0, 1, 1, 1 on the 0..1 scale
    mean, std = channel_stats(images)
    assert mean == [pytest.approx(0.75)] and std == [pytest.approx(np.sqrt(0.1875))]


# ---------------------------------------------------------------- TensorLoader


def _data(n: int = 70, shape=(3, 8, 8), seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64)        # label = index: a batch says which samples it holds


def _orders(loader: TensorLoader, epochs: int = 1) -> list[list[int]]:
    return [torch.cat([y for _, y in loader]).tolist() for _ in range(epochs)]


def test_batches_have_the_right_shapes_and_dtypes():
    images, labels = _data(70)
    loader = TensorLoader(images, labels, 32, mean=[0.5] * 3, std=[0.25] * 3)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [x.shape for x, _ in batches] == [(32, 3, 8, 8), (32, 3, 8, 8), (6, 3, 8, 8)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert all(y.shape == (len(x),) for x, y in batches)
    assert loader.num_samples == 70


def test_unshuffled_order_and_exact_normalization():
    images, labels = _data(20)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    loader = TensorLoader(images, labels, 8, mean=mean, std=std)
    x = torch.cat([x for x, _ in loader])
    assert _orders(loader) == [list(range(20))]
    expected = (torch.from_numpy(images).double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) \
        / torch.tensor(std).double().view(1, 3, 1, 1)
    torch.testing.assert_close(x.double(), expected, rtol=1e-5, atol=1e-5)


def test_normalized_data_has_zero_mean_unit_std():
    images, labels = _data(64)
    images[:, 2] //= 3
    mean, std = channel_stats(images)
    x = torch.cat([x for x, _ in TensorLoader(images, labels, 16, mean, std, shuffle=True, seed=1)])
    per_channel = x.transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(3, dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_shuffle_visits_every_sample_once_with_its_own_image():
    images, labels = _data(70)
    loader = TensorLoader(images, labels, 16, mean=[0.0] * 3, std=[1.0] * 3, shuffle=True, seed=3)
    for _ in range(3):
        xs, ys = zip(*loader)
        order = torch.cat(ys)
        assert sorted(order.tolist()) == list(range(70))
        pixels = torch.round(torch.cat(xs) * 255).to(torch.uint8)
        torch.testing.assert_close(pixels, torch.from_numpy(images)[order], rtol=0, atol=0)


def test_same_seed_same_batches_and_epochs_differ():
    images, labels = _data(70)
    a = TensorLoader(images, labels, 16, [0.5] * 3, [0.25] * 3, shuffle=True, seed=5)
    b = TensorLoader(images, labels, 16, [0.5] * 3, [0.25] * 3, shuffle=True, seed=5)
    a_epochs, b_epochs = _orders(a, 3), _orders(b, 3)
    assert a_epochs == b_epochs
    assert len({tuple(o) for o in a_epochs}) == 3              # each epoch draws a new order
    assert a_epochs[0] != list(range(70))
    c = TensorLoader(images, labels, 16, [0.5] * 3, [0.25] * 3, shuffle=True, seed=6)
    assert _orders(c)[0] != a_epochs[0]


def test_same_seed_same_augmented_pixels():
    images, labels = _data(40)
    kwargs = dict(mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, augment=True, seed=2)
    a, b = TensorLoader(images, labels, 16, **kwargs), TensorLoader(images, labels, 16, **kwargs)
    for (xa, ya), (xb, yb) in zip(a, b):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert torch.equal(ya, yb)


def test_state_dict_resumes_the_same_sequence():
    images, labels = _data(50)
    a = TensorLoader(images, labels, 16, [0.5] * 3, [0.25] * 3, shuffle=True, augment=True, seed=9)
    _orders(a)
    state = a.state_dict()
    expected = [(x.clone(), y.clone()) for x, y in a]
    b = TensorLoader(images, labels, 16, [0.5] * 3, [0.25] * 3, shuffle=True, augment=True, seed=0)
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augment_off_leaves_images_unchanged():
    images, labels = _data(30)
    loader = TensorLoader(images, labels, 30, mean=[0.0] * 3, std=[1.0] * 3, augment=False)
    (x, _), = list(loader)
    assert torch.equal(torch.round(x * 255).to(torch.uint8), torch.from_numpy(images))


def test_augment_on_changes_images_but_not_labels():
    images, labels = _data(30)
    (x, y), = list(TensorLoader(images, labels, 30, mean=[0.0] * 3, std=[1.0] * 3, augment=True))
    assert x.shape == (30, 3, 8, 8) and torch.equal(y, torch.arange(30))
    assert not torch.equal(torch.round(x * 255).to(torch.uint8), torch.from_numpy(images))


def test_batch_size_must_be_positive():
    images, labels = _data(4)
    with pytest.raises(ConfigError, match="batch_size"):
        TensorLoader(images, labels, 0, [0.5] * 3, [0.25] * 3)


# ---------------------------------------------------------------- random_crop_flip


def _match_crop(out: torch.Tensor, padded: torch.Tensor, h: int, w: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) whose crop of the padded image equals `out`."""
    found = []
    for dy in range(padded.shape[1] - h + 1):
        for dx in range(padded.shape[2] - w + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            for flipped in (False, True):
                if torch.equal(out, crop.flip(-1) if flipped else crop):
                    found.append((dy, dx, flipped))
    return found


def test_random_crop_flip_is_a_crop_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    # Pixels 1..255 so the zero padding is recognisable; 5x7 so rows and columns cannot be confused.
    images = torch.randint(1, 256, (48, 3, 5, 7), generator=g, dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = F.pad(images, (2, 2, 2, 2))
    seen = []
    for i in range(len(images)):
        matches = _match_crop(out[i], padded[i], 5, 7)
        assert len(matches) == 1, f"sample {i}: {matches}"
        dy, dx, flipped = matches[0]
        assert 0 <= dy <= 4 and 0 <= dx <= 4
        seen.append(matches[0])
    assert {f for _, _, f in seen} == {False, True}            # both flips happen
    assert len({(dy, dx) for dy, dx, _ in seen}) > 5             # and many offsets


def test_random_crop_flip_default_padding_reaches_every_offset():
    images = torch.randint(1, 256, (200, 1, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(4))
    padded = F.pad(images, (4, 4, 4, 4))
    offsets = set()
    for i in range(len(images)):
        (dy, dx, _), = _match_crop(out[i], padded[i], 8, 8)
        offsets.add((dy, dx))
    assert {dy for dy, _ in offsets} == set(range(9)) and {dx for _, dx in offsets} == set(range(9))


def test_random_crop_flip_is_reproducible():
    images = torch.randint(0, 256, (16, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = random_crop_flip(images, torch.Generator().manual_seed(11))
    b = random_crop_flip(images, torch.Generator().manual_seed(11))
    c = random_crop_flip(images, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("n", [70, 71])
def test_shards_are_disjoint_strides_of_one_permutation(n):
    images, labels = _data(n)
    common = dict(mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, seed=4)
    full = TensorLoader(images, labels, 8, **common)
    ranks = [TensorLoader(images, labels, 8, rank=r, world_size=2, **common) for r in range(2)]
    for _ in range(2):
        perm = _orders(full)[0]
        shards = [_orders(loader)[0] for loader in ranks]
        assert shards[0] == perm[: n // 2 * 2][0::2]
        assert shards[1] == perm[: n // 2 * 2][1::2]
        assert len(shards[0]) == len(shards[1]) == n // 2
    assert all(loader.num_samples == n // 2 and len(loader) == -(-(n // 2) // 8) for loader in ranks)


def test_augmenting_shards_stay_in_step():
    images, labels = _data(71)
    common = dict(mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, augment=True, seed=4)
    ranks = [TensorLoader(images, labels, 8, rank=r, world_size=2, **common) for r in range(2)]
    epochs = [_orders(loader, 3) for loader in ranks]
    for epoch in range(3):
        a, b = epochs[0][epoch], epochs[1][epoch]
        assert len(a) == len(b) == 35 and not set(a) & set(b)
    assert epochs[0][0] != epochs[0][1]


def test_unshuffled_shards_are_disjoint():
    images, labels = _data(21)
    ranks = [TensorLoader(images, labels, 4, [0.5] * 3, [0.25] * 3, rank=r, world_size=3) for r in range(3)]
    shards = [set(_orders(loader)[0]) for loader in ranks]
    assert not (shards[0] & shards[1]) and not (shards[0] & shards[2]) and not (shards[1] & shards[2])
    assert set().union(*shards) == set(range(21))
