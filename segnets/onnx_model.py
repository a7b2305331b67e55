"""Run a model written by ``segnets.export`` with ONNX Runtime (``python -m segnets.predict --onnx``).

``OnnxSegmenter(path).predict_mask(image)`` gives the same (H, W) class indices
as ``predict.predict_mask`` with the checkpoint the file was exported from: the
image is fitted to the net's valid sizes the same way (mirrored margins for
U-Net 'valid', padding at the bottom/right) and normalised with the mean/std in
the file's metadata. A model exported without ``--dynamic`` height and width
takes only its exported size: smaller images are padded up to it, larger ones
are an error that says so.
"""
import json

import numpy as np

from .data.transforms import normalize, pad_bottom_right
from .predict import InputGeometry, NetInputTransform


class OnnxModelError(RuntimeError):
    """A file that is not a readable segnets ONNX model, or an image it cannot take."""


def load_runtime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxModelError("--onnx needs ONNX Runtime: pip install onnxruntime") from None
    return onnxruntime


class OnnxSegmenter:
    """An ONNX Runtime session on a segnets export, with the metadata it carries (``meta``)."""

    def __init__(self, path):
        ort = load_runtime()
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for missing and malformed files
            raise OnnxModelError(f"cannot load ONNX model {str(path)!r}: {e}") from e
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("format") != "segnets-onnx":
            raise OnnxModelError(f"{str(path)!r} is not a model written by segnets.export (no segnets metadata)")
        try:
            self.meta = {key: json.loads(value) for key, value in props.items() if key not in ("format", "checkpoint")}
        except ValueError as e:
            raise OnnxModelError(f"{str(path)!r} has unreadable metadata: {e}") from e
        rule = self.meta["size_rule"]
        self.geometry = InputGeometry(rule["first"], rule["step"], rule["margin"])
        self.input = self.session.get_inputs()[0]
        self.fixed = [d if isinstance(d, int) else None for d in self.input.shape[2:]]

    def predict_mask(self, image):
        """(H, W) int64 class indices for one uint8 (H, W, 3) image, at the image's own size."""
        height, width = image.shape[:2]
        mean, std = self.meta["mean"], self.meta["std"]
        if any(self.fixed):
            fh, fw = self.fixed
            m = self.geometry.margin
            if height + 2 * m > fh or width + 2 * m > fw:
                raise OnnxModelError(f"the model's input size is fixed at {fh}x{fw} (exported without dynamic "
                                     f"height/width), too small for a {height}x{width} image; export again with "
                                     "--height/--width that fit it, or with --dynamic")
            if m:  # U-Net 'valid': mirrored margins, as fit_to_net does
                image = np.pad(image, ((m, m), (m, m), (0, 0)), mode="reflect")
            fill = np.clip(np.round(np.asarray(mean) * 255.0), 0, 255).astype(np.uint8)
            image, _ = pad_bottom_right(image, None, (fh, fw), fill, 255)
            x = normalize(image, mean, std)
        else:
            x, _ = NetInputTransform(mean, std, self.geometry)(image)
        logits = self.session.run([self.session.get_outputs()[0].name], {self.input.name: x[None]})[0]
        return logits[0].argmax(axis=0).astype(np.int64)[:height, :width]
