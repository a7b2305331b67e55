"""Weight initialisation, named and computed like ``torch.nn.init``.

Every function fills ``tensor.data`` in place (the array object is kept, so
optimizers and views still see it) and returns ``tensor``. Random values are
drawn on the host from ``minigrad.random.generator("cpu")`` (or the
``generator`` passed) and copied to the tensor's device, so ``manual_seed``
gives the same model on CPU and GPU.
"""
import math

import numpy as np

from .. import backend, random


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for ``nonlinearity`` (PyTorch's table)."""
    linear_fns = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                  "conv_transpose2d", "conv_transpose3d")
    if nonlinearity in linear_fns or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    """fan_in = dim 1 x receptive field, fan_out = dim 0 x receptive field.

    For a ConvTranspose2d weight (in, out/groups, kh, kw) this makes fan_in
    ``out/groups * kh * kw``, exactly as PyTorch computes it.
    """
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(f"Fan in and fan out can not be computed for tensor with fewer than 2 dimensions "
                         f"(got shape {tuple(shape)})")
    receptive_field = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive_field, shape[0] * receptive_field


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _fill(tensor, values):
    """Copy host ``values`` into ``tensor.data`` in place, on its device and in its dtype."""
    tensor.data[...] = backend.to_device(np.asarray(values, dtype=tensor.dtype), tensor.device)
    return tensor


def _rng(generator):
    return random.generator("cpu") if generator is None else generator


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with U(a, b)."""
    return _fill(tensor, _rng(generator).uniform(a, b, size=tensor.shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std**2)."""
    return _fill(tensor, _rng(generator).normal(mean, std, size=tensor.shape))


def constant_(tensor, val):
    return _fill(tensor, np.full(tensor.shape, val))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = math.sqrt(3.0) * gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """N(0, std**2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-bound, bound) with bound = gain * sqrt(3 / fan); He et al. 2015."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_calculate_correct_fan(tensor, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """N(0, std**2) with std = gain / sqrt(fan); He et al. 2015."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_calculate_correct_fan(tensor, mode))
    return normal_(tensor, 0.0, std, generator)


# ---------------------------------------------------------------- FCN's bilinear upsampling kernel
def _bilinear_1d(size):
    """The classic ``upsample_filt`` profile along one axis (Long et al., FCN)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    return 1 - np.abs(np.arange(size) - center) / factor


def bilinear_kernel(in_channels, out_channels, kernel_size, dtype=np.float32):
    """A (in_channels, out_channels, kh, kw) ConvTranspose2d weight that upsamples bilinearly.

    Channel i maps to channel i through the outer product of two 1-D tent
    profiles; every off-diagonal channel pair is zero (when the channel counts
    differ, only the first min(in, out) channels are connected). With
    ``kernel_size = 2 * stride`` a transposed conv with this weight is bilinear
    interpolation by ``stride``.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    filt = np.outer(_bilinear_1d(kh), _bilinear_1d(kw))
    weight = np.zeros((in_channels, out_channels, kh, kw), dtype=dtype)
    diagonal = np.arange(min(in_channels, out_channels))
    weight[diagonal, diagonal] = filt
    return weight


def bilinear_(tensor):
    """Fill a (in, out, kh, kw) transposed-conv weight with ``bilinear_kernel``."""
    if tensor.ndim != 4:
        raise ValueError(f"bilinear_ needs a 4-D (in, out, kh, kw) weight, got shape {tensor.shape}")
    in_channels, out_channels, kh, kw = tensor.shape
    return _fill(tensor, bilinear_kernel(in_channels, out_channels, (kh, kw), dtype=np.float64))
