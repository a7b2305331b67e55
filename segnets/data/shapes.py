"""``shapes``: the embedded dataset, generated on the fly; no files, no download.

Each image is a textured background with 2 to 5 shapes drawn one after another:

* **classes**: background, circle, square, triangle, cross, ring. Squares and triangles
  are rotated; crosses have thin arms and rings are thin annuli (down to ~1.5 px at
  64x64), so the boundary detail matters: a net that only sees coarse blobs (FCN-32s)
  confuses a ring with a circle and a cross with a square, one with skip connections
  (FCN-8s, U-Net) does not.
* **colour says nothing about the class**: every shape's colour is uniform-random in
  RGB, independent of its class (only redrawn, up to 8 times, when it would be nearly
  invisible against what lies under it). Shapes carry a faint linear shading.
* **backgrounds are textured**: a two-colour linear gradient at a random angle, plus
  sinusoidal stripes of random frequency/angle/strength, plus pixel noise over the
  whole image (so neither a flat colour nor an edge detector finds the shapes).
* **occlusion**: later shapes cover earlier ones and the mask follows the visible
  part, so a square may appear with a bite taken out of it.
* **sizes vary** from ~8% to ~30% of the image side.

Item ``i`` of split ``s`` is generated from a generator seeded with ``(seed, s, i)``,
so it is the same on every call, on every machine, in any order. Options:
``image_size`` (64: 64x64; an int or (H, W)), ``num_train`` (800), ``num_val`` (100),
``cache`` (True: keep generated items in memory, ~16 KB each at 64x64, so later epochs
skip the ~3-4 ms it takes to draw one). Everything is vectorised rasterisation on
coordinate grids (inequalities), no loop over pixels.
"""
import numpy as np

from .base import SegmentationDataset

SHAPE_CLASSES = ["background", "circle", "square", "triangle", "cross", "ring"]
_SPLIT_IDS = {"train": 0, "val": 1}


MAX_SIZE = 4096  # generated images are held in memory: a bound that stops a typo (image_size=1e9) early
MAX_ITEMS = 100_000  # the same for num_train / num_val (the cache would grow without bound)


def item_count(value, name, dataset):
    """``num_train`` / ``num_val`` as an int in 1..MAX_ITEMS, or a ValueError naming the option."""
    whole = (not isinstance(value, bool) and isinstance(value, (int, np.integer, float)) and np.isfinite(value)
             and value == int(value))
    if not whole or not 1 <= value <= MAX_ITEMS:
        raise ValueError(f"{dataset}: {name} must be a whole number 1..{MAX_ITEMS}, got {value!r}")
    return int(value)


class ShapesDataset(SegmentationDataset):
    name = "shapes"
    classes = SHAPE_CLASSES

    def __init__(self, split="train", seed=0, image_size=64, num_train=800, num_val=100, cache=True):
        if split not in _SPLIT_IDS:
            raise ValueError(f"shapes: split must be 'train' or 'val', got {split!r}")
        self.split, self.seed = split, int(seed)
        self.size = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(map(int, image_size))
        if min(self.size) < 16 or max(self.size) > MAX_SIZE:
            raise ValueError(f"shapes: image_size must be 16..{MAX_SIZE}, got {image_size!r}")
        self.length = item_count(num_train if split == "train" else num_val, f"num_{split}", "shapes")
        self._cache = {} if cache else None  # index -> (image, mask as uint8)

    def __len__(self):
        return self.length

    def _load(self, index):
        if self._cache is not None and index in self._cache:
            image, mask = self._cache[index]
            image, mask = image.copy(), mask.astype(np.int64)  # copies: callers may write into them
        else:
            rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
            image, mask = render_scene(rng, self.size)
            if self._cache is not None:
                self._cache[index] = (image.copy(), mask.astype(np.uint8))
        return image, mask, f"shapes[{self.split}][{index}]"


def render_scene(rng, size):
    """One (image uint8 HxWx3, mask int64 HxW) drawn from ``rng``."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres
    canvas = _background(rng, yy, xx)
    mask = np.zeros(size, dtype=np.int64)
    scale = min(height, width)
    for _ in range(rng.integers(2, 6)):
        label = int(rng.integers(1, len(SHAPE_CLASSES)))
        inside = _RASTERISERS[SHAPE_CLASSES[label]](rng, yy, xx, scale, height, width)
        if not inside.any():
            continue
        colour = _contrasting_colour(rng, canvas[inside].mean(axis=0))
        canvas[inside] = colour + _shading(rng, yy, xx, scale)[inside, None]
        mask[inside] = label  # later shapes occlude earlier ones
    canvas += np.float32(0.04) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image, mask


def _background(rng, yy, xx):
    """Gradient between two random colours, plus stripes: float32 (H, W, 3) in [0, 1]."""
    height, width = yy.shape
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    start, end = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
    canvas = start + ramp[..., None] * (end - start)
    stripe_angle = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 16.0)
    phase = (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy) * (2 * np.pi / period)
    strength = rng.uniform(0.0, 0.15)
    return (canvas + strength * np.sin(phase)[..., None]).astype(np.float32)


def _contrasting_colour(rng, under):
    """A uniform-random colour, redrawn while it is too close to the mean colour under the shape."""
    for _ in range(8):
        colour = rng.uniform(0, 1, size=3).astype(np.float32)
        if np.abs(colour - under).max() > 0.3:
            break
    return colour


def _shading(rng, yy, xx, scale):
    angle = rng.uniform(0, 2 * np.pi)
    return (rng.uniform(-0.08, 0.08) * (np.cos(angle) * xx + np.sin(angle) * yy) / scale).astype(np.float32)


def _frame(rng, yy, xx, scale, height, width):
    """Random centre, radius and rotated coordinates (u, v) around the centre."""
    radius = rng.uniform(0.08, 0.30) * scale
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    return radius, u, v


def _circle(rng, yy, xx, scale, height, width):
    radius, u, v = _frame(rng, yy, xx, scale, height, width)
    return u * u + v * v <= radius * radius


def _square(rng, yy, xx, scale, height, width):
    radius, u, v = _frame(rng, yy, xx, scale, height, width)
    half = radius * 0.8
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(rng, yy, xx, scale, height, width):
    """Inside all three edges' half-planes; corners jittered so triangles are not all equilateral."""
    radius, u, v = _frame(rng, yy, xx, scale, height, width)
    radius *= 1.25  # an inscribed triangle covers little of its circle; keep its area near the others'
    angles = np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.35, 0.35, size=3)
    corners = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):  # three edges, counter-clockwise: inside is left of each
        (x0, y0), (x1, y1) = corners[k], corners[(k + 1) % 3]
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _cross(rng, yy, xx, scale, height, width):
    radius, u, v = _frame(rng, yy, xx, scale, height, width)
    arm = max(radius * rng.uniform(0.12, 0.3), 0.9)  # half-width of an arm: thin parts
    return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | ((np.abs(u) <= arm) & (np.abs(v) <= radius))


def _ring(rng, yy, xx, scale, height, width):
    radius, u, v = _frame(rng, yy, xx, scale, height, width)
    thickness = max(radius * rng.uniform(0.15, 0.35), 1.5)
    distance = np.sqrt(u * u + v * v)
    return (distance <= radius) & (distance >= radius - thickness)


_RASTERISERS = {"circle": _circle, "square": _square, "triangle": _triangle,
                "cross": _cross, "ring": _ring}
