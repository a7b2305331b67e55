"""What every dataset shares: the item contract, the checks, and the image readers.

An item is ``(image, mask)``: ``image`` uint8 of shape (H, W, 3), ``mask`` int64 of
shape (H, W) holding class indices, ``ignore_index`` (255) for pixels nobody scores.
Every problem with the data raises :class:`DataError` naming the file and what is
wrong; nothing is skipped silently.
"""
import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_INDEX_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")


class DataError(ValueError):
    """Bad data: the message names the file and the problem."""


class SegmentationDataset:
    """Base class: subclasses set ``name``, ``classes`` and implement ``__len__`` and ``_load(i)``.

    ``_load`` returns ``(image, mask, source)`` where ``source`` names the files the item came
    from (used in error messages). ``__getitem__`` checks the item lazily; ``validate()``
    checks all of them at once (the trainer calls it before training on file datasets).
    """
    name = "dataset"
    classes = ("background",)
    ignore_index = IGNORE_INDEX

    @property
    def num_classes(self):
        return len(self.classes)

    def __len__(self):
        raise NotImplementedError

    def _load(self, index):
        raise NotImplementedError

    def __getitem__(self, index):
        index = _check_index(index, len(self))
        image, mask, source = self._load(index)
        check_item(image, mask, self.num_classes, self.ignore_index, source)
        return image, mask

    def validate(self, max_problems=20):
        """Load and check every item; raise one DataError listing the problems found."""
        problems = list(self._structural_problems())
        labelled, checked = 0, 0
        for i in range(len(self)):
            try:
                labelled += int(np.count_nonzero(self[i][1] != self.ignore_index))
                checked += 1
            except DataError as e:
                problems.append(str(e))
            if len(problems) >= max_problems:
                problems.append(f"(stopped after {max_problems} problems)")
                break
        if checked and checked == len(self) and labelled == 0:  # the loss would be 0/0 = nan
            problems.append(f"no pixel of the {getattr(self, 'split', '')} split is labelled: all {checked} "
                            f"masks hold only the ignore value {self.ignore_index} (void)")
        if problems:
            raise DataError(f"{self.name}: {len(problems)} problem(s) in the data:\n  " + "\n  ".join(problems))
        return self

    def _structural_problems(self):
        """Problems that no single item shows (e.g. a mask without an image); none by default."""
        return []

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}: {len(self)} items, {self.num_classes} classes>"


def _check_index(index, length):
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} items")
    return index


def check_item(image, mask, num_classes, ignore_index, source):
    """Raise DataError (naming ``source``) unless image/mask follow the item contract."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"{source}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise DataError(f"{source}: image is {image.shape[1]}x{image.shape[0]} (WxH) "
                        f"but its mask is {mask.shape[1]}x{mask.shape[0]} (WxH)")
    bad = (mask < 0) | ((mask >= num_classes) & (mask != ignore_index))
    if bad.any():
        values = np.unique(mask[bad])
        raise DataError(f"{source}: mask has label value(s) {values[:10].tolist()} outside the "
                        f"{num_classes} classes (0..{num_classes - 1}) that are not the ignore "
                        f"value {ignore_index}")


def read_image(path):
    """An RGB image file as uint8 (H, W, 3); DataError for unreadable or truncated files.

    Images of more than 8 bits per pixel are scaled to 0..255, not clipped:
    16-bit greyscale (PIL modes I;16*, and mode I with values in 0..65535) by
    255/65535, 32-bit float (mode F) with values in 0..1 by 255. Other 32-bit
    images (integers beyond 16 bits, floats outside 0..1) are refused, since
    their range is not ours to guess. (PIL already reads 16-bit RGB PNGs as 8-bit.)
    """
    with _open(path, "image") as img:
        if img.mode in ("I", "F") or img.mode.startswith("I;16"):
            grey = _scaled_to_8_bits(np.asarray(img), img.mode, path)
            return np.repeat(grey[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _scaled_to_8_bits(values, mode, path):
    """A 16-bit or 32-bit single-channel image as uint8 0..255, keeping its full range."""
    if values.dtype.kind == "f":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not np.isfinite(values).all() or low < 0.0 or high > 1.0:
            raise DataError(f"{path}: a 32-bit float image (mode {mode}) with values {low:g}..{high:g}; "
                            "expected values in 0..1 (convert it to an 8- or 16-bit image)")
        return np.round(values * 255.0).astype(np.uint8)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise DataError(f"{path}: a 32-bit integer image (mode {mode}) with values {low}..{high}; expected "
                        "8-bit or 16-bit (0..65535) values (convert it to an 8- or 16-bit image)")
    return np.round(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def read_mask(path):
    """A mask file as int64 (H, W) of class indices.

    Palette PNGs are read as their indices (PIL mode "P"), not their colours, so a VOC
    mask gives class numbers and 255 for void. Colour (RGB) masks are refused: which
    colour means which class is not ours to guess.
    """
    with _open(path, "mask") as img:
        if img.mode not in _INDEX_MODES:
            raise DataError(f"{path}: mask has mode {img.mode!r}; expected a single-channel or "
                            "palette PNG of class indices (modes P, L or I)")
        return np.asarray(img, dtype=np.int64)


class _open:
    """Open and fully decode an image, turning PIL's errors into DataError naming the file."""

    def __init__(self, path, what):
        self.path, self.what = path, what

    def __enter__(self):
        try:
            self.img = Image.open(self.path)
            self.img.load()  # decode now, so truncated files fail here
        except FileNotFoundError:
            raise DataError(f"{self.path}: missing {self.what} file") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{self.path}: unreadable or truncated {self.what} ({e})") from None
        return self.img

    def __exit__(self, *exc):
        self.img.close()
        return False
