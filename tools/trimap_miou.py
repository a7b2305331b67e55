#!/usr/bin/env python
"""Trimap mIoU of a checkpoint: mIoU over the val pixels near a label boundary only.

    python tools/trimap_miou.py runs/NET-.../checkpoint_last.npz --bands 1 2 4

The DeepLab v3+ paper (Chen et al., ECCV 2018, Fig. 5) measures its decoder's gain this
way: the mIoU of the pixels within a narrow band ("trimap") around the object
boundaries, where an output-stride-8 net upsampled bilinearly is blurred most. A pixel
is in the band of width ``b`` when its (2b + 1) x (2b + 1) neighbourhood in the
ground-truth mask holds more than one label (Chebyshev distance <= b from a boundary);
the others are counted as ``ignore_index``, so the metrics are segnets.evaluate's,
from one confusion matrix over the split. The data is the checkpoint's val split.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segnets.data import IGNORE_INDEX  # noqa: E402


def boundary_band(mask, band):
    """Boolean (H, W): the pixels within ``band`` (Chebyshev) of a pixel with another label; none for 0."""
    if band < 1:
        return np.zeros(mask.shape, bool)
    size = 2 * band + 1
    return ndimage.maximum_filter(mask, size=size, mode="nearest") != \
        ndimage.minimum_filter(mask, size=size, mode="nearest")


class BandedLoader:
    """Wraps a loader of (images, masks): masks keep only their boundary band, the rest is ``ignore_index``."""

    def __init__(self, loader, band, ignore_index=IGNORE_INDEX):
        self.loader, self.band, self.ignore_index = loader, band, ignore_index

    def __iter__(self):
        for images, masks in self.loader:
            masks = np.array(masks, copy=True)
            for mask in masks:
                mask[~boundary_band(mask, self.band)] = self.ignore_index
            yield images, masks


def main(argv=None):
    from segnets.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
    from segnets.data import DataError, DataLoader
    from segnets.evaluate import confusion_matrix, dataset_for, eval_batch_size, metrics_dict
    from segnets.predict import NetInputTransform, input_geometry
    from segnets.recipes import SettingsError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--bands", type=int, nargs="+", default=[1, 2, 4], help="band widths in pixels [1 2 4]")
    args = p.parse_args(argv)
    if min(args.bands) < 1:
        p.error(f"--bands must be ints >= 1, got {args.bands}")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        meta = checkpoint["meta"]
        dataset = dataset_for(checkpoint, argparse.Namespace(dataset=None, data_dir=None, data_opt=[], split="val"))
        model = build_model_from_checkpoint(checkpoint, device="cpu")
    except (CheckpointError, SettingsError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = DataLoader(dataset, batch_size=eval_batch_size(dataset.name, 8),
                        transform=NetInputTransform(meta["mean"], meta["std"], input_geometry(meta["model"])))
    n = len(meta["classes"])
    print(f"{args.checkpoint}: mIoU {metrics_dict(confusion_matrix(model, loader, n, 'cpu'))['miou']:.4f} (all pixels)")
    for band in args.bands:
        miou = metrics_dict(confusion_matrix(model, BandedLoader(loader, band), n, "cpu"))["miou"]
        print(f"  trimap {band} px: mIoU {miou:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
