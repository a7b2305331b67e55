"""Augmentation and normalisation: ``(image uint8 HxWx3, mask int64 HxW)`` -> network input.

Every transform is called as ``t(image, mask, rng)`` and returns ``(float32 (3, H, W)
normalised, int64 (H, W))``; randomness comes only from the NumPy Generator ``rng``
passed in (the DataLoader derives one per item from its own seeded generator), so an
epoch's augmentation repeats exactly on resume.

``mean`` and ``std`` are per channel in [0, 1] units, as for ``torchvision``'s
``Normalize`` after ``ToTensor``: ``x = (pixel / 255 - mean) / std``. Get them from
your training split with :func:`compute_mean_std`.

Where we differ from torchvision: the mask is resized with half-pixel-centred nearest
neighbour (PyTorch's ``mode="nearest-exact"``, so it stays aligned with the bilinear
image), and padding puts the image's *mean* colour (0 after normalisation) and the
mask's ignore value at the bottom/right.
"""
import numpy as np
from PIL import Image

from .base import IGNORE_INDEX

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def _pair(size):
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def resize_image(image, size):
    """Bilinear resize of a uint8 (H, W, 3) image to ``size`` = (H', W') (PIL; antialiased when shrinking)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_mask(mask, size):
    """Nearest-neighbour resize of a label mask, sampling at pixel centres (keeps the label set)."""
    height, width = size
    rows = np.minimum(((np.arange(height) + 0.5) * (mask.shape[0] / height)).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (mask.shape[1] / width)).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def pad_bottom_right(image, mask, size, fill_colour, ignore_index):
    """Pad image (with ``fill_colour``) and mask (with ``ignore_index``) up to at least ``size``."""
    height, width = image.shape[:2]
    extra_h, extra_w = max(size[0] - height, 0), max(size[1] - width, 0)
    if extra_h == 0 and extra_w == 0:
        return image, mask
    padded = np.empty((height + extra_h, width + extra_w, image.shape[2]), dtype=image.dtype)
    padded[...] = fill_colour
    padded[:height, :width] = image
    if mask is not None:
        mask = np.pad(mask, ((0, extra_h), (0, extra_w)), constant_values=ignore_index)
    return padded, mask


def normalize(image, mean, std):
    """uint8 (H, W, 3) -> float32 (3, H, W) of (pixel/255 - mean) / std."""
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class _Normalizing:
    def __init__(self, mean, std):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got mean={mean!r}, std={std!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {std!r}")
        # The mean colour in pixel units: padding with it gives 0 after normalisation.
        self.fill_colour = np.clip(np.round(np.asarray(self.mean) * 255.0), 0, 255).astype(np.uint8)


class TrainTransform(_Normalizing):
    """Random scale, pad-and-crop to ``crop_size``, random horizontal flip, normalise.

    1. scale image (bilinear) and mask (nearest) by ``s ~ U(scale_range)``;
    2. pad to at least ``crop_size`` (image: mean colour, mask: ``ignore_index``);
    3. crop a uniformly placed ``crop_size`` window;
    4. flip both left-right with probability 1/2 (when ``flip``).
    """

    def __init__(self, crop_size, scale_range=(0.5, 2.0), flip=True, mean=DEFAULT_MEAN, std=DEFAULT_STD,
                 ignore_index=IGNORE_INDEX):
        super().__init__(mean, std)
        self.crop_size = _pair(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1])) if scale_range else (1.0, 1.0)
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.flip, self.ignore_index = bool(flip), int(ignore_index)

    def __call__(self, image, mask, rng):
        scale = rng.uniform(*self.scale_range)
        size = (max(1, int(round(image.shape[0] * scale))), max(1, int(round(image.shape[1] * scale))))
        image, mask = resize_image(image, size), resize_mask(mask, size)
        image, mask = pad_bottom_right(image, mask, self.crop_size, self.fill_colour, self.ignore_index)
        top = int(rng.integers(0, image.shape[0] - self.crop_size[0] + 1))
        left = int(rng.integers(0, image.shape[1] - self.crop_size[1] + 1))
        window = (slice(top, top + self.crop_size[0]), slice(left, left + self.crop_size[1]))
        image, mask = image[window], mask[window]
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return normalize(image, self.mean, self.std), np.ascontiguousarray(mask, dtype=np.int64)


class EvalTransform(_Normalizing):
    """Normalise; optionally pad (bottom/right, mask with ``ignore_index``) to a size the net accepts.

    ``size``: pad every image to exactly this (H, W) (an int for square) so images of
    different sizes batch together; an image larger than ``size`` is an error (we never
    crop or resize evaluation data: the metrics must see every labelled pixel at its
    own resolution). ``multiple``: then pad up to the next multiple of it (e.g. 32 for
    FCN, 16 for U-Net). Padded pixels are ignored by the metrics. With neither, batches
    need images of one size, or use ``batch_size=1`` for validation.
    ``mask`` may be None (prediction on unlabelled images).
    """

    def __init__(self, mean=DEFAULT_MEAN, std=DEFAULT_STD, size=None, multiple=None, ignore_index=IGNORE_INDEX):
        super().__init__(mean, std)
        self.size = None if size is None else _pair(size)
        self.multiple = None if multiple is None else int(multiple)
        self.ignore_index = int(ignore_index)

    def target_size(self, height, width):
        if self.size is not None:
            if height > self.size[0] or width > self.size[1]:
                raise ValueError(f"EvalTransform(size={self.size}): image of size {(height, width)} is larger; "
                                 "choose a size at least as large as the largest image")
            height, width = self.size
        if self.multiple:
            height = -(-height // self.multiple) * self.multiple
            width = -(-width // self.multiple) * self.multiple
        return height, width

    def __call__(self, image, mask=None, rng=None):
        size = self.target_size(*image.shape[:2])
        image, mask = pad_bottom_right(image, mask, size, self.fill_colour, self.ignore_index)
        mask = None if mask is None else np.ascontiguousarray(mask, dtype=np.int64)
        return normalize(image, self.mean, self.std), mask


def compute_mean_std(dataset, max_items=200):
    """Per-channel mean and std of the images, in [0, 1] units, over up to ``max_items`` items.

    The items are spread evenly over the dataset (not just its first ones). Returns two
    tuples of 3 floats, ready for ``TrainTransform(mean=..., std=...)``.
    """
    count = min(len(dataset), int(max_items))
    if count <= 0:
        raise ValueError("compute_mean_std: the dataset is empty")
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(np.int64))
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    for i in indices:
        image = dataset[int(i)][0].reshape(-1, 3).astype(np.float64) / 255.0
        total += image.sum(axis=0)
        total_sq += (image * image).sum(axis=0)
        pixels += image.shape[0]
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean * mean, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)
