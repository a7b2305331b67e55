"""``folder``: your own data as two directories of files with matching stems.

::

    data_dir/images/<stem>.<png|jpg|jpeg|bmp|tif|tiff|webp|ppm|pgm>
    data_dir/masks/<stem>.<any of those, normally png>   single-channel or palette PNG of
                                                         class indices, 255 = ignore
    data_dir/classes.txt     optional: one class name per line, line 1 = class 0 (background)
    data_dir/train.txt       optional: stems of the training images, one per line
    data_dir/val.txt         optional: stems of the validation images

Splits: with both txt files, they are used as given; with only one, the other split is
every stem it does not list; with neither, a seeded 80/20 split of the sorted stems
(``seed``; the same for train and val, so they never overlap).

Classes: without ``classes.txt``, ``num_classes`` is the largest label over all masks
(255 excluded) + 1, found by reading every mask once (cached per directory state), and
the classes are named ``class_0``, ``class_1``, ...

Every image must have a mask (checked when the item is read, and by ``validate()``,
which also reports masks without an image and duplicate stems).
"""
import functools
import os

import numpy as np

from .base import IMAGE_EXTENSIONS, DataError, SegmentationDataset, read_image, read_mask
from .voc import read_split_file

TRAIN_FRACTION = 0.8


class FolderDataset(SegmentationDataset):
    name = "folder"

    def __init__(self, data_dir, split="train", seed=0):
        if split not in ("train", "val"):
            raise ValueError(f"folder: split must be 'train' or 'val', got {split!r}")
        if data_dir is None:
            raise DataError("folder: no data directory given; pass data_dir (--data-dir)")
        self.root, self.split = data_dir, split
        self.images, self.image_duplicates = _files_by_stem(os.path.join(data_dir, "images"))
        self.masks, self.mask_duplicates = _files_by_stem(os.path.join(data_dir, "masks"))
        self.stems = self._split_stems(split, seed)
        self.classes = self._class_names()

    def __len__(self):
        return len(self.stems)

    def _load(self, index):
        stem = self.stems[index]
        image_path = self.images[stem]
        mask_path = self.masks.get(stem)
        if mask_path is None:
            raise DataError(f"{image_path}: missing mask (expected masks/{stem}.png in {self.root})")
        return read_image(image_path), read_mask(mask_path), f"{mask_path} (image {image_path})"

    def _structural_problems(self):
        problems = [f"{self.masks[stem]}: mask without an image"
                    for stem in sorted(set(self.masks) - set(self.images))]
        for kind, duplicates in (("images", self.image_duplicates), ("masks", self.mask_duplicates)):
            problems += [f"{', '.join(paths)}: several {kind} share the stem {stem!r}"
                         for stem, paths in duplicates.items()]
        return problems

    def _split_stems(self, split, seed):
        if not self.images:
            raise DataError(f"{os.path.join(self.root, 'images')}: no images found "
                            f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
        listed = {name: os.path.join(self.root, f"{name}.txt") for name in ("train", "val")}
        present = {name: path for name, path in listed.items() if os.path.isfile(path)}
        if split in present:
            stems = read_split_file(present[split])
            self._check_listed(stems, present[split])
        elif present:  # only the other split's file: this split is everything it does not list
            (other_path,) = present.values()
            other = read_split_file(other_path)
            self._check_listed(other, other_path)
            other = set(other)
            stems = [s for s in sorted(self.images) if s not in other]
        else:
            order = np.random.default_rng(seed).permutation(sorted(self.images))
            cut = int(round(TRAIN_FRACTION * len(order)))
            stems = [str(s) for s in (order[:cut] if split == "train" else order[cut:])]
        if not stems:
            raise DataError(f"{self.root}: empty {split} split (no images assigned to it)")
        return stems

    def _check_listed(self, stems, path):
        unknown = [s for s in stems if s not in self.images]
        if unknown:
            raise DataError(f"{path}: lists {len(unknown)} stem(s) with no file in images/: {unknown[:5]}")

    def _class_names(self):
        path = os.path.join(self.root, "classes.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
            if not names:
                raise DataError(f"{path}: no class names in it")
            return names
        state = tuple(sorted((stem, p, os.stat(p).st_mtime_ns, os.stat(p).st_size)
                             for stem, p in self.masks.items()))
        return [f"class_{k}" for k in range(_max_label(state) + 1)]


def _files_by_stem(directory):
    """{stem: path} of the image files in ``directory``, and {stem: [paths]} of clashing stems."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: missing directory")
    by_stem, duplicates = {}, {}
    for entry in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        path = os.path.join(directory, entry)
        if stem in by_stem:
            duplicates.setdefault(stem, [by_stem[stem]]).append(path)
        else:
            by_stem[stem] = path
    return by_stem, duplicates


@functools.lru_cache(maxsize=8)
def _max_label(mask_state):
    """Largest non-ignore label over all masks; keyed by (stem, path, mtime, size) so edits re-scan."""
    largest = 0
    for _, path, _, _ in mask_state:
        mask = read_mask(path)
        labels = mask[mask != 255]
        if labels.size:
            largest = max(largest, int(labels.max()))
    return largest
