"""Transforms (scale/crop/flip/normalise, eval padding, mean/std) and the resumable DataLoader."""
import json
import threading

import numpy as np
import pytest

import minigrad as mg
from segnets.data import DataError, DataLoader, build_dataset
from segnets.data.transforms import (EvalTransform, TrainTransform, compute_mean_std, normalize, resize_mask)
from tests.helpers import require_torch


class ListDataset:
    """Items given as lists; item i's image is filled with i so batches show the order."""
    classes, ignore_index = ["background", "a", "b"], 255

    def __init__(self, count=10, shape=(6, 8), fail_at=None):
        self.count, self.shape, self.fail_at = count, shape, fail_at

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if i == self.fail_at:
            raise DataError(f"item{i}.png: broken on purpose")
        image = np.full(self.shape + (3,), i, np.uint8)
        return image, np.full(self.shape, i % 3, np.int64)


def encoded(mask):
    """An image whose red channel is 20 * label (void 255 -> 255): image and mask must stay aligned."""
    return np.repeat(np.where(mask == 255, 255, 20 * mask).astype(np.uint8)[..., None], 3, axis=2)


# ---------------------------------------------------------------- resizing
def test_resize_mask_is_nearest_at_pixel_centres():
    mask = np.arange(12).reshape(3, 4)
    assert np.array_equal(resize_mask(mask, (6, 8)), np.repeat(np.repeat(mask, 2, 0), 2, 1))
    assert np.array_equal(resize_mask(mask, (3, 2)), mask[:, [1, 3]])  # centres 0.5*2, 1.5*2
    labels = np.random.default_rng(0).choice([0, 3, 7, 255], size=(17, 23))
    for size in [(9, 11), (40, 31), (17, 23)]:
        assert set(np.unique(resize_mask(labels, size))) <= {0, 3, 7, 255}


@pytest.mark.torch
def test_resize_mask_matches_torch_nearest_exact():
    torch = require_torch()
    labels = np.random.default_rng(1).integers(0, 9, size=(13, 19))
    for size in [(7, 5), (26, 38), (31, 44), (13, 19), (5, 40)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(labels)[None, None].double(), size=size,
                                                   mode="nearest-exact")[0, 0].long().numpy()
        assert np.array_equal(resize_mask(labels, size), expected), size


# ---------------------------------------------------------------- TrainTransform
def test_train_transform_pads_mask_with_ignore_and_image_with_mean():
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)
    t = TrainTransform(20, scale_range=(1.0, 1.0), flip=False, mean=mean, std=std)
    mask = np.random.default_rng(0).integers(0, 3, size=(12, 9))
    image, out = t(encoded(mask), mask, np.random.default_rng(0))
    assert image.shape == (3, 20, 20) and image.dtype == np.float32 and out.dtype == np.int64
    assert out.shape == (20, 20)
    assert (out == 255).sum() == 20 * 20 - 12 * 9          # everything outside the image is ignored
    assert np.abs(image[:, out == 255]).max() < 1e-6          # mean colour -> 0 after normalising
    assert np.array_equal(out[:12, :9], mask)                 # pad at bottom/right, nothing to crop


def window_flip(mask, crop):
    """Whether ``crop`` is a window of ``mask`` as it is (False) or flipped left-right (True); None if neither."""
    height, width = crop.shape
    for top in range(mask.shape[0] - height + 1):
        for left in range(mask.shape[1] - width + 1):
            window = mask[top:top + height, left:left + width]
            if np.array_equal(window, crop):
                return False
            if np.array_equal(window[:, ::-1], crop):
                return True
    return None


def test_train_transform_keeps_image_and_mask_aligned_under_crop_and_flip():
    mask = np.random.default_rng(1).integers(0, 5, size=(30, 40))
    t = TrainTransform((16, 24), scale_range=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1))
    flips = []
    for seed in range(16):
        x, y = t(encoded(mask), mask, np.random.default_rng(seed))
        assert np.array_equal(np.round(x[0] * 255).astype(np.int64), 20 * y)  # the image moved with the mask
        flips.append(window_flip(mask, y))
    assert set(flips) == {False, True}  # always a window of the mask; flipped about half the time


