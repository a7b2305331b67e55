"""Pictures of masks: colour masks in the VOC palette, overlays, and image | truth | prediction grids.

Everything here works on NumPy uint8 arrays (H, W, 3) and integer masks (H, W);
nothing touches the autograd engine.
"""
import numpy as np
from PIL import Image


def palette_array(num_colors=256):
    """The VOC palette as a (num_colors, 3) uint8 array (class c -> palette[c]; 255 is the ignore colour)."""
    from .data.voc import voc_palette  # the data package owns the palette
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(-1, 3)
    if len(palette) < num_colors:
        palette = np.concatenate([palette, np.zeros((num_colors - len(palette), 3), np.uint8)])
    return palette[:num_colors]


def colorize(mask, palette=None):
    """(H, W) class indices -> (H, W, 3) uint8 colours; the 255 'ignore' label gets the palette's last colour."""
    palette = palette_array() if palette is None else palette
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"colorize: mask must be (H, W), got shape {mask.shape}")
    return palette[np.clip(mask, 0, len(palette) - 1).astype(np.intp)]


def overlay(image, mask, palette=None, alpha=0.5):
    """Blend the colour mask over the image; background (class 0) is left as it was."""
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[:2] != np.shape(mask):
        raise ValueError(f"overlay: image has shape {image.shape}, mask has shape {np.shape(mask)}; sizes must match")
    colors = colorize(mask, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colors
    keep = (np.asarray(mask) == 0)[..., None]
    return np.where(keep, image, np.round(blended)).astype(np.uint8)


def prediction_grid(images, targets, predictions, palette=None, gap=2, scale=1):
    """One row per example: image | ground truth | prediction, separated by ``gap`` white pixels.

    Images may differ in size; each row is padded to the widest row. ``scale``
    enlarges every panel by pixel repetition (small images stay legible).
    """
    rows = []
    for image, target, prediction in zip(images, targets, predictions):
        panels = [np.asarray(image, np.uint8), colorize(target, palette), colorize(prediction, palette)]
        panels = [p.repeat(scale, axis=0).repeat(scale, axis=1) for p in panels]
        height = max(p.shape[0] for p in panels)
        panels = [_pad_to(p, height, p.shape[1]) for p in panels]
        spacer = np.full((height, gap, 3), 255, np.uint8)
        rows.append(np.concatenate([panels[0], spacer, panels[1], spacer, panels[2]], axis=1))
    if not rows:
        raise ValueError("prediction_grid: no examples given")
    width = max(r.shape[1] for r in rows)
    spacer = np.full((gap, width, 3), 255, np.uint8)
    padded = []
    for row in rows:
        padded += [_pad_to(row, row.shape[0], width), spacer]
    return np.concatenate(padded[:-1], axis=0)


def _pad_to(picture, height, width):
    """Pad an (h, w, 3) picture with white at the bottom/right up to (height, width)."""
    out = np.full((height, width, 3), 255, np.uint8)
    out[:picture.shape[0], :picture.shape[1]] = picture
    return out


def save_png(array, path):
    """Write a uint8 (H, W) or (H, W, 3) array as PNG."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, format="PNG")
