"""Convolution geometry: output sizes, im2col and col2im. Every conv-like op calls these.

Layout: a column array has shape ``(N, C, kh, kw, OH, OW)``. Entry
``col[n, c, i, j, y, x]`` is the input pixel that kernel tap ``(i, j)`` sees
when the window sits at output position ``(y, x)``::

    col[n, c, i, j, y, x] = x_pad[n, c, y*sh + i*dh, x*sw + j*dw]

Reshaped to ``(N, C*kh*kw, OH*OW)`` it is what a convolution multiplies its
weight ``(O, C*kh*kw)`` with, giving ``(N, O, OH*OW)``: NCHW output with no transpose.
``col2im`` is the adjoint: it adds every column entry back onto the pixel it came
from, one strided add per kernel tap.
"""
import numpy as np

from .. import kernels
from ..backend import get_array_module


def pair(value, name="argument"):
    """(a, b) from an int, a one-element sequence or a pair, as PyTorch's 2-D ops expand them."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * 2
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints (or one int in a sequence), got {value}")
    return value


def conv_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Output length of a convolution or pooling along one axis (PyTorch's formula).

    With ``ceil_mode`` the last window may hang over the right edge, but it must
    start inside the input or the left padding (PyTorch's rule).
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv_transpose_output_size(size, kernel, stride, padding, output_padding=0, dilation=1):
    """Output length of a transposed convolution: the input size of the conv it inverts."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def im2col(x, kernel_size, stride, pad_before, dilation, out_size, pad_value=0.0, out=None):
    """Gather every window of ``x`` (N, C, H, W) into a contiguous (N, C, kh, kw, OH, OW) array.

    ``pad_before`` is the top/left padding; the bottom/right padding is whatever
    ``out_size`` needs (so ceil mode and asymmetric 'same' padding need no special case).
    Pixels in the padding read ``pad_value`` (0 for conv, -inf for max-pooling).
    One padded copy, one strided view, one contiguous copy (fast paths: one kernel, ``kernels.im2col``).
    ``out``: a contiguous array of the result's size to copy into instead of a new one.
    """
    fast = kernels.get("im2col", x)
    if fast is not None:
        return fast(x, kernel_size, stride, pad_before, dilation, out_size, pad_value, out=out)
    windows = window_view(x, kernel_size, stride, pad_before, dilation, out_size, pad_value)
    if out is None:
        return get_array_module(x).ascontiguousarray(windows)
    out = out.reshape(windows.shape)
    get_array_module(x).copyto(out, windows)
    return out


