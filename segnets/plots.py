"""Pictures of a run, drawn with Pillow only: training curves and a confusion matrix.

* ``draw_curves(records)``: four panels (train loss, val mIoU, val pixel accuracy,
  learning rate) against the epoch, from the records of ``metrics.jsonl``;
  ``write_curves(folder)`` redraws ``curves.png`` of a run folder (after every epoch).
* ``draw_confusion(matrix, class_names)``: the confusion matrix, rows = true class,
  columns = predicted class, each cell shaded by its share of the row (recall) and
  labelled with it where it fits; class names on both axes.

Both return uint8 (H, W, 3) arrays; ``visualize.save_png`` writes them.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND, INK, GRID, LINE = (255, 255, 255), (30, 30, 30), (225, 225, 225), (31, 119, 180)
PANELS = (("train loss", lambda r: r.get("train_loss")),
          ("val mIoU", lambda r: (r.get("val") or {}).get("miou")),
          ("val pixel accuracy", lambda r: (r.get("val") or {}).get("pixel_acc")),
          ("learning rate", lambda r: r.get("lr")))


def _font(size=12):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable default font
    except TypeError:
        return ImageFont.load_default()


def _text_size(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _number(value):
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def _ticks(lo, hi, count=5):
    """About ``count`` round values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _panel(title, epochs, values, width, height, log_scale=False):
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(11)
    draw.text((width // 2, 6), title, fill=INK, font=font, anchor="mt")
    left, right, top, bottom = 62, 14, 28, 34
    box = (left, top, width - right, height - bottom)
    draw.rectangle(box, outline=INK)
    points = [(e, v) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)
              and (v > 0 or not log_scale)]
    if not points:
        draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), "no data", fill=INK, font=small, anchor="mm")
        return image
    transform = math.log10 if log_scale else (lambda v: v)
    xs = [p[0] for p in points]
    ys = [transform(p[1]) for p in points]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.08 or (abs(y_hi) * 0.1 or 0.5)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_pixel(x, y):
        px = box[0] + (x - x_lo) / (x_hi - x_lo) * (box[2] - box[0])
        py = box[3] - (y - y_lo) / (y_hi - y_lo) * (box[3] - box[1])
        return px, py
    y_ticks = (range(math.floor(y_lo), math.ceil(y_hi) + 1) if log_scale and y_hi - y_lo >= 1
               else _ticks(y_lo, y_hi))
    for t in y_ticks:
        if not y_lo <= t <= y_hi:
            continue
        _, py = to_pixel(x_lo, t)
        draw.line((box[0] + 1, py, box[2] - 1, py), fill=GRID)
        draw.text((box[0] - 4, py), _number(10 ** t if log_scale else t), fill=INK, font=small, anchor="rm")
    x_ticks = [t for t in _ticks(x_lo, x_hi) if float(t).is_integer()] or [x_lo]
    for t in x_ticks:
        if x_lo <= t <= x_hi:
            px, _ = to_pixel(t, y_lo)
            draw.line((px, box[3], px, box[3] + 4), fill=INK)
            draw.text((px, box[3] + 6), str(int(t)), fill=INK, font=small, anchor="mt")
    draw.text(((box[0] + box[2]) // 2, height - 4), "epoch" + ("   (log scale)" if log_scale else ""),
              fill=INK, font=small, anchor="mb")
    pixels = [to_pixel(x, y) for x, y in zip(xs, ys)]
    if len(pixels) > 1:
        draw.line(pixels, fill=LINE, width=2)
    for px, py in pixels:
        draw.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=LINE)
    return image


def draw_curves(records, panel_size=(420, 260)):
    """A 2x2 grid of panels (train loss, val mIoU, val pixel accuracy, lr) from metrics.jsonl records."""
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("epoch"), int)]
    epochs = [r["epoch"] for r in records]
    width, height = panel_size
    canvas = Image.new("RGB", (2 * width, 2 * height), BACKGROUND)
    for k, (title, read) in enumerate(PANELS):
        values = [_as_float(read(r)) for r in records]
        positive = [v for v in values if v is not None and v > 0]
        log_scale = title == "learning rate" and len(positive) > 1 and max(positive) / min(positive) > 20
        canvas.paste(_panel(title, epochs, values, width, height, log_scale), ((k % 2) * width, (k // 2) * height))
    return np.asarray(canvas)


def _as_float(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def read_records(path):
    """The records of a metrics.jsonl file (lines that are not JSON objects are skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_curves(folder):
    """Redraw ``folder``/curves.png from ``folder``/metrics.jsonl (atomically: a reader never sees half a PNG)."""
    folder = Path(folder)
    picture = draw_curves(read_records(folder / "metrics.jsonl"))
    _save_atomic(picture, folder / "curves.png")
    return folder / "curves.png"


def _save_atomic(picture, path):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(picture).save(tmp, format="PNG")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- confusion matrix
def _shade(fraction):
    """White (0) to dark blue (1)."""
    f = min(max(fraction, 0.0), 1.0)
    return tuple(int(round(255 + f * (c - 255))) for c in (8, 48, 107))


def draw_confusion(matrix, class_names=None, cell=None):
    """The confusion matrix as a picture: rows = true class, columns = predicted class, class names on
    both axes, cells shaded (and labelled, where they fit) with the row-normalised share."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"draw_confusion: matrix must be square (C, C), got shape {matrix.shape}")
    n = matrix.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(n))]
    if len(names) != n:
        raise ValueError(f"draw_confusion: {len(names)} class names for a {n}x{n} matrix")
    cell = cell or max(14, min(48, 720 // n))
    font, small = _font(13), _font(max(8, min(12, cell // 3)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_size(probe, name, small)[0] for name in names) + 10
    left, top = label_w + 24, label_w + 30
    width, height = left + n * cell + 12, top + n * cell + 12
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            colour = _shade(share[i, j])
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=colour, outline=GRID)
            if cell >= 30:
                text = f"{share[i, j]:.2f}"
                ink = BACKGROUND if share[i, j] > 0.5 else INK
                draw.text((x0 + cell / 2, y0 + cell / 2), text, fill=ink, font=small, anchor="mm")
    for k, name in enumerate(names):  # true classes down the left, predicted classes up the top (rotated)
        draw.text((left - 6, top + k * cell + cell / 2), name, fill=INK, font=small, anchor="rm")
        w, h = _text_size(draw, name, small)
        label = Image.new("RGB", (w + 4, h + 6), BACKGROUND)
        ImageDraw.Draw(label).text((2, 2), name, fill=INK, font=small)
        rotated = label.rotate(90, expand=True)
        image.paste(rotated, (int(left + k * cell + (cell - rotated.width) / 2), top - 6 - rotated.height))
    draw.text((left + n * cell / 2, 4), "predicted class", fill=INK, font=font, anchor="mt")
    title = Image.new("RGB", (140, 18), BACKGROUND)
    ImageDraw.Draw(title).text((70, 9), "true class", fill=INK, font=font, anchor="mm")
    title = title.rotate(90, expand=True)
    image.paste(title, (2, int(top + n * cell / 2 - title.height / 2)))
    return np.asarray(image)
