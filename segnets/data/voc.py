"""``voc``: Pascal VOC 2012 segmentation, read from its own directory layout.

``data_dir`` is the ``VOC2012`` directory (or a directory holding ``VOCdevkit/VOC2012``
or ``VOC2012``) with::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNGs: index = class, 255 = void
    ImageSets/Segmentation/{train,val}.txt

Masks are read as palette indices (PIL mode "P"), never through their colours.
"""
import os

import numpy as np

from .base import DataError, SegmentationDataset, read_image, read_mask

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]


def voc_palette(num_colours=256):
    """The standard VOC colour map, uint8 (num_colours, 3).

    Colour of label ``k``: the bits of ``k`` are dealt out in turn to R, G, B, from
    each channel's most significant bit down (label 1 = dark red (128, 0, 0),
    2 = (0, 128, 0), 255 = (224, 224, 192), the void colour).
    """
    labels = np.arange(num_colours)
    palette = np.zeros((num_colours, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((labels >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def find_voc_root(data_dir):
    """The directory holding JPEGImages/, accepting the usual parents of it."""
    if data_dir is None:
        raise DataError("voc: no data directory given; pass data_dir (--data-dir) pointing at VOC2012")
    for candidate in (data_dir, os.path.join(data_dir, "VOCdevkit", "VOC2012"), os.path.join(data_dir, "VOC2012")):
        if os.path.isdir(os.path.join(candidate, "JPEGImages")):
            return candidate
    raise DataError(f"{data_dir}: not a Pascal VOC 2012 directory (no JPEGImages/ in it, "
                    "nor in VOCdevkit/VOC2012/ or VOC2012/ below it)")


def read_split_file(path):
    """The non-empty, stripped lines of a split file; DataError if missing or empty."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing split file")
    with open(path, encoding="utf-8") as f:
        stems = [line.strip() for line in f if line.strip()]
    if not stems:
        raise DataError(f"{path}: empty split (the file lists no images)")
    return stems


class VOCSegmentation(SegmentationDataset):
    name = "voc"
    classes = VOC_CLASSES

    def __init__(self, data_dir, split="train"):
        if split not in ("train", "val"):
            raise ValueError(f"voc: split must be 'train' or 'val', got {split!r}")
        self.root = find_voc_root(data_dir)
        self.split = split
        self.ids = read_split_file(os.path.join(self.root, "ImageSets", "Segmentation", f"{split}.txt"))

    def __len__(self):
        return len(self.ids)

    def paths(self, index):
        stem = self.ids[index]
        return (os.path.join(self.root, "JPEGImages", stem + ".jpg"),
                os.path.join(self.root, "SegmentationClass", stem + ".png"))

    def _load(self, index):
        image_path, mask_path = self.paths(index)
        return read_image(image_path), read_mask(mask_path), f"{mask_path} (image {image_path})"
