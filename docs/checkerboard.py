"""Draw docs/checkerboard.png: why resize-then-conv decoders replaced stride-2 transposed convs.

    python docs/checkerboard.py [--output docs/checkerboard.png] [--epochs 4] [--no-nets]

A constant 8x8 input goes through two upsampling layers (8 -> 16 -> 32), each with
uniform weights (every tap 1/9, no bias), computed with minigrad:

* a 3x3 transposed conv with stride 2 (padding 1, output_padding 1): the kernel
  size is not a multiple of the stride, so output pixels receive 1, 2 or 4 taps
  depending on their parity, and a constant input comes out as a checkerboard;
  the second layer multiplies the pattern (Odena, Dumoulin & Olah, Distill 2016);
* nearest-neighbour resize by 2, then a 3x3 conv (padding 1): every output pixel
  sums the same 9 taps, so the output is constant (but at the zero-padded border);
* bilinear resize by 2, then the same conv: constant as well.

Each panel is scaled to its own min..max (the numbers printed under it), so the
pattern's contrast is visible; the spread max/min inside the border is printed too.

Then the same nets' predictions side by side (skipped with ``--no-nets``): three
U-Nets (``segnets.build_model("unet", upsampling=...)``, width 8, padding "same",
batch norm) that differ only in their up-sampling layers (the paper's 2x2 stride-2
transposed conv, nearest x2 + 3x3 conv, bilinear x2 + 3x3 conv) train from the
same seed on the same batches of ``shapes`` (64x64, ``--train-images`` images,
``--epochs`` epochs, Adam 3e-3, no augmentation; a couple of minutes on one CPU
core). For one validation image the picture shows each net's predicted mask and
the high-pass part of its background score map (the logit minus its 3x3 box mean:
edges, and a checkerboard where the up-sampling paints one), each scaled to its
own range. The number under each net, the *2x2-periodic share*, measures a
checkerboard over all validation images: the logits' part that repeats with
period 2 in both directions (for each class and image, the mean of the high-pass
map over each of the four pixel parities, less their average; their mean square
over the high-pass map's mean square). Image content has no preferred parity, so it averages out
(about 1/(H*W/4) of the variance for noise); a pattern painted at the same parity
everywhere does not.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's minigrad and segnets
import minigrad  # noqa: E402
from minigrad import functional as F  # noqa: E402
from minigrad import optim  # noqa: E402

CELL = 8  # screen pixels per output pixel
SIDE = 8  # input side
UPSAMPLINGS = ("transposed", "nearest", "bilinear")
SCALE = 2  # screen pixels per image pixel in the nets' panels


def transposed(x):
    w = minigrad.Tensor(np.full((1, 1, 3, 3), 1 / 9))
    return F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)


def resize_conv(mode):
    def layer(x):
        w = minigrad.Tensor(np.full((1, 1, 3, 3), 1 / 9))
        up = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None)
        return F.conv2d(up, w, padding=1)
    return layer


def outputs():
    x = minigrad.Tensor(np.ones((1, 1, SIDE, SIDE)))
    panels = []
    for title, layer in (("transposed 3x3, stride 2", transposed),
                         ("nearest x2 + conv 3x3", resize_conv("nearest")),
                         ("bilinear x2 + conv 3x3", resize_conv("bilinear"))):
        y = layer(layer(x)).numpy()[0, 0]
        panels.append((title, y))
    return panels


def render(panels):
    side = panels[0][1].shape[0] * CELL
    margin, text_h = 10, 46
    canvas = Image.new("RGB", (len(panels) * (side + margin) + margin, side + 2 * margin + text_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, y) in enumerate(panels):
        lo, hi = float(y.min()), float(y.max())
        grey = np.zeros_like(y) if hi - lo < 1e-12 else (y - lo) / (hi - lo)
        tile = Image.fromarray(np.uint8(np.round(grey * 255))).resize((side, side), Image.NEAREST)
        left = margin + i * (side + margin)
        canvas.paste(tile.convert("RGB"), (left, margin + text_h))
        inner = y[4:-4, 4:-4]
        draw.text((left, 4), title, fill="black")
        draw.text((left, 18), f"range {lo:.3f} .. {hi:.3f}", fill="black")
        draw.text((left, 32), f"inside: max/min {inner.max() / inner.min():.2f}", fill="black")
    return canvas


def box3(maps):
    """3x3 box mean over the last two axes (edge-replicated), as a NumPy array."""
    padded = np.pad(maps, [(0, 0)] * (maps.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = maps.shape[-2:]
    return sum(padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def periodic_share(logits):
    """The 2x2-periodic share of the logits' high-pass part (module docstring); logits (N, C, H, W)."""
    high = logits - box3(logits)
    parity_means = np.stack([high[..., a::2, b::2].mean(axis=(-2, -1)) for a in (0, 1) for b in (0, 1)])
    parity_means -= parity_means.mean(axis=0)  # what the four parities share is no pattern
    return float((parity_means ** 2).mean() / (high ** 2).mean())


