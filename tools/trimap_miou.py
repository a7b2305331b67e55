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

With ``--crf`` (and ``--crf-opt KEY=VALUE``, as ``segnets.evaluate --crf``: the same
dense CRF, segnets.crf.dense_crf, with DeepLab's defaults) every line also gives the
numbers after the CRF, on the same pixels: the boundary claim of DeepLab v1 (Chen et
al., ICLR 2015, Fig. 5, which measures the CRF's gain in such a band).

    python tools/trimap_miou.py CKPT --bands 1 2 4 --crf
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


def band_matrices(model, loader, num_classes, bands, crf=None):
    """{band: matrices} over ``loader`` on the CPU; band 0 is every pixel, the others ``BandedLoader``'s.

    ``matrices``: (the net's ConfusionMatrix,), or with ``crf = (mean, std, options)``
    (the checkpoint's normalisation and dense_crf's keyword arguments) segnets.evaluate's
    pair (the net's, the one after the CRF), from one pass per band.
    """
    from segnets.evaluate import confusion_matrices_with_crf, confusion_matrix
    out = {}
    for band in (0, *bands):
        banded = BandedLoader(loader, band) if band else loader
        out[band] = ((confusion_matrix(model, banded, num_classes, "cpu"),) if crf is None
                     else confusion_matrices_with_crf(model, banded, num_classes, "cpu", *crf))
    return out


def main(argv=None):
    from segnets.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
    from segnets.crf import CRF_OPT_HELP, check_options
    from segnets.data import DataError, DataLoader
    from segnets.evaluate import dataset_for, eval_batch_size, metrics_dict
    from segnets.predict import NetInputTransform, input_geometry
    from segnets.recipes import SettingsError, parse_options

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--bands", type=int, nargs="+", default=[1, 2, 4], help="band widths in pixels [1 2 4]")
    p.add_argument("--crf", action="store_true",
                   help="also the metrics after the dense CRF (segnets.crf, DeepLab's defaults), as "
                        "segnets.evaluate --crf")
    p.add_argument("--crf-opt", action="append", metavar="KEY=VALUE", help=CRF_OPT_HELP)
    args = p.parse_args(argv)
    if min(args.bands) < 1:
        p.error(f"--bands must be ints >= 1, got {args.bands}")
    try:
        crf_options = (check_options(parse_options(args.crf_opt, "--crf-opt"))
                       if args.crf or args.crf_opt else None)
        checkpoint = load_checkpoint(args.checkpoint)
        meta = checkpoint["meta"]
        dataset = dataset_for(checkpoint, argparse.Namespace(dataset=None, data_dir=None, data_opt=[], split="val"))
        model = build_model_from_checkpoint(checkpoint, device="cpu")
    except (CheckpointError, SettingsError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    loader = DataLoader(dataset, batch_size=eval_batch_size(dataset.name, 8),
                        transform=NetInputTransform(meta["mean"], meta["std"], input_geometry(meta["model"])))
    crf = None if crf_options is None else (meta["mean"], meta["std"], crf_options)
    matrices = band_matrices(model, loader, len(meta["classes"]), args.bands, crf)
    if crf is not None:
        print(f"dense CRF: {', '.join(f'{k}={v}' for k, v in crf_options.items()) or 'defaults'}")
    for band, pair in matrices.items():
        metrics = [metrics_dict(matrix) for matrix in pair]
        miou, acc = (" -> ".join(f"{m[key]:.4f}" for m in metrics) for key in ("miou", "pixel_acc"))
        where = f"{args.checkpoint}: " if band == 0 else f"  trimap {band} px: "
        print(f"{where}mIoU {miou}, pixel acc {acc}{' (all pixels)' if band == 0 else ''}"
              f"{' with the CRF' if crf is not None else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
