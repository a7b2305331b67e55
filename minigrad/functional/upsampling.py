"""Resampling: ``interpolate`` with modes "nearest", "nearest-exact" and "bilinear" for (N, C, H, W).

Both modes are separable: each output row reads at most two input rows, each
output column at most two input columns. Per axis we compute PyTorch's source
indices and weights in PyTorch's precision (they match its CPU kernel bit for
bit; the weighted sums agree to an ulp). The forward gathers neighbours along W,
then along H. The backward is the transpose of the same per-axis maps, written
as two small dense (out, in) matrices: ``grad_x = A_h.T @ grad @ A_w`` (a GEMM
is deterministic and fast on both backends; gradients are finite, so the zeros
in A cannot turn an inf into NaN the way they would in the forward).
"""
import math

import numpy as np

from ..tensor import _result

MODES = ("nearest", "nearest-exact", "bilinear")


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    """Resize the last two axes of a 4-D tensor, like ``torch.nn.functional.interpolate``.

    Exactly one of ``size`` (int or pair) and ``scale_factor`` (float or pair). With
    ``scale_factor`` the output size is ``floor(in * scale_factor)`` and the source
    index uses ``1 / scale_factor`` unless ``recompute_scale_factor=True`` (then
    ``in / out``). "nearest" reads ``floor(dst * scale)``, "nearest-exact"
    ``floor((dst + 0.5) * scale)``; "bilinear" with ``align_corners=True`` maps corner
    pixels onto corner pixels, otherwise pixel centres (negative source coordinates
    clamp to 0). Only 4-D input and these three modes; no ``antialias``.
    """
    if input.ndim != 4:
        raise ValueError(f"interpolate: input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if mode not in MODES:
        raise ValueError(f"interpolate: mode must be one of {MODES}, got {mode!r}")
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not implemented")
    if mode == "bilinear":
        align_corners = bool(align_corners)
    elif align_corners is not None:
        raise ValueError(f"interpolate: align_corners can only be set with mode='bilinear', not mode={mode!r}")
    out_size, scales = _output_size(input.shape, size, scale_factor, recompute_scale_factor)
    in_size = input.shape[2:]
    if mode == "bilinear":
        axes = [_linear_axis(i, o, s, align_corners, input.dtype) for i, o, s in zip(in_size, out_size, scales)]
        return _resample(input, axes, linear=True)
    axes = [_nearest_axis(i, o, s, exact=mode == "nearest-exact") for i, o, s in zip(in_size, out_size, scales)]
    return _resample(input, axes, linear=False)


def _output_size(shape, size, scale_factor, recompute_scale_factor):
    """(out_h, out_w) and the per-axis scale factors handed to the source-index formulas (or None)."""
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor, got "
                         f"size={size!r} and scale_factor={scale_factor!r}")
    in_size = tuple(shape[2:])
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("interpolate: recompute_scale_factor=True is not meaningful with an explicit size")
        out_size, scales = _two("size", size, in_size), (None, None)
        if not all(isinstance(v, (int, np.integer)) for v in out_size):
            raise TypeError(f"interpolate: size must hold ints, got {size!r}")
        out_size = tuple(int(v) for v in out_size)
    else:
        scales = tuple(float(s) for s in _two("scale_factor", scale_factor, in_size))
        out_size = tuple(int(math.floor(n * s)) for n, s in zip(in_size, scales))
        if recompute_scale_factor:
            scales = (None, None)
    if min(out_size) <= 0 or min(in_size) <= 0:
        raise ValueError(f"interpolate: input and output sizes must be positive, got input of shape "
                         f"{tuple(shape)} and output size {out_size}")
    return out_size, scales


def _two(name, value, in_size):
    if not isinstance(value, (tuple, list)):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"interpolate: {name} must have 2 entries for input with spatial size {in_size}, "
                         f"got {tuple(value)}")
    return tuple(value)


# --------------------------------------------------------------------- per-axis source indices
def _scale(in_size, out_size, scale_factor, dtype):
    """PyTorch's ``compute_scales_value``: 1 / scale_factor when one was given, else in / out."""
    if scale_factor is not None and scale_factor > 0:
        return dtype(1.0 / scale_factor)
    return dtype(in_size) / dtype(out_size)