def shapes_arrays(split, count):
    from segnets.data import build_dataset
    data = build_dataset("shapes", split, seed=0, image_size=64, **{f"num_{split}": count})
    images = np.stack([data[i][0] for i in range(count)])
    masks = np.stack([data[i][1] for i in range(count)])
    return images, masks


def train_unets(epochs, train_images, batch=8):
    """{upsampling: (val logits (N, C, H, W), val images, val masks)} for the three U-Nets."""
    from segnets import build_model
    images, masks = shapes_arrays("train", train_images)
    val_images, val_masks = shapes_arrays("val", 100)
    mean, std = images.reshape(-1, 3).mean(0) / 255.0, images.reshape(-1, 3).std(0) / 255.0

    def normalise(x):
        return np.ascontiguousarray(((x / 255.0 - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)

    order = np.random.default_rng(0).permuted(np.tile(np.arange(len(images)), (epochs, 1)), axis=1).ravel()
    results = {}
    for mode in UPSAMPLINGS:
        minigrad.random.manual_seed(0)
        net = build_model("unet", 6, in_channels=3, width=8, padding="same", batch_norm=True, upsampling=mode)
        optimizer = optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start:start + batch]
            loss = F.cross_entropy(net(minigrad.Tensor(normalise(images[idx]))), minigrad.Tensor(masks[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with minigrad.no_grad():
            logits = np.concatenate([net(minigrad.Tensor(normalise(val_images[i:i + 20]))).numpy()
                                     for i in range(0, len(val_images), 20)])
        results[mode] = logits
        print(f"U-Net {mode:<10} last loss {loss.item():.3f}  val pixel acc "
              f"{(logits.argmax(1) == val_masks).mean():.3f}  2x2-periodic share {periodic_share(logits):.4f}")
    return results, val_images, val_masks


def grey(y):
    lo, hi = float(y.min()), float(y.max())
    g = np.zeros_like(y) if hi - lo < 1e-12 else (y - lo) / (hi - lo)
    return np.repeat(np.uint8(np.round(g * 255))[..., None], 3, axis=2)


def render_nets(results, val_images, val_masks, index, epochs, train_images):
    """image | truth, then per net: prediction over the high-pass background score map."""
    from segnets.visualize import colorize
    side, gap, text_h = 64 * SCALE, 10, 30

    def big(a):
        return Image.fromarray(a).resize((side, side), Image.NEAREST)

    columns = [("image", [big(val_images[index])]), ("truth", [big(colorize(val_masks[index]))])]
    for mode, logits in results.items():
        score = logits[index, 0]
        columns.append((f"{mode}: {periodic_share(logits):.4f}",
                        [big(colorize(logits[index].argmax(0))), big(grey(score - box3(score)))]))
    header = 30
    canvas = Image.new("RGB", (len(columns) * (side + gap) + gap, header + text_h + 2 * side + 2 * gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), f"U-Nets after {epochs} epochs on {train_images} shapes images; under each: its "
              "2x2-periodic share of the logits", fill="black")
    draw.text((gap, 16), "top: prediction; bottom: background logit minus its 3x3 mean", fill="black")
    for i, (title, tiles) in enumerate(columns):
        left = gap + i * (side + gap)
        draw.text((left, header + 4), title, fill="black")
        for j, tile in enumerate(tiles):
            canvas.paste(tile.convert("RGB"), (left, header + text_h + j * (side + gap)))
    return canvas


def stack(top, bottom):
    canvas = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height))
    return canvas


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default=str(Path(__file__).with_name("checkerboard.png")))
    p.add_argument("--epochs", type=int, default=4, help="U-Net training epochs (default 4)")
    p.add_argument("--train-images", type=int, default=400, help="shapes training images (default 400)")
    p.add_argument("--index", type=int, default=0, help="validation image shown (default 0)")
    p.add_argument("--no-nets", action="store_true", help="only the constant-input panels (no training)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.train_images < 8 or not 0 <= args.index < 100:
        p.error("--epochs must be >= 1, --train-images >= 8 and --index in 0..99")
    panels = outputs()
    for title, y in panels:
        inner = y[4:-4, 4:-4]
        print(f"{title:<26} inside the border: min {inner.min():.4f} max {inner.max():.4f}")
    picture = render(panels)
    if not args.no_nets:
        minigrad.set_num_threads(1)
        results, val_images, val_masks = train_unets(args.epochs, args.train_images)
        picture = stack(picture, render_nets(results, val_images, val_masks, args.index, args.epochs,
                                             args.train_images))
    picture.save(args.output, optimize=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
