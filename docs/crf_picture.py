"""Draw a checkpoint's validation predictions without and with the dense CRF, side by side.

    python docs/crf_picture.py CHECKPOINT [--output docs/crf-shapes.png] [--count 6] [--crf-opt KEY=VALUE ...]

One row per validation image of the checkpoint's dataset: image | ground truth | net | net + CRF
(``segnets.predict.predict_mask`` without and with ``crf_options``; VOC palette, black = background).
"""
import argparse

import numpy as np

from segnets.checkpoint import build_model_from_checkpoint, load_checkpoint
from segnets.crf import check_options
from segnets.data import build_dataset
from segnets.predict import predict_mask
from segnets.recipes import parse_options
from segnets.visualize import colorize, save_png


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--output", default="docs/crf-shapes.png")
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--crf-opt", action="append", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    meta, settings = checkpoint["meta"], checkpoint["meta"]["settings"]
    model = build_model_from_checkpoint(checkpoint)
    dataset = build_dataset(settings["dataset"], "val", data_dir=settings.get("data_dir"), seed=settings.get("seed", 0),
                            **settings.get("data_options", {}))
    options = check_options(parse_options(args.crf_opt, "--crf-opt"))
    rows = []
    for index in range(min(args.count, len(dataset))):
        image, mask = dataset[index][:2]
        image = np.asarray(image, np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        plain = predict_mask(model, image, meta["mean"], meta["std"])
        refined = predict_mask(model, image, meta["mean"], meta["std"], crf_options=options)
        panels = [image, colorize(mask), colorize(plain), colorize(refined)]
        panels = [q.repeat(args.scale, axis=0).repeat(args.scale, axis=1) for q in panels]
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for q in panels for x in (q, gap)][:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    save_png(np.concatenate(rows[:-1], axis=0), args.output)
    print(f"wrote {args.output}: image | truth | net | net + CRF, {len(rows) // 2} validation images")


if __name__ == "__main__":
    main()
