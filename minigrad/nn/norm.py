"""BatchNorm2d and BatchNorm1d: affine parameters, running statistics and PyTorch's momentum rule
around ``F.batch_norm``."""
import numpy as np

from .. import functional as F
from ..tensor import Tensor
from . import init
from .module import Module, Parameter


class BatchNorm2d(Module):
    """Normalise each channel of (N, C, H, W) input by batch statistics (training) or running ones (eval).

    The running statistics are buffers updated in place by ``F.batch_norm``:
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased
    batch variance. ``momentum=None`` makes it a cumulative average, the factor
    being ``1 / num_batches_tracked``. With ``track_running_stats=False`` there
    are no buffers and batch statistics are used in eval mode too. ``bias=False``
    (keyword-only, as in PyTorch) keeps the affine scale but drops the shift.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 bias=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(num_features, dtype=np.float32)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=np.float32)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=np.float32)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self):
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _average_factor(self):
        """The weight of this batch in the running averages (counts the batch when training)."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.data += 1
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked.item())
        return self.momentum

    _ranks = (4,)  # the input ranks forward accepts (BatchNorm1d: 2 and 3)

    def forward(self, input):
        name = type(self).__name__
        if input.ndim not in self._ranks:
            expected = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"{name}: expected {expected} input (got {input.ndim}D input of shape {input.shape})")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{name}: input has shape {input.shape}, its dim 1 must be "
                             f"num_features={self.num_features}")
        factor = self._average_factor()
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                            training=use_batch_stats, momentum=factor, eps=self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(BatchNorm2d):
    """BatchNorm2d's rules for (N, C) or (N, C, L) input: per-channel statistics over N (and L).

    Where we differ from PyTorch: it is a subclass of BatchNorm2d (the same module
    with another input rank), so ``isinstance(m, BatchNorm2d)`` holds for it too.
    """

    _ranks = (2, 3)
