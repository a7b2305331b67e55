"""Draw docs/checkerboard.png: why resize-then-conv decoders replaced stride-2 transposed convs.

    python docs/checkerboard.py [--output docs/checkerboard.png]

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
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import minigrad
from minigrad import functional as F

CELL = 8  # screen pixels per output pixel
SIDE = 8  # input side


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default=str(Path(__file__).with_name("checkerboard.png")))
    args = p.parse_args(argv)
    panels = outputs()
    for title, y in panels:
        inner = y[4:-4, 4:-4]
        print(f"{title:<26} inside the border: min {inner.min():.4f} max {inner.max():.4f}")
    render(panels).save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
