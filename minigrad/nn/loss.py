"""CrossEntropyLoss: the module form of ``F.cross_entropy``."""
from .. import functional as F
from .module import Module


class CrossEntropyLoss(Module):
    """Softmax cross-entropy between (N, C, ...) scores and (N, ...) int64 class indices.

    ``weight`` (per-class, shape (C,)) is registered as a buffer, as in PyTorch;
    ``ignore_index`` pixels add nothing to the loss nor to the 'mean' divisor.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"{reduction} is not a valid value for reduction")
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)
