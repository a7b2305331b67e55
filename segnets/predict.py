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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minigrad
from minigrad import backend

from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
from .crf import CRF_OPT_HELP
from .data.base import IGNORE_INDEX
from .data.transforms import normalize, pad_bottom_right
from .recipes import SettingsError
from .settings import Number, check_writable_folder
from .visualize import colorize, overlay, save_png


@dataclass(frozen=True)
class InputGeometry:
    """Which input sizes a net accepts and how much smaller its output is.

    Valid sizes are ``first + k * step``; the output loses ``margin`` pixels on every
    side (only U-Net with unpadded convs: 92, so 572 -> 388).
    """
    first: int
    step: int
    margin: int = 0

    def accepts(self, n):
        return n >= self.first and (n - self.first) % self.step == 0

    def valid_size(self, n):
        """The smallest valid input size that holds ``n`` pixels plus the margins."""
        n += 2 * self.margin
        return self.first if n <= self.first else self.first + -(-(n - self.first) // self.step) * self.step


def input_geometry(config):
    """The InputGeometry of the net described by a model config (``model.config``): the net's own
    ``size_rule_for`` (see each net's docstring), read without building the net."""
    from .models import model_class
    rule = model_class(config["name"]).size_rule_for(**config)
    return InputGeometry(rule.first, rule.step, rule.margin)


def fit_to_net(image, mask, geometry, fill_colour, ignore_index=IGNORE_INDEX):
    """Pad an image (and its mask) to a size the net accepts, so the net's output covers the whole image.

    The margin a shrinking net loses is filled by mirroring the image (U-Net's
    overlap-tile strategy) and with ``ignore_index`` in the mask; the rest goes to
    the bottom/right (mean colour, ignore). Cropping the mask to the output's centre
    then gives the original mask, bottom/right padding marked ignore.
    """
    m = geometry.margin
    if m:
        image = np.pad(image, ((m, m), (m, m), (0, 0)), mode="reflect")
        mask = None if mask is None else np.pad(mask, m, constant_values=ignore_index)
    height, width = image.shape[:2]
    size = (geometry.valid_size(height - 2 * m), geometry.valid_size(width - 2 * m))
    return pad_bottom_right(image, mask, size, fill_colour, ignore_index)


class NetInputTransform:
    """Evaluation transform: fit the image to the net's valid sizes (``fit_to_net``), then normalise.

    Called like the data transforms: ``t(image, mask, rng) -> (float32 (3, H', W'), int64 (H', W'))``.
    """

    def __init__(self, mean, std, geometry, ignore_index=IGNORE_INDEX):
        self.mean, self.std, self.geometry, self.ignore_index = mean, std, geometry, ignore_index
        self.fill_colour = np.clip(np.round(np.asarray(mean) * 255.0), 0, 255).astype(np.uint8)

    def __call__(self, image, mask=None, rng=None):
        image, mask = fit_to_net(image, mask, self.geometry, self.fill_colour, self.ignore_index)
        return normalize(image, self.mean, self.std), None if mask is None else mask.astype(np.int64)


def predict_mask(model, image, mean, std, device="cpu", geometry=None, crf_options=None):
    """(H, W) int64 class indices for one uint8 (H, W, 3) image, at the image's own size.

    The image is fitted to a size the net accepts (``fit_to_net``: mirrored margins
    for U-Net 'valid', padding at the bottom/right), and the logits are cropped back
    to the image. ``geometry`` defaults to the one of ``model.config``. With
    ``crf_options`` (a dict, ``{}`` for the defaults) the labels are the dense CRF's
    (``segnets.crf.dense_crf``) on the net's probabilities and the image.
    """
    height, width = image.shape[:2]
    geometry = geometry or input_geometry(model.config)
    x, _ = NetInputTransform(mean, std, geometry)(image)
    model.eval()
    with minigrad.no_grad():
        logits = model(minigrad.Tensor(x[None], device=device))
    scores = logits.data
    if crf_options is not None:
        from .crf import crf_batch
        scores = crf_batch(x[None], scores, mean, std, **crf_options)
    prediction = backend.to_numpy(scores[0].argmax(axis=0)).astype(np.int64)
    if prediction.shape[0] < height or prediction.shape[1] < width:
        raise ValueError(f"predict_mask: the net's {prediction.shape} output does not cover the "
                         f"{height}x{width} image (input {x.shape[1:]}, geometry {geometry})")
    return prediction[:height, :width]


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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint .npz written by segnets.train")
    source.add_argument("--onnx", metavar="MODEL", help="an .onnx file written by segnets.export, run with ONNX "
                                                        "Runtime (same outputs; --device is ignored)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument("--output-dir", required=True, help="directory for the PNGs (created if missing)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where to run [default: cpu]")
    p.add_argument("--crf", action="store_true",
                   help="refine the net's labels with the dense CRF (segnets.crf, DeepLab's defaults; "
                        "with --checkpoint)")
    p.add_argument("--crf-opt", action="append", metavar="KEY=VALUE",
                   help=CRF_OPT_HELP)
    p.add_argument("--alpha", type=Number(float, minimum=0.0, maximum=1.0), default=0.5,
                   help="opacity of the colours in the overlay, 0..1 [default: 0.5]")
    return p


def main(argv=None):
    from .data import DataError
    from .data.base import read_image
    args = build_parser().parse_args(argv)
    try:
        check_writable_folder(args.output_dir, "--output-dir")
        for path in args.images:  # every image readable before anything is written (exit 2, no outputs)
            read_image(path)
        crf_options = None
        if args.crf or args.crf_opt:
            from .crf import check_options
            from .recipes import parse_options
            if args.onnx:
                raise SettingsError("--crf needs the net's probabilities: use --checkpoint, not --onnx")
            try:
                crf_options = check_options(parse_options(args.crf_opt, "--crf-opt"))
            except ValueError as e:
                raise SettingsError(str(e)) from None
        if args.onnx:
            from .onnx_model import OnnxSegmenter
            segmenter = OnnxSegmenter(args.onnx)
            meta, segment = segmenter.meta, segmenter.predict_mask
        else:
            backend.xp_for(args.device)  # a missing GPU fails here, before any work
            checkpoint = load_checkpoint(args.checkpoint)
            model = build_model_from_checkpoint(checkpoint, device=args.device)
            meta = checkpoint["meta"]
            segment = lambda image: predict_mask(model, image, meta["mean"], meta["std"], args.device,  # noqa: E731
                                                 crf_options=crf_options)
    except (RuntimeError, CheckpointError, SettingsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(meta["classes"]) > 256:
        print(f"error: {len(meta['classes'])} classes do not fit an 8-bit mask PNG", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path, stem in zip(args.images, output_stems(args.images)):
        image = read_image(path)  # checked above
        try:
            mask = segment(image)
        except RuntimeError as e:  # an image larger than an ONNX model's fixed input
            print(f"error: {path}: {e}", file=sys.stderr)
            failures += 1
            continue
        save_png(mask.astype(np.uint8), out / f"{stem}_mask.png")
        save_png(colorize(mask), out / f"{stem}_color.png")
        save_png(overlay(image, mask, alpha=args.alpha), out / f"{stem}_overlay.png")
        present = ", ".join(meta["classes"][c] for c in np.unique(mask))
        print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {out / stem}_{{mask,color,overlay}}.png ({present})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