def _nearest_axis(in_size, out_size, scale_factor, exact):
    """Source index of every output position (PyTorch's ``nearest_idx`` / ``nearest_exact_idx``)."""
    dst = np.arange(out_size)
    if not exact and out_size == in_size:
        return dst
    if not exact and out_size == 2 * in_size:
        return dst >> 1
    scale = _scale(in_size, out_size, scale_factor, np.float32)  # float32 on every dtype, as in PyTorch
    if exact:  # (dst + 0.5) * scale is computed in double, then floored as a float
        source = ((dst + 0.5) * np.float64(scale)).astype(np.float32)
    else:
        source = dst.astype(np.float32) * scale
    return np.minimum(np.floor(source).astype(np.int64), in_size - 1)


def _linear_axis(in_size, out_size, scale_factor, align_corners, dtype):
    """(index0, index1, weight0, weight1) per output position (PyTorch's ``compute_source_index_and_lambda``).

    Computed in float32 for float32 input and float64 for float64, like PyTorch's opmath type.
    """
    real = np.float64 if dtype == np.float64 else np.float32
    dst = np.arange(out_size)
    if out_size == in_size:  # a plain copy
        return dst, dst, np.ones(out_size, real), np.zeros(out_size, real)
    if align_corners:
        ratio = real(in_size - 1) / real(out_size - 1) if out_size > 1 else real(0)
        source = ratio * dst.astype(real)
    else:
        # ratio * (dst + 0.5) - 0.5 rounded once, as PyTorch's fused multiply-add gives it
        ratio = _scale(in_size, out_size, scale_factor, real)
        source = np.maximum((np.float64(ratio) * (dst + 0.5) - 0.5).astype(real), real(0))
    index0 = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    weight1 = np.clip(source - index0.astype(real), real(0), real(1))
    index1 = index0 + (index0 < in_size - 1)
    return index0, index1, real(1) - weight1, weight1


# --------------------------------------------------------------------- forward and backward
def _resample(input, axes, linear):
    """Apply the per-axis maps: W first, then H (PyTorch's summation order); backward by their transposes."""
    xp = input.xp
    height, width = [tuple(xp.asarray(a) for a in axis) if linear else xp.asarray(axis) for axis in axes]
    if linear:
        out = _linear_along(_linear_along(input.data, width, axis=3), height, axis=2)
    else:
        out = input.data.take(width, axis=3).take(height, axis=2)

    def backward(g):
        n, c, h, w = input.shape
        rows, cols = (_axis_matrix(xp, axis, size, g.dtype, linear) for axis, size in zip(axes, (h, w)))
        # two plain GEMMs rather than N*C small batched ones: along W on (N*C*OH, OW) rows,
        # then along H with the (N*C) planes as the middle axis
        along_w = (g.reshape(-1, g.shape[3]) @ cols).reshape(n * c, g.shape[2], w)
        along_h = xp.tensordot(rows, along_w, axes=([0], [1]))  # (H, N*C, W)
        return (along_h.transpose(1, 0, 2).reshape(n, c, h, w),)
    return _result(out, (input,), backward)


def _linear_along(x, axis_map, axis):
    index0, index1, weight0, weight1 = axis_map
    shape = (-1,) + (1,) * (x.ndim - 1 - axis)  # weights broadcast along ``axis``
    return x.take(index0, axis=axis) * weight0.astype(x.dtype).reshape(shape) + \
        x.take(index1, axis=axis) * weight1.astype(x.dtype).reshape(shape)


def _axis_matrix(xp, axis_map, in_size, dtype, linear):
    """The dense (out, in) matrix of one axis' interpolation: row ``o`` holds the weights output ``o`` reads."""
    if not linear:
        axis_map = (axis_map, axis_map, np.ones(len(axis_map)), np.zeros(len(axis_map)))
    index0, index1, weight0, weight1 = axis_map
    rows = np.arange(len(index0))
    matrix = np.zeros((len(index0), in_size), dtype=dtype)
    matrix[rows, index0] += weight0
    matrix[rows, index1] += weight1  # index1 == index0 at the last input pixel: the weights add
    return xp.asarray(matrix)
