"""Batch normalisation: one fused op with the standard closed-form backward."""
from .. import kernels
from ..backend import get_array_module
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
    count = input.numel() // channels

    if training:
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.shape}")
        moments = kernels.get("channel_moments", x)   # the CPU kernels: one pass (shifted sums in float64)
        if moments is not None:
            mean, var = moments(x)
        else:
            fast = kernels.get("channel_sums", x)
            mean = (fast(x)[0] if fast is not None else x.sum(axis=(0,) + tuple(range(2, x.ndim)))) / count
            var = channel_sums(x, None, mean)[1] / count  # biased; two passes for accuracy
        _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var must be given when training=False")
        mean = running_mean.data.astype(x.dtype, copy=True)  # a snapshot: later steps update it in place
        var = running_var.data.astype(x.dtype, copy=False)

    # Neither xhat nor x - mean is kept for the backward (the input is kept anyway, as the
    # graph's parent): out and every gradient fold inv_std into per-channel factors.
    inv_std = 1 / xp.sqrt(var + eps)
    scale = xp.ones(channels, dtype=x.dtype) if weight is None else weight.data.astype(x.dtype, copy=False)
    shift = xp.zeros(channels, dtype=x.dtype) if bias is None else bias.data.astype(x.dtype, copy=False)
    out = channel_affine(x, mean, scale * inv_std, shift)

    def backward(g):
        need_input = input.requires_grad
        need_weight = weight is not None and weight.requires_grad
        need_bias = bias is not None and bias.requires_grad
        sum_g = sum_g_centered = None
        if need_weight or need_bias or (need_input and training):  # both sums in one pass
            sum_g, sum_g_centered = channel_sums(g, x, None, mean)
        grads = [None]
        if need_input:
            gain = scale * inv_std
            # dx = gain * g - (x - mean) * slope - offset: the two terms vanish in eval mode
            slope = gain * inv_std * inv_std * sum_g_centered / count if training else xp.zeros_like(gain)
            offset = gain * sum_g / count if training else xp.zeros_like(gain)
            grads[0] = batch_norm_input_grad(g, x, mean, gain, slope, offset)
        if weight is not None:
            grads.append(sum_g_centered * inv_std if need_weight else None)
        if bias is not None:
            grads.append(sum_g if need_bias else None)
        return tuple(grads)
    parents = (input,) + tuple(p for p in (weight, bias) if p is not None)
    return _result(out, parents, backward)


# Batch norm's three per-channel passes over (N, C, ...) arrays: generic array code, one dispatch each
# to a kernel (``minigrad.kernels``: one pass on the GPU, one pass on every core on the CPU).
def channel_sums(a, b=None, shift_a=None, shift_b=None):
    """Per channel (axis 1): (sum of (a - shift_a), sum of (a - shift_a) * (b - shift_b)) over every other axis.

    ``b`` defaults to ``a``, ``shift_a`` to 0, ``shift_b`` to ``shift_a``. The generic code
    builds one centred copy at most and sums the product by einsum (no product array).
    """
    fast = kernels.get("channel_sums", a)
    if fast is not None:
        return fast(a, b, shift_a, shift_b)
    xp = get_array_module(a)
    n, c = a.shape[:2]
    per_channel = (1, c) + (1,) * (a.ndim - 2)
    da = a if shift_a is None else a - shift_a.reshape(per_channel)
    if b is None:
        db = da
    else:
        shift_b = shift_a if shift_b is None else shift_b
        db = b if shift_b is None else b - shift_b.reshape(per_channel)
    sum_a = a.sum(axis=(0,) + tuple(range(2, a.ndim)))
    if shift_a is not None:
        sum_a = sum_a - shift_a.reshape(c) * (a.size // max(c, 1))
    sum_ab = xp.einsum("ncl,ncl->c", da.reshape(n, c, -1), db.reshape(n, c, -1))
    return sum_a, sum_ab


def channel_affine(x, mean, scale, shift):
    """(x - mean[c]) * scale[c] + shift[c] over (N, C, ...): batch norm's output."""
    fast = kernels.get("channel_affine", x)
    if fast is not None:
        return fast(x, mean, scale, shift)
    per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    out = x - mean.reshape(per_channel)
    out *= scale.reshape(per_channel)
    out += shift.reshape(per_channel)
    return out


def batch_norm_input_grad(g, x, mean, gain, slope, offset):
    """g * gain[c] - (x - mean[c]) * slope[c] - offset[c] over (N, C, ...): batch norm's input gradient."""
    fast = kernels.get("batch_norm_input_grad", x)
    if fast is not None:
        return fast(g, x, mean, gain, slope, offset)
    per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    correction = x - mean.reshape(per_channel)
    correction *= slope.reshape(per_channel)
    correction += offset.reshape(per_channel)
    dx = g * gain.reshape(per_channel)
    dx -= correction
    return dx