def window_view(x, kernel_size, stride, pad_before, dilation, out_size, pad_value=0.0):
    """im2col's (N, C, kh, kw, OH, OW) windows as a strided view: no copy beyond the padding.

    ``window_view(...)[:, :, ky, kx]`` is the (N, C, OH, OW) map of what kernel tap
    (ky, kx) sees at every output position; ops that only combine taps (max-pooling)
    loop over those instead of copying every window.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, pl), (dh, dw), (oh, ow) = kernel_size, stride, pad_before, dilation, out_size
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    x_pad = _pad_to(x, pt, pl, need_h, need_w, pad_value)
    sn, sc, sy, sx = x_pad.strides
    return xp.lib.stride_tricks.as_strided(
        x_pad, shape=(n, c, kh, kw, oh, ow),
        strides=(sn, sc, sy * dh, sx * dw, sy * sh, sx * sw))


def col2im(col, input_size, stride, pad_before, dilation, out=None):
    """Adjoint of ``im2col``: sum (N, C, kh, kw, OH, OW) columns back into (N, C, H, W).

    A loop over the kh*kw kernel taps, each one strided add of a whole (N, C, OH, OW)
    slab; no loop over pixels and no scatter with atomics. Kernels much larger than
    their stride (FCN's 64x64 stride-32 upsampling: 4096 taps) go by stride phase instead.
    Fast paths (``kernels.col2im``): on a GPU a deterministic gather, one thread per pixel;
    on the CPU one thread per share of the (n, c) planes.
    """
    fast = kernels.get("col2im", col)
    if fast is not None:
        return fast(col, input_size, stride, pad_before, dilation, out=out)
    xp = get_array_module(col)
    n, c, kh, kw, oh, ow = col.shape
    h, w = input_size
    (sh, sw), (pt, pl), (dh, dw) = stride, pad_before, dilation
    if (dh, dw) == (1, 1) and kh * kw > _PHASE_MIN_TAPS_PER_BLOCK * _ceil(kh, sh) * _ceil(kw, sw):
        padded = _col2im_by_phase(col, pt + h, pl + w, sh, sw)
    else:
        need_h = (oh - 1) * sh + dh * (kh - 1) + 1
        need_w = (ow - 1) * sw + dw * (kw - 1) + 1
        padded = xp.zeros((n, c, max(pt + h, need_h), max(pl + w, need_w)), dtype=col.dtype)
        for i in range(kh):
            for j in range(kw):
                y0, x0 = i * dh, j * dw
                padded[:, :, y0:y0 + sh * oh:sh, x0:x0 + sw * ow:sw] += col[:, :, i, j]
    result = padded[:, :, pt:pt + h, pl:pl + w]
    if out is not None:
        out += result
        return out
    return xp.ascontiguousarray(result)


# A block add reads the columns transposed (~8x slower per element than a tap's slab),
# so going by phase pays off only with many taps per block (measured: 4x faster at 64x64/32,
# even at 16x16/8, 8x slower at 4x4/2).
_PHASE_MIN_TAPS_PER_BLOCK = 64


def _ceil(a, b):
    return -(-a // b)


def _col2im_by_phase(col, min_h, min_w, sh, sw):
    """col2im without dilation, one add per block of sh x sw taps; returns the padded image.

    Tap i = p*sh + a lands on row (y + p)*sh + a: viewing the image as (H/sh, sh, W/sw, sw),
    all taps of block (p, q) add at once into rows y + p, columns x + q, at their phases.
    """
    xp = get_array_module(col)
    n, c, kh, kw, oh, ow = col.shape
    mh, mw = _ceil(kh, sh), _ceil(kw, sw)
    rows, cols = max(oh + mh, _ceil(min_h, sh)), max(ow + mw, _ceil(min_w, sw))
    padded = xp.zeros((n, c, rows, sh, cols, sw), dtype=col.dtype)
    for p in range(mh):
        a = min(sh, kh - p * sh)          # taps in this block (the last block may be partial)
        for q in range(mw):
            b = min(sw, kw - q * sw)
            block = col[:, :, p * sh:p * sh + a, q * sw:q * sw + b]           # (N, C, a, b, OH, OW)
            padded[:, :, p:p + oh, :a, q:q + ow, :b] += block.transpose(0, 1, 4, 2, 5, 3)
    return padded.reshape(n, c, rows * sh, cols * sw)


def wide_width(input_width, out_width, kernel_w, pad_left, dilation_w):
    """Row pitch of the 'wide' column layout of a stride-1 convolution (see ``col2im_wide``)."""
    return max(out_width + dilation_w * (kernel_w - 1), pad_left + input_width)


def col2im_wide(col, input_size, pad_before, dilation, out=None):
    """``col2im`` for stride 1, from 'wide' columns (N, C, kh, kw, OH, Wp), Wp = ``wide_width(...)``.

    Column rows are as long as the padded image rows, so with stride 1 every kernel tap
    lands on one contiguous run of OH*Wp pixels: one flat add per tap instead of OH
    short rows (2.7x faster than ``col2im`` on 64x64 maps). The entries x >= OW of each
    row must be zero: they run over into the next image row.
    """
    xp = get_array_module(col)
    n, c, kh, kw, oh, pitch = col.shape
    h, w = input_size
    (pt, pl), (dh, dw) = pad_before, dilation
    rows = max(oh + dh * (kh - 1), pt + h) + 1   # +1: room for the last tap's overrun
    padded = xp.zeros((n, c, rows * pitch), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            start = i * dh * pitch + j * dw
            padded[:, :, start:start + oh * pitch] += col[:, :, i, j].reshape(n, c, oh * pitch)
    result = padded.reshape(n, c, rows, pitch)[:, :, pt:pt + h, pl:pl + w]
    if out is not None:
        out += result
        return out
    return xp.ascontiguousarray(result)


def _pad_to(x, top, left, need_h, need_w, value):
    """Pad ``x`` by ``top``/``left`` and enough bottom/right to reach ``need_h`` x ``need_w``.

    Windows never read past ``need_*``, so extra input beyond it is cropped rather than copied.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    bottom, right = max(need_h - top - h, 0), max(need_w - left - w, 0)
    if top == left == bottom == right == 0:
        return x
    padded = xp.full((n, c, top + h + bottom, left + w + right), value, dtype=x.dtype)
    padded[:, :, top:top + h, left:left + w] = x
    return padded