def test_train_transform_flip_flips_both():
    mask = np.arange(20).reshape(4, 5) % 4
    t = TrainTransform((4, 5), scale_range=(1.0, 1.0), flip=True, mean=(0, 0, 0), std=(1, 1, 1))
    outcomes = set()
    for seed in range(12):
        x, y = t(encoded(mask), mask, np.random.default_rng(seed))
        flipped = np.array_equal(y, mask[:, ::-1])
        assert flipped or np.array_equal(y, mask)
        assert np.allclose(x, normalize(encoded(mask[:, ::-1] if flipped else mask), (0, 0, 0), (1, 1, 1)))
        outcomes.add(flipped)
    assert outcomes == {False, True}
    no_flip = TrainTransform((4, 5), scale_range=(1.0, 1.0), flip=False)
    assert all(np.array_equal(no_flip(encoded(mask), mask, np.random.default_rng(s))[1], mask) for s in range(8))


def test_train_transform_scale_uses_nearest_for_masks_and_repeats_with_the_rng():
    mask = np.random.default_rng(2).choice([0, 2, 5], size=(24, 24))
    t = TrainTransform(24, scale_range=(0.5, 2.0))
    sizes = set()
    for seed in range(10):
        x, y = t(encoded(mask), mask, np.random.default_rng(seed))
        assert set(np.unique(y)) <= {0, 2, 5, 255}
        assert x.shape == (3, 24, 24) and y.shape == (24, 24)
        x2, y2 = t(encoded(mask), mask, np.random.default_rng(seed))
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
        sizes.add(int((y == 255).sum() > 0))
    assert sizes == {0, 1}  # some scales shrink below the crop (padding), some do not


# ---------------------------------------------------------------- EvalTransform and mean/std
def test_eval_transform_pads_to_size_or_multiple_with_ignore():
    mask = np.ones((21, 30), np.int64)
    image = encoded(mask)
    x, y = EvalTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), multiple=16)(image, mask)
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    assert (y[:21, :30] == 1).all() and (y[21:] == 255).all() and (y[:, 30:] == 255).all()
    assert np.allclose(x[:, :21, :30], (20 / 255 - 0.5) / 0.5)
    x, y = EvalTransform(size=(24, 40))(image, mask)
    assert x.shape == (3, 24, 40) and (y == 255).sum() == 24 * 40 - 21 * 30
    x, y = EvalTransform()(image, None)
    assert x.shape == (3, 21, 30) and y is None
    with pytest.raises(ValueError, match=r"size=\(16, 16\).*\(21, 30\) is larger"):
        EvalTransform(size=16)(image, mask)


def test_compute_mean_std_in_unit_range():
    class TwoImages:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            image = np.zeros((4, 4, 3), np.uint8)
            image[..., 0] = 255 * i       # red: 0 then 1 -> mean 0.5, std 0.5
            image[..., 1] = 51            # green: constant 0.2 -> std 0 (kept positive)
            return image, np.zeros((4, 4), np.int64)
    mean, std = compute_mean_std(TwoImages())
    assert np.allclose(mean, (0.5, 0.2, 0.0)) and np.allclose(std[0], 0.5) and 0 < std[1] < 1e-5
    shapes_mean, shapes_std = compute_mean_std(build_dataset("shapes", "train"), max_items=20)
    assert all(0.2 < m < 0.8 for m in shapes_mean) and all(0.1 < s < 0.45 for s in shapes_std)


# ---------------------------------------------------------------- DataLoader
def batches_of(loader, count=None):
    out = []
    for images, masks in loader:
        out.append((images.copy(), masks.copy()))
        if count is not None and len(out) == count:
            break
    return out


def item_ids(batches):
    return [int(images[k, 0, 0, 0] * 255 + 0.5) for images, _ in batches for k in range(len(images))]


def test_loader_batches_lengths_and_dtypes():
    data = ListDataset(10)
    loader = DataLoader(data, batch_size=4)
    assert len(loader) == 3 and len(DataLoader(data, 4, drop_last=True)) == 2
    batches = batches_of(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 6, 8), (4, 3, 6, 8), (2, 3, 6, 8)]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int64 and batches[0][1].shape == (4, 6, 8)
    assert item_ids(batches) == list(range(10))
    assert item_ids(batches_of(DataLoader(data, 4, drop_last=True, shuffle=True))).__len__() == 8


