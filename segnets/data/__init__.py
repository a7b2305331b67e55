"""Segmentation data: datasets (one module per format), transforms, a resumable DataLoader.

``build_dataset(name, split, data_dir=None, seed=0, **options)`` returns a dataset whose
items are ``(image uint8 (H, W, 3), mask int64 (H, W))`` with 255 = ignore, and with
``classes`` (index 0 = background), ``num_classes``, ``ignore_index``, ``name`` and
``validate()``. Formats:

* ``shapes``: the embedded default, generated from (seed, split, index); no files.
* ``voc``: Pascal VOC 2012 (``data_dir`` = VOC2012).
* ``folder``: ``images/`` + ``masks/`` with matching stems (see :mod:`segnets.data.folder`).
* ``idx-scenes``: M2NIST-style scenes from MNIST / Fashion-MNIST IDX files.
"""
from . import transforms
from .base import IGNORE_INDEX, DataError, SegmentationDataset
from .folder import FolderDataset
from .idx_scenes import IdxScenes
from .loader import DataLoader
from .shapes import ShapesDataset
from .transforms import EvalTransform, TrainTransform, compute_mean_std
from .voc import VOC_CLASSES, VOCSegmentation, voc_palette

DATASETS = ["shapes", "voc", "folder", "idx-scenes"]


def build_dataset(name, split, data_dir=None, seed=0, **options):
    """The dataset ``name`` (one of DATASETS), split 'train' or 'val'."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if name == "shapes":
        return ShapesDataset(split, seed=seed, **options)
    if name == "voc":
        return VOCSegmentation(data_dir, split, **options)
    if name == "folder":
        return FolderDataset(data_dir, split, seed=seed, **options)
    if name == "idx-scenes":
        return IdxScenes(data_dir, split, seed=seed, **options)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
