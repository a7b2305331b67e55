"""Segmentation metrics from one confusion matrix accumulated over a whole split.

``n[i, j]`` counts pixels of true class ``i`` predicted as class ``j`` (rows = target,
columns = prediction); ``t_i = sum_j n[i, j]`` is the number of pixels of class ``i``.
The four numbers of the FCN paper (Long et al., 2015, sec. 5):

* pixel accuracy  ``sum_i n_ii / sum_i t_i``
* mean accuracy   ``(1/n_cl) sum_i n_ii / t_i``
* mean IU         ``(1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)``
* frequency weighted IU ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

``n_cl`` counts only the classes that occur: a class absent from both target and
prediction has IoU NaN, one absent from the target has accuracy NaN, and the means
skip NaNs (``nanmean``), so a split without, say, any cows is not scored 0 on cows.
Pixels whose target is ``ignore_index`` are not counted at all.
"""
import math

import numpy as np

from minigrad.backend import normalize_device, to_device, to_numpy, xp_for


class ConfusionMatrix:
    def __init__(self, num_classes, ignore_index=255, device="cpu"):
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.device = normalize_device(device)
        self.reset()

    def reset(self):
        self._counts = xp_for(self.device).zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def matrix(self):
        """The (num_classes, num_classes) counts as a NumPy int64 array (rows = target)."""
        return to_numpy(self._counts).copy()

    def all_reduce(self):
        """Sum the counts over the ranks of ``minigrad.distributed`` (each rank counted its own share of a split)."""
        from minigrad import distributed
        distributed.all_reduce(self._counts, "sum")
        return self

    def update(self, pred, target):
        """Add a batch: ``pred`` and ``target`` are integer arrays of one shape (NumPy or CuPy).

        Counted on the matrix's device with one bincount of ``target * C + pred`` over
        the pixels whose target is not ``ignore_index``.
        """
        pred, target = to_device(pred, self.device), to_device(target, self.device)
        if pred.shape != target.shape:
            raise ValueError(f"ConfusionMatrix.update: pred has shape {tuple(pred.shape)} but target has "
                             f"shape {tuple(target.shape)}; they must match")
        for name, array in (("pred", pred), ("target", target)):
            if array.dtype.kind not in "iub":
                raise TypeError(f"ConfusionMatrix.update: {name} must be an integer array, got {array.dtype}")
        valid = target != self.ignore_index
        target, pred = target[valid].astype(np.int64), pred[valid].astype(np.int64)
        if target.size == 0:
            return
        self._check_range(target, "target", f" (other than the ignore value {self.ignore_index})")
        self._check_range(pred, "pred", " (at pixels whose target is not ignored)")
        counts = xp_for(self.device).bincount(target * self.num_classes + pred, minlength=self.num_classes ** 2)
        self._counts += counts.reshape(self.num_classes, self.num_classes)

    def _check_range(self, values, name, where):
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"ConfusionMatrix.update: {name} has values in [{low}, {high}]{where}, "
                             f"outside the {self.num_classes} classes 0..{self.num_classes - 1}")

    def compute(self):
        """pixel_acc, mean_acc, miou, fwiou (floats) and per_class_iou / per_class_acc (lists, NaN = absent)."""
        n = self.matrix.astype(np.float64)
        correct, target_total, pred_total = np.diag(n), n.sum(axis=1), n.sum(axis=0)
        union = target_total + pred_total - correct
        per_class_acc = _divide(correct, target_total)
        per_class_iou = _divide(correct, union)
        total = target_total.sum()
        weighted = np.where(union > 0, target_total * np.nan_to_num(per_class_iou), 0.0).sum()
        return {
            "pixel_acc": float(correct.sum() / total) if total else math.nan,
            "mean_acc": _nanmean(per_class_acc),
            "miou": _nanmean(per_class_iou),
            "fwiou": float(weighted / total) if total else math.nan,
            "per_class_iou": per_class_iou.tolist(),
            "per_class_acc": per_class_acc.tolist(),
        }

    def format_table(self, class_names=None):
        """A text table: one row per class (IoU, accuracy, pixels), then the four summary numbers."""
        names = list(class_names) if class_names is not None else [f"class_{k}" for k in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"format_table: {len(names)} class names for {self.num_classes} classes")
        scores, pixels = self.compute(), self.matrix.sum(axis=1)
        width = max(12, max(len(name) for name in names))
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}  {'pixels':>10}"]
        for name, iou, acc, count in zip(names, scores["per_class_iou"], scores["per_class_acc"], pixels):
            lines.append(f"{name:<{width}}  {_percent(iou):>6}  {_percent(acc):>6}  {count:>10d}")
        lines.append("-" * len(lines[0]))
        for key, label in (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("miou", "mean IoU"),
                           ("fwiou", "fw IoU")):
            lines.append(f"{label:<{width}}  {_percent(scores[key]):>6}")
        return "\n".join(lines)


def _divide(numerator, denominator):
    """numerator / denominator, NaN where the denominator is 0 (a class that never occurs)."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values):
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


def _percent(value):
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"