def test_loader_shuffle_is_a_seeded_permutation_per_epoch():
    data = ListDataset(12)
    first = DataLoader(data, 5, shuffle=True, seed=7)
    epoch0, epoch1 = item_ids(batches_of(first)), item_ids(batches_of(first))
    assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12))
    assert epoch0 != epoch1 and first.epoch == 2
    again = DataLoader(data, 5, shuffle=True, seed=7)
    assert item_ids(batches_of(again)) == epoch0 and item_ids(batches_of(again)) == epoch1
    assert item_ids(batches_of(DataLoader(data, 5, shuffle=True, seed=8))) != epoch0


def augmenting_loader(**kwargs):
    data = build_dataset("shapes", "train", num_train=10, image_size=24)
    return DataLoader(data, 3, shuffle=True, seed=11, transform=TrainTransform(16, scale_range=(0.6, 1.5)), **kwargs)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


@pytest.mark.parametrize("stop_after", [2, 4, 5, 8])  # mid-epoch, end of epoch 0 (4 batches), next epoch
def test_loader_resumes_bit_identically_from_state_dict(stop_after):
    reference = augmenting_loader()
    expected = batches_of(reference) + batches_of(reference) + batches_of(reference)
    interrupted = augmenting_loader()
    got = []
    while len(got) < stop_after:
        got += batches_of(interrupted, count=stop_after - len(got))
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    resumed = augmenting_loader()
    resumed.load_state_dict(state)
    while len(got) < len(expected):
        got += batches_of(resumed)
    assert_same_batches(got, expected)
    assert resumed.epoch == 3


def test_loader_state_after_last_batch_but_before_epoch_end():
    reference = augmenting_loader()
    expected = batches_of(reference) + batches_of(reference)
    loader = augmenting_loader()
    iterator = iter(loader)
    got = [next(iterator) for _ in range(4)]  # the whole epoch, StopIteration not yet seen
    state = loader.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 4)
    resumed = augmenting_loader()
    resumed.load_state_dict(state)
    assert_same_batches(got + batches_of(resumed), expected)


def test_loader_break_then_iter_finishes_the_epoch():
    data = ListDataset(10)
    loader = DataLoader(data, 3, shuffle=True, seed=1)
    order = item_ids(batches_of(DataLoader(data, 3, shuffle=True, seed=1)))
    assert item_ids(batches_of(loader, count=2)) + item_ids(batches_of(loader)) == order


def test_loader_refuses_a_state_from_another_setup():
    state = DataLoader(ListDataset(10), 3).state_dict()
    with pytest.raises(ValueError, match="batch_size=3 but this loader has batch_size=4"):
        DataLoader(ListDataset(10), 4).load_state_dict(state)


def test_loader_prefetch_gives_the_same_batches_and_stops_its_thread():
    expected = batches_of(augmenting_loader())
    threads_before = threading.active_count()
    prefetching = augmenting_loader(prefetch=2)
    assert_same_batches(batches_of(prefetching), expected)
    partial = batches_of(prefetching, count=1)       # a break in the second epoch
    assert len(partial) == 1 and threading.active_count() == threads_before
    with pytest.raises(DataError, match=r"item4\.png: broken on purpose"):
        batches_of(DataLoader(ListDataset(10, fail_at=4), 2, prefetch=3))
    assert threading.active_count() == threads_before


def test_loader_says_how_to_batch_different_sizes():
    class Mixed(ListDataset):
        def __getitem__(self, i):
            shape = (6, 8) if i % 2 else (7, 8)
            return np.zeros(shape + (3,), np.uint8), np.zeros(shape, np.int64)
    with pytest.raises(ValueError, match=r"different sizes.*EvalTransform\(multiple=...\).*batch_size=1"):
        batches_of(DataLoader(Mixed(4), 2))
    padded = batches_of(DataLoader(Mixed(4), 2, transform=EvalTransform(multiple=8)))
    assert padded[0][0].shape == (2, 3, 8, 8) and (padded[0][1][0, 7] == 255).all()


@pytest.mark.gpu
@pytest.mark.skipif(not mg.gpu_available(), reason="needs CuPy and an NVIDIA GPU (pip install -e .[gpu])")
def test_loader_prefetches_onto_the_gpu():
    from minigrad.backend import device_of, to_numpy
    expected = batches_of(augmenting_loader())
    for prefetch in (0, 2):
        got = [(images, masks) for images, masks in augmenting_loader(prefetch=prefetch, device="gpu")]
        assert all(device_of(images) == "gpu" and device_of(masks) == "gpu" for images, masks in got)
        assert_same_batches([(to_numpy(x), to_numpy(y)) for x, y in got], expected)
