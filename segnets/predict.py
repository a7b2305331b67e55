"""Segment images with a trained net: ``python -m segnets.predict --checkpoint CKPT IMAGE... --output-dir DIR``.

For every image ``<stem>.<ext>`` it writes, at the image's own size:

* ``<stem>_mask.png``     the class index of every pixel (8-bit greyscale: value = class);
* ``<stem>_color.png``    the same mask in the VOC palette;
* ``<stem>_overlay.png``  the colours blended over the image (background left as is).

The checkpoint carries the net's name and options, its classes and the
normalisation it was trained with, so nothing else is needed.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import minigrad
from minigrad import backend

from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
from .visualize import colorize, overlay, save_png


def predict_mask(model, image, mean, std, device="cpu", multiple=None):
    """(H, W) int64 class indices for one uint8 (H, W, 3) image, at the image's size.

    The image is padded at the bottom/right to a multiple of ``multiple`` (the
    net's ``input_multiple`` when not given: DeconvNet's unpooling needs sizes
    divisible by 32), the logits are cropped back. A net whose output is smaller
    than its input (U-Net with unpadded convs) predicts the centre of the image;
    the border it cannot see is filled with the nearest prediction.
    """
    from .data.transforms import EvalTransform
    height, width = image.shape[:2]
    multiple = multiple or getattr(model, "input_multiple", None)
    x, _ = EvalTransform(mean, std, multiple=multiple)(image)
    model.eval()
    with minigrad.no_grad():
        logits = model(minigrad.Tensor(x[None], device=device))
    prediction = backend.to_numpy(logits.data[0].argmax(axis=0)).astype(np.int64)
    padded_h, padded_w = x.shape[1:]
    if prediction.shape == (padded_h, padded_w):
        return prediction[:height, :width]  # the padding sits at the bottom/right
    return _fill_from_centre(prediction, (padded_h, padded_w))[:height, :width]


def _fill_from_centre(prediction, size):
    """Place a centred smaller prediction in ``size``, the border copied from its nearest edge pixel."""
    pad_h, pad_w = size[0] - prediction.shape[0], size[1] - prediction.shape[1]
    top, left = pad_h // 2, pad_w // 2
    return np.pad(prediction, ((top, pad_h - top), (left, pad_w - left)), mode="edge")


def output_stems(paths):
    """The output name of each input: its stem, made unique when two inputs share one."""
    stems, seen = [], {}
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def build_parser():
    p = argparse.ArgumentParser(prog="python -m segnets.predict",
                                description="Segment images with a trained segnets checkpoint; writes per image "
                                            "<stem>_mask.png (class indices), <stem>_color.png (VOC palette) "
                                            "and <stem>_overlay.png.")
    p.add_argument("--checkpoint", required=True, help="checkpoint .npz written by segnets.train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--output-dir", required=True, help="directory for the PNGs (created if missing)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where to run")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the colours in the overlay")
    return p


def main(argv=None):
    from .data import DataError
    from .data.base import read_image
    args = build_parser().parse_args(argv)
    try:
        backend.xp_for(args.device)  # a missing GPU fails here, before any work
        checkpoint = load_checkpoint(args.checkpoint)
        model = build_model_from_checkpoint(checkpoint, device=args.device)
    except (RuntimeError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = checkpoint["meta"]
    if len(meta["classes"]) > 256:
        print(f"error: {len(meta['classes'])} classes do not fit an 8-bit mask PNG", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path, stem in zip(args.images, output_stems(args.images)):
        try:
            image = read_image(path)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        mask = predict_mask(model, image, meta["mean"], meta["std"], args.device)
        save_png(mask.astype(np.uint8), out / f"{stem}_mask.png")
        save_png(colorize(mask), out / f"{stem}_color.png")
        save_png(overlay(image, mask, alpha=args.alpha), out / f"{stem}_overlay.png")
        present = ", ".join(meta["classes"][c] for c in np.unique(mask))
        print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {out / stem}_{{mask,color,overlay}}.png ({present})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
