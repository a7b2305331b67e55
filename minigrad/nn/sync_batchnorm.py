"""SyncBatchNorm: batch normalisation with the statistics of the whole global batch, over every rank.

With data parallelism each rank sees only its share of the batch; plain batch
norm would normalise with per-rank statistics, so N processes with batch B
would not train like one process with batch N*B. SyncBatchNorm sums per
channel over all ranks (``minigrad.distributed.all_reduce``):

  forward   sum(x) and the element count, then sum((x - mean)^2): the global
            mean and biased variance, exact for unequal local batches (each
            rank weighs by what it holds); two passes, as ``F.batch_norm`` does;
  backward  sum(g) and sum(g * (x - mean)), the two sums the input gradient
            needs, so dx is the gradient of the global batch's normalisation.

The weight and bias gradients stay local sums, as in PyTorch: the rank's share
of the global loss's gradient, which DistributedDataParallel then averages.
Running statistics follow PyTorch: the global mean and the unbiased variance
from the global count.
"""
from .. import functional as F
from ..tensor import _result
from .norm import BatchNorm2d


def sync_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps, all_reduce_sum):
    """Training-mode batch norm over the global batch; ``all_reduce_sum(array)`` sums an array over the ranks in place.

    Shapes as ``F.batch_norm``: (N, C) or (N, C, d1, ...), per-channel arguments (C,).
    With an ``all_reduce_sum`` that does nothing it is ``F.batch_norm(..., training=True)``.
    """
    xp, x = input.xp, input.data
    channels = input.shape[1]
    axes = (0,) + tuple(range(2, input.ndim))
    per_channel = (1, channels) + (1,) * (input.ndim - 2)

    stats = xp.concatenate([x.sum(axis=axes), xp.asarray([input.numel() // channels], dtype=x.dtype)])
    all_reduce_sum(stats)
    count = int(stats[-1])
    if count <= 1:
        raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel over all ranks when training, "
                         f"got {count} (this rank's input size {input.shape})")
    mean = stats[:channels] / count
    centered = x - mean.reshape(per_channel)
    squares = _channel_dot(xp, centered, centered)
    all_reduce_sum(squares)
    var = squares / count
    if running_mean is not None:
        running_mean.data[...] = (1 - momentum) * running_mean.data + momentum * mean
    if running_var is not None:
        running_var.data[...] = (1 - momentum) * running_var.data + momentum * var * (count / (count - 1))

    inv_std = 1 / xp.sqrt(var + eps)
    scale = xp.ones(channels, dtype=x.dtype) if weight is None else weight.data.astype(x.dtype, copy=False)
    out = centered * (scale * inv_std).reshape(per_channel)
    if bias is not None:
        out += bias.data.astype(x.dtype, copy=False).reshape(per_channel)

    def backward(g):
        centered = x - mean.reshape(per_channel)
        local = xp.concatenate([g.sum(axis=axes), _channel_dot(xp, g, centered)])  # this rank's sums
        grads = [None]
        if input.requires_grad:
            sums = local.copy()
            all_reduce_sum(sums)
            sum_g, sum_g_centered = sums[:channels], sums[channels:]
            gain = scale * inv_std
            slope = gain * inv_std * inv_std * sum_g_centered / count
            grads[0] = (g * gain.reshape(per_channel) - centered * slope.reshape(per_channel)
                        - (gain * sum_g / count).reshape(per_channel))
        if weight is not None:
            grads.append(local[channels:] * inv_std if weight.requires_grad else None)
        if bias is not None:
            grads.append(local[:channels] if bias.requires_grad else None)
        return tuple(grads)
    parents = (input,) + tuple(p for p in (weight, bias) if p is not None)
    return _result(out, parents, backward)


def _channel_dot(xp, a, b):
    n, c = a.shape[:2]
    return xp.einsum("ncl,ncl->c", a.reshape(n, c, -1), b.reshape(n, c, -1))


def _all_reduce_sum(array):
    from .. import distributed as dist
    dist.all_reduce(array, "sum")


class SyncBatchNorm(BatchNorm2d):
    """``torch.nn.SyncBatchNorm``: BatchNorm over (N, C, ...) input whose training statistics span all ranks.

    Outside a process group of more than one rank, and in eval mode, it is plain
    batch norm. Every rank must call it the same number of times, in the same order
    (it communicates in forward and backward). Where we differ from PyTorch: no
    ``process_group`` argument (the default group is used).
    """

    def forward(self, input):
        if input.ndim < 2 or input.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: input has shape {input.shape}; it must be (N, C, ...) with "
                             f"C=num_features={self.num_features}")
        factor = self._average_factor()
        use_batch_stats = self.training or self.running_mean is None
        from .. import distributed as dist
        if not use_batch_stats or not dist.is_initialized() or dist.get_world_size() == 1:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                training=use_batch_stats, momentum=factor, eps=self.eps)
        return sync_batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                               factor, self.eps, _all_reduce_sum)

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """``module`` with every BatchNorm2d replaced by a SyncBatchNorm sharing its parameters and buffers.

        Converts in place below the root and returns the (possibly new) root, as PyTorch does.
        """
        if isinstance(module, BatchNorm2d) and not isinstance(module, cls):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
            for name in ("weight", "bias"):
                converted.register_parameter(name, getattr(module, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                converted.register_buffer(name, getattr(module, name))
            converted.train(module.training)
            return converted
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child)
        return module
