"""Batch normalisation: one fused op with the standard closed-form backward."""
from ..tensor import Tensor, _result


def _check_batch_norm_shapes(input, running_mean, running_var, weight, bias):
    """The channel count C, after checking every per-channel argument has shape (C,)."""
    if not isinstance(input, Tensor) or input.ndim < 2:
        shape = input.shape if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"batch_norm: input must be a Tensor of shape (N, C) or (N, C, d1, ...), got {shape}")
    channels = input.shape[1]
    for name, value in (("running_mean", running_mean), ("running_var", running_var),
                        ("weight", weight), ("bias", bias)):
        if value is not None and tuple(value.shape) != (channels,):
            raise ValueError(f"batch_norm: {name} must have shape ({channels},) for input shape {input.shape} "
                             f"(C={channels} at dim 1), got {name} shape {tuple(value.shape)}")
        if value is not None and value.device != input.device:
            raise ValueError(f"batch_norm: input is on {input.device} but {name} is on {value.device}")
    return channels


def _update_running_stats(running_mean, running_var, mean, biased_var, count, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch, with the unbiased variance."""
    if momentum is None and (running_mean is not None or running_var is not None):
        raise ValueError("batch_norm: momentum must be a float; the cumulative average (momentum=None) "
                         "is the BatchNorm module's job, which passes momentum=1/num_batches_tracked")
    if running_mean is not None:
        running_mean.data[...] = (1 - momentum) * running_mean.data + momentum * mean
    if running_var is not None:
        unbiased = biased_var * (count / (count - 1))
        running_var.data[...] = (1 - momentum) * running_var.data + momentum * unbiased


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """PyTorch's ``F.batch_norm`` over every axis but the channel axis 1, for (N, C) or (N, C, d1, ...).

    ``training=True`` normalises with the batch mean and biased variance and,
    when given, updates ``running_mean``/``running_var`` in place with the
    unbiased variance; ``training=False`` normalises with the running stats
    (which must then be given, as in PyTorch). ``momentum`` must be a float
    here: PyTorch's cumulative average (``momentum=None`` on the module) is the
    module's job, which passes ``1 / num_batches_tracked``. Running stats are
    constants (no gradient); ``weight``/``bias`` default to 1 and 0.

    The backward is the standard closed form, with ``xhat`` the normalised input
    and means taken per channel::

        dx = weight / std * (g - mean(g) - xhat * mean(g * xhat))    # training
        dx = weight / std * g                                        # eval
        dweight = sum(g * xhat),  dbias = sum(g)

    and computes only the gradients that are asked for.
    """
    channels = _check_batch_norm_shapes(input, running_mean, running_var, weight, bias)
    xp, x = input.xp, input.data
    axes = (0,) + tuple(range(2, input.ndim))
    per_channel = (1, channels) + (1,) * (input.ndim - 2)  # broadcasts a (C,) array against x
    count = input.numel() // channels

    if training:
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")
        mean = x.mean(axis=axes)
        centered = x - mean.reshape(per_channel)
        var = (centered * centered).mean(axis=axes)
        _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var must be given when training=False")
        centered = x - running_mean.data.astype(x.dtype, copy=False).reshape(per_channel)
        var = running_var.data.astype(x.dtype, copy=False)

    inv_std = 1 / xp.sqrt(var + eps)
    xhat = centered * inv_std.reshape(per_channel)
    scale = xp.ones(channels, dtype=x.dtype) if weight is None else weight.data.astype(x.dtype, copy=False)
    out = xhat * scale.reshape(per_channel)
    if bias is not None:
        out = out + bias.data.astype(x.dtype, copy=False).reshape(per_channel)

    def input_grad(g):
        g_scaled = g * (scale * inv_std).reshape(per_channel)
        if not training:
            return g_scaled
        mean_g = g_scaled.mean(axis=axes, keepdims=True)
        mean_g_xhat = (g_scaled * xhat).mean(axis=axes, keepdims=True)
        return g_scaled - mean_g - xhat * mean_g_xhat

    def backward(g):
        grads = [input_grad(g) if input.requires_grad else None]
        if weight is not None:
            grads.append((g * xhat).sum(axis=axes) if weight.requires_grad else None)
        if bias is not None:
            grads.append(g.sum(axis=axes) if bias.requires_grad else None)
        return tuple(grads)
    parents = (input,) + tuple(p for p in (weight, bias) if p is not None)
    return _result(out, parents, backward)
