"""``idx-scenes``: M2NIST-style scenes built from MNIST or Fashion-MNIST IDX files.

Each scene is a black canvas (default 64x84, option ``canvas``) with one to three 28x28
items pasted at random, non-overlapping places. A pixel's label is the item's class + 1
where the item's intensity is above ``threshold`` (default 0.25, i.e. > 63.75 of 255:
it keeps a garment's body and drops its faint anti-aliased rim) and 0 (background)
elsewhere. The image is the grey canvas repeated on the three channels.

Training scenes draw their items from the ``train`` files, validation scenes from the
``t10k`` files; scene ``i`` of a split is generated from a generator seeded with
``(seed, split, i)``, so it is the same on every call. Options: ``num_train`` (1000),
``num_val`` (200), ``canvas`` ((64, 84)), ``threshold`` (0.25), ``max_items`` (3),
``fashion`` (None: Fashion-MNIST class names when the directory path contains
"fashion", digit names otherwise; True/False to say so).

``data_dir`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each possibly gzipped (``.gz``)
and possibly with the original MNIST dot (``train-images.idx3-ubyte``). Without a
``data_dir``, Debian's ``/usr/share/datasets/fashion-mnist`` is used when present.
"""
import functools
import gzip
import os
import re
import zlib

import numpy as np

from .base import DataError, SegmentationDataset
from .shapes import item_count

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/datasets/mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
ITEM = 28
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_SPLIT_FILES = {"train": "train", "val": "t10k"}
_SPLIT_IDS = {"train": 0, "val": 1}


def parse_idx(raw, path="<bytes>", ndim=None):
    """An IDX file's bytes as a NumPy array, checking magic, dims and length.

    ``ndim``: the number of dimensions the file must have (3 for images, 1 for labels),
    checked against the header's dimension-count byte (the 4th) before anything else.
    """
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()}; expected 0000 then "
                        f"a type code in {sorted(_IDX_DTYPES)} and the number of dims)")
    dtype, expected_ndim, ndim = _IDX_DTYPES[raw[2]], ndim, raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: its header's dimension-count byte (the 4th, magic bytes {raw[:4].hex()}) "
                        f"says {ndim} dimension(s); an idx{expected_ndim} file has {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header (needs {header} bytes for {ndim} dims, file has {len(raw)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {problem}: header says dims {dims} of {dtype} ({expected} bytes in all), "
                        f"file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


@functools.lru_cache(maxsize=8)
def read_idx(path):
    """Read (and gunzip, for .gz) an IDX file; cached, because both splits' datasets ask."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip file ({e})") from None
    named = re.search(r"idx(\d)", os.path.basename(path))  # train-images-idx3-ubyte: 3 dims
    result = parse_idx(raw, path, ndim=int(named.group(1)) if named else None)
    result.flags.writeable = False
    return result


def find_idx_file(data_dir, prefix, kind):
    """Path of e.g. train-images-idx3-ubyte(.gz), accepting the train-images.idx3-ubyte variant."""
    ndim = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}{sep}idx{ndim}-ubyte{gz}" for sep in ("-", ".") for gz in ("", ".gz")]
    for name in names:
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    raise DataError(f"{data_dir}: missing IDX file (looked for {', '.join(names)})")


def load_idx_pair(data_dir, prefix):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split, checked against each other."""
    image_path = find_idx_file(data_dir, prefix, "images")
    label_path = find_idx_file(data_dir, prefix, "labels")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (ITEM, ITEM) or images.dtype != np.uint8:
        raise DataError(f"{image_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: expected a 1-d array of labels, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{label_path}: {len(labels)} labels for the {len(images)} images of {image_path}")
    if len(labels) == 0:
        raise DataError(f"{image_path}: empty split (no images)")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{label_path}: labels must be 0..9, found {int(labels.min())}..{int(labels.max())}")
    return images, labels.astype(np.int64)


class IdxScenes(SegmentationDataset):
    name = "idx-scenes"

    def __init__(self, data_dir=None, split="train", seed=0, num_train=1000, num_val=200,
                 canvas=(64, 84), threshold=0.25, max_items=3, fashion=None):
        if split not in _SPLIT_IDS:
            raise ValueError(f"idx-scenes: split must be 'train' or 'val', got {split!r}")
        self.data_dir = _resolve_dir(data_dir)
        self.split, self.seed = split, int(seed)
        self.canvas = (int(canvas), int(canvas)) if np.isscalar(canvas) else tuple(map(int, canvas))
        if min(self.canvas) < ITEM or max(self.canvas) > 4096:
            raise ValueError(f"idx-scenes: canvas must be {ITEM}..4096 pixels a side, got {canvas!r}")
        self.threshold, self.max_items = float(threshold) * 255.0, int(max_items)
        self.length = item_count(num_train if split == "train" else num_val, f"num_{split}", "idx-scenes")
        self.items, self.labels = load_idx_pair(self.data_dir, _SPLIT_FILES[split])
        if fashion is None:
            fashion = "fashion" in os.path.abspath(self.data_dir).lower()
        self.classes = ["background"] + (FASHION_CLASSES if fashion else DIGIT_CLASSES)

    def __len__(self):
        return self.length

    def _load(self, index):
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        grey = np.zeros(self.canvas, dtype=np.uint8)
        mask = np.zeros(self.canvas, dtype=np.int64)
        for top, left in _free_places(rng, self.canvas, int(rng.integers(1, self.max_items + 1))):
            pick = int(rng.integers(len(self.items)))
            item = self.items[pick]
            grey[top:top + ITEM, left:left + ITEM] = item
            mask[top:top + ITEM, left:left + ITEM] = np.where(item > self.threshold, self.labels[pick] + 1, 0)
        image = np.repeat(grey[:, :, None], 3, axis=2)
        return image, mask, f"idx-scenes[{self.split}][{index}] from {self.data_dir}"


def _free_places(rng, canvas, count, attempts=50):
    """Top-left corners of up to ``count`` non-overlapping 28x28 boxes (first one always fits)."""
    height, width = canvas
    places = []
    for _ in range(count):
        for _ in range(attempts):
            top, left = int(rng.integers(0, height - ITEM + 1)), int(rng.integers(0, width - ITEM + 1))
            if all(abs(top - t) >= ITEM or abs(left - l) >= ITEM for t, l in places):
                places.append((top, left))
                break
    return places


def _resolve_dir(data_dir):
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise DataError(f"{data_dir}: missing directory (idx-scenes needs the MNIST/Fashion-MNIST IDX files)")
        return data_dir
    for candidate in DEFAULT_DIRS:
        if os.path.isdir(candidate):
            return candidate
    raise DataError("idx-scenes: no data directory given and none of "
                    f"{', '.join(DEFAULT_DIRS)} exists; pass data_dir (--data-dir)")
