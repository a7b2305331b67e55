"""Pooling: max_pool2d and max_unpool2d (one shared scatter), avg_pool2d, adaptive pools. Geometry is im2col's.

Max-pooling reads every kernel tap of ``window_view`` (im2col's windows as a
strided view; padding reads -inf), takes the elementwise maximum over the taps and
then, per window, the first tap in row-major window order that reaches it: no
copy of the windows. Its *switches* are int64 flat positions ``h * W + w`` inside
each input plane, exactly PyTorch's ``return_indices``. The max-pool gradient and
``max_unpool2d`` are the same operation, "put each value at its switch", written
once in ``_scatter_to_planes``; their adjoint, the unpool gradient, is the
matching gather ``_gather_from_planes``.

Like PyTorch, every op here also takes one unbatched (C, H, W) image.
"""
import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..tensor import Tensor, _result, is_grad_enabled
from .batch_axis import add_batch_axis, remove_batch_axis
from .im2col import col2im, conv_output_size, conv_transpose_output_size, im2col, pair, window_view
from .elementwise import _matmul  # the backend's threaded product where there is one


# --------------------------------------------------------------------- max_pool2d
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over each window; with ``return_indices`` also the switches (int64 ``h * W + w`` per plane).

    Same arguments, output size and indices as ``torch.nn.functional.max_pool2d``:
    stride defaults to kernel_size, padding acts as -inf and may be at most
    kernel_size // 2, ties go to the first element in row-major window order.
    Where we differ: a window that contains NaN returns the index of its first NaN
    (PyTorch's CPU kernel returns its last); a dilated window that holds no input
    pixel at all raises ValueError (PyTorch returns -inf and an out-of-range index).
    """
    x, added = add_batch_axis("max_pool2d", input, 4)
    geometry = _pool_geometry("max_pool2d", x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    out, indices = _max_pool2d(x, *geometry, need_indices=return_indices)
    if return_indices:
        return remove_batch_axis(out, added), remove_batch_axis(indices, added)
    return remove_batch_axis(out, added)


def _max_pool2d(x, kernel, stride, padding, dilation, out_size, need_indices):
    xp = x.xp
    h, w = x.shape[2:]
    kh, kw = kernel
    first_inside = [_first_tap_inside(*axis) for axis in
                    zip(("height", "width"), (h, w), out_size, kernel, stride, padding, dilation)]
    # Disjoint windows never share a switch, so their gradient is a plain store.
    disjoint = all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, stride, dilation))
    fast = kernels.get("max_pool2d", x.data)
    if fast is not None:  # one pass, one thread per window (a share of the planes on the CPU): same switches
        out, indices = fast(x.data, kernel, stride, padding, dilation, out_size)
        result = _result(out, (x,), lambda g: (_scatter_to_planes(g, indices, (h, w), disjoint),))
        return result, Tensor._wrap(indices)
    windows = window_view(x.data, kernel, stride, padding, dilation, out_size, pad_value=_lowest(x.dtype))
    taps = [windows[:, :, ky, kx] for ky in range(kh) for kx in range(kw)]
    out = _tap_maximum(xp, taps)
    needs_grad = is_grad_enabled() and x.requires_grad
    indices = None
    if need_indices or needs_grad:
        tap = _first_tap_reaching(xp, taps, out)
        indices = _switches(xp, tap, (h, w), kernel, stride, padding, dilation, first_inside)
    del windows, taps
    result = _result(out, (x,), lambda g: (_scatter_to_planes(g, indices, (h, w), disjoint),))
    return result, (None if indices is None else Tensor._wrap(indices))


def _tap_maximum(xp, taps):
    """Elementwise maximum of the tap maps (NaN wins, as in a NaN-propagating max)."""
    if len(taps) == 1:
        return taps[0].copy()
    out = xp.maximum(taps[0], taps[1])
    for value in taps[2:]:
        xp.maximum(out, value, out=out)
    return out


def _first_tap_reaching(xp, taps, out):
    """Per window, the first tap in row-major order whose value is ``out`` (a NaN window: its first NaN).

    Evaluates ``tap = miss_0 * (1 + miss_1 * (1 + ... miss_{K-2}))`` from the inside
    out, ``miss_t`` meaning tap t is not the maximum: one compare and two in-place
    integer ops per tap, on maps the size of the output.
    """
    nan_windows = out.dtype.kind == "f" and bool(xp.isnan(out).any())
    tap = xp.zeros(out.shape, np.uint8 if len(taps) <= 255 else np.int64)
    for value in reversed(taps[:-1]):
        misses = value != out
        if nan_windows:  # NaN != NaN: a NaN tap of a NaN window is a hit
            misses &= value == value
        tap += 1
        tap *= misses
    return tap


def _switches(xp, tap, input_size, kernel, stride, padding, dilation, first_inside):
    """Flat positions ``row * W + col`` in the input plane of each window's chosen tap (int64).

    Row and column of tap t relative to its window's corner come from small
    per-tap tables, so each map costs one table lookup and one broadcast add.
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = input_size, kernel, stride, padding, dilation
    oh, ow = tap.shape[2:]
    tap_rows = xp.asarray(np.repeat(np.arange(kh, dtype=np.int64) * dh, kw))
    tap_cols = xp.asarray(np.tile(np.arange(kw, dtype=np.int64) * dw, kh))
    corner_rows = (xp.arange(oh, dtype=np.int64) * sh - ph)[:, None]
    corner_cols = xp.arange(ow, dtype=np.int64) * sw - pw
    switches = xp.take(tap_rows * w + tap_cols, tap)
    switches += corner_rows * w + corner_cols
    reaches_padding = (ph > 0 or pw > 0 or (oh - 1) * sh - ph + (kh - 1) * dh >= h
                       or (ow - 1) * sw - pw + (kw - 1) * dw >= w)
    if not reaches_padding:
        return switches
    # A window whose input pixels are all -inf ties with its padding; PyTorch then
    # reports the window's first tap inside the input.
    rows = xp.take(tap_rows, tap) + corner_rows
    cols = xp.take(tap_cols, tap) + corner_cols
    in_padding = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
    first_row, first_col = (xp.asarray(f) for f in first_inside)
    return xp.where(in_padding, first_row[:, None] * w + first_col[None, :], switches)


def _first_tap_inside(axis, size, out, kernel, stride, pad, dilation):
    """Per output position along one axis, the first tap that lands inside the input.

    Only dilated windows can straddle the input without touching it; say so instead
    of pooling nothing.
    """
    taps = (np.arange(out) * stride - pad)[:, None] + np.arange(kernel) * dilation
    inside = (taps >= 0) & (taps < size)
    empty = ~inside.any(axis=1)
    if empty.any():
        raise ValueError(
            f"max_pool2d: the window at output {axis} {int(empty.argmax())} covers no input pixel "
            f"(input {axis} {size}, kernel_size {kernel}, stride {stride}, padding {pad}, dilation {dilation})")
    return taps[np.arange(out), inside.argmax(axis=1)]


# --------------------------------------------------------------------- max_unpool2d
def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Put each value at its switch (flat ``h * W + w`` in its output plane), zeros elsewhere.

    Like ``torch.nn.functional.max_unpool2d``: the default output size is
    ``(in - 1) * stride + kernel - 2 * padding`` per axis; ``output_size`` (2 entries,
    or 4 as in ``x.shape``) must lie strictly within ``default +- stride``. Where we
    differ: with overlapping windows (stride < kernel_size on an axis) values that
    share a switch are added, where PyTorch keeps one of them; this makes unpooling
    the max-pool gradient exactly. With disjoint windows switches from max-pooling
    never collide and a plain store is used; hand-made indices that collide then
    keep one value, as in PyTorch (on the CPU, the last).
    """
    x, added = add_batch_axis("max_unpool2d", input, 4)
    switches = indices.data if isinstance(indices, Tensor) else get_array_module(x.data).asarray(indices)
    if tuple(switches.shape) != tuple(input.shape):
        raise ValueError(f"max_unpool2d: indices must have the shape of input {tuple(input.shape)}, "
                         f"got {tuple(switches.shape)}")
    if switches.dtype.kind not in "iu":
        raise ValueError(f"max_unpool2d: indices must be integers, got dtype {switches.dtype}")
    switches = switches.reshape(x.shape).astype(np.int64, copy=False)
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride in ((), []) else pair(stride, "stride")
    out_size = _unpool_output_size(x.shape, kernel, stride, pair(padding, "padding"), output_size)
    _check_switches(switches, out_size)
    disjoint = all(s >= k for k, s in zip(kernel, stride))
    out = _scatter_to_planes(x.data, switches, out_size, disjoint)

    def backward(g):  # the adjoint of a scatter is the gather at the same switches
        return (_gather_from_planes(g, switches),)
    return remove_batch_axis(_result(out, (x,), backward), added)


def _scatter_to_planes(values, switches, plane_size, disjoint):
    """Put ``values[n, c, ...]`` at flat position ``switches[n, c, ...]`` of plane ``(n, c)``.

    Returns (N, C, H, W), zero where no switch points. Both the max-pool gradient
    and max_unpool2d. ``disjoint`` (the windows do not overlap, so switches from
    max-pooling are distinct within a plane): one fancy-index store; otherwise
    values that share a switch add, in one bincount over all planes.
    """
    xp = get_array_module(values)
    n, c = values.shape[:2]
    fast = kernels.get("scatter_to_planes", values)
    if fast is not None:
        return fast(values, switches, plane_size, accumulate=not disjoint)
    plane = plane_size[0] * plane_size[1]
    flat = _flat_switches(xp, switches, plane).ravel()
    total = n * c * plane
    if disjoint:
        out = xp.zeros(total, dtype=values.dtype)
        out[flat] = values.ravel()
        return out.reshape((n, c) + tuple(plane_size))
    summed = xp.bincount(flat, weights=values.ravel(), minlength=max(total, 1))[:total]
    return summed.astype(values.dtype, copy=False).reshape((n, c) + tuple(plane_size))


def _gather_from_planes(planes, switches):
    """``planes[n, c].ravel()[switches[n, c, ...]]`` for every plane: the adjoint of the scatter."""
    xp = get_array_module(planes)
    fast = kernels.get("gather_from_planes", planes)
    if fast is not None:
        return fast(planes, switches)
    plane = planes.shape[2] * planes.shape[3]
    return xp.ascontiguousarray(planes).ravel()[_flat_switches(xp, switches, plane)]


def _flat_switches(xp, switches, plane):
    """Switches as flat positions in the whole (N, C, H, W) array: plane (n, c) starts at (n*C + c) * plane."""
    n, c = switches.shape[:2]
    offsets = xp.arange(0, n * c * plane, plane, dtype=np.int64).reshape((n, c) + (1,) * (switches.ndim - 2))
    return switches + offsets


def _unpool_output_size(shape, kernel, stride, padding, output_size):
    default = tuple(conv_transpose_output_size(shape[2 + d], kernel[d], stride[d], padding[d]) for d in range(2))
    if output_size is None:
        size = default
    else:
        size = tuple(int(v) for v in output_size)
        if len(size) == 4:
            size = size[2:]
        if len(size) != 2:
            raise ValueError(f"max_unpool2d: output_size must have 2 or 4 entries, got {tuple(output_size)}")
        for d, axis in enumerate(("height", "width")):
            low, high = default[d] - stride[d], default[d] + stride[d]
            if not low < size[d] < high:
                raise ValueError(f"max_unpool2d: output_size {size} is invalid: the {axis} must lie strictly "
                                 f"between {low} and {high} for input of shape {tuple(shape)}, kernel_size "
                                 f"{kernel}, stride {stride}, padding {padding}")
    if min(size) <= 0:
        raise ValueError(f"max_unpool2d: output size {size} must be positive (input of shape {tuple(shape)}, "
                         f"kernel_size {kernel}, stride {stride}, padding {padding})")
    return size


def _check_switches(switches, out_size):
    plane = out_size[0] * out_size[1]
    if not switches.size or (int(switches.min()) >= 0 and int(switches.max()) < plane):
        return  # two reductions; the elementwise search below only runs to word the error
    bad = (switches < 0) | (switches >= plane)
    if bool(bad.any()):
        where = tuple(int(i) for i in np.unravel_index(int(bad.ravel().argmax()), switches.shape))
        raise IndexError(f"max_unpool2d: indices must lie in [0, {plane}) for output planes of size "
                         f"{tuple(out_size)}; {int(bad.sum())} do not, e.g. {int(switches[where])} at {where}")


# --------------------------------------------------------------------- avg_pool2d
def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over each window, with PyTorch's divisors.

    ``divisor_override`` if given; else with ``count_include_pad`` the part of the
    window inside input + padding (a ceil_mode window hanging past the padding counts
    only up to it); else the part inside the input.
    """
    if divisor_override is not None and int(divisor_override) == 0:
        raise ValueError("avg_pool2d: divisor_override must not be zero")
    x, added = add_batch_axis("avg_pool2d", input, 4)
    kernel, stride, padding, dilation, out_size = _pool_geometry(
        "avg_pool2d", x.shape, kernel_size, stride, padding, 1, ceil_mode)
    xp = x.xp
    n, c, h, w = x.shape
    if divisor_override is not None:
        divisor = x.dtype.type(divisor_override)
    else:
        extents = [_window_extent(*axis, count_include_pad)
                   for axis in zip((h, w), out_size, kernel, stride, padding)]
        divisor = xp.asarray(np.multiply.outer(*extents).astype(x.dtype))
    col = im2col(x.data, kernel, stride, padding, dilation, out_size)
    out = col.sum(axis=(2, 3)) / divisor

    def backward(g):  # every pixel of a window gets grad / divisor: col2im of a broadcast, no copy
        share = xp.broadcast_to((g / divisor)[:, :, None, None], (n, c) + kernel + out_size)
        return (col2im(share, (h, w), stride, padding, dilation),)
    return remove_batch_axis(_result(out, (x,), backward), added)


def _window_extent(size, out, kernel, stride, pad, count_include_pad):
    """Per output position along one axis: how many taps the divisor counts (PyTorch's rule)."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


# --------------------------------------------------------------------- adaptive pooling
def adaptive_avg_pool2d(input, output_size):
    """Mean over PyTorch's adaptive bins: output row i covers input rows floor(i*H/oh) .. ceil((i+1)*H/oh) - 1.

    Same as ``torch.nn.functional.adaptive_avg_pool2d``: ``output_size`` is an int
    or a pair whose ``None`` entries keep the input's size on that axis. The bins of
    both axes are averaging matrices ``A_h`` (oh, H) and ``A_w`` (ow, W), so the
    output is ``A_h @ x @ A_w.T`` and the gradient ``A_h.T @ g @ A_w``.
    """
    x, added = add_batch_axis("adaptive_avg_pool2d", input, 4)
    out_size = _adaptive_output_size("adaptive_avg_pool2d", x.shape, output_size)
    xp = x.xp
    rows, cols = (xp.asarray(_adaptive_mean_matrix(size, out, x.dtype))
                  for size, out in zip(x.shape[2:], out_size))
    out = _matmul(_matmul(rows, x.data), cols.T)   # on every core where the backend threads its products

    def backward(g):
        return (_matmul(_matmul(rows.T, g), cols),)
    return remove_batch_axis(_result(out, (x,), backward), added)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Max over PyTorch's adaptive bins (see ``adaptive_avg_pool2d``); with ``return_indices`` the switches.

    Switches are int64 flat ``h * W + w`` per input plane, as in ``max_pool2d``, and
    ties go to the first element in row-major bin order, as in PyTorch. Bins overlap
    where the size does not divide evenly; their gradients then add at a shared
    switch. Where we differ: a bin holding NaN returns its first NaN's index
    (PyTorch's CPU kernel returns its last).
    """
    x, added = add_batch_axis("adaptive_max_pool2d", input, 4)
    out_size = _adaptive_output_size("adaptive_max_pool2d", x.shape, output_size)
    xp = x.xp
    h, w = x.shape[2:]
    (row_taps, row_overlap), (col_taps, col_overlap) = (_adaptive_taps(size, out)
                                                        for size, out in zip((h, w), out_size))
    # Tap (ky, kx) of output (i, j) is input pixel (row_taps[i, ky], col_taps[j, kx]); short bins
    # repeat their last pixel, which never changes the maximum or the first tap reaching it.
    taps = [x.data[:, :, xp.asarray(row_taps[:, ky])[:, None], xp.asarray(col_taps[:, kx])[None, :]]
            for ky in range(row_taps.shape[1]) for kx in range(col_taps.shape[1])]
    if not taps:  # an output size of 0
        out = xp.zeros(x.shape[:2] + out_size, x.dtype)
        indices = xp.zeros(out.shape, np.int64)
    else:
        out = _tap_maximum(xp, taps)
        tap = _first_tap_reaching(xp, taps, out).astype(np.int64)
        ky, kx = tap // col_taps.shape[1], tap % col_taps.shape[1]
        indices = (xp.asarray(row_taps)[xp.arange(out_size[0])[:, None], ky] * w
                   + xp.asarray(col_taps)[xp.arange(out_size[1])[None, :], kx])
    del taps
    disjoint = not (row_overlap or col_overlap)
    result = _result(out, (x,), lambda g: (_scatter_to_planes(g, indices, (h, w), disjoint),))
    if return_indices:
        return remove_batch_axis(result, added), remove_batch_axis(Tensor._wrap(indices), added)
    return remove_batch_axis(result, added)


def _adaptive_bins(size, out):
    """PyTorch's bin edges along one axis: start floor(i*size/out), end ceil((i+1)*size/out)."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, -((-(i + 1) * size) // out)


def _adaptive_mean_matrix(size, out, dtype):
    """(out, size): row i averages bin i."""
    start, end = _adaptive_bins(size, out)
    pixel = np.arange(size)
    inside = (pixel >= start[:, None]) & (pixel < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


def _adaptive_taps(size, out):
    """(out, longest bin) pixel table, short bins padded with their last pixel; and whether bins overlap."""
    start, end = _adaptive_bins(size, out)
    longest = int((end - start).max()) if out else 0
    taps = np.minimum(start[:, None] + np.arange(longest), end[:, None] - 1)
    return taps, bool((end[:-1] > start[1:]).any())


def _adaptive_output_size(name, shape, output_size):
    """(oh, ow) from an int or a pair; ``None`` keeps the input's size on that axis."""
    if output_size is None or isinstance(output_size, (int, np.integer)):
        sizes = (output_size, output_size)
    else:
        sizes = tuple(output_size)
        if len(sizes) != 2:
            raise ValueError(f"{name}: output_size must be an int or a pair, got {output_size}")
    sizes = tuple(shape[2 + d] if v is None else v for d, v in enumerate(sizes))
    if any(not isinstance(v, (int, np.integer)) or v < 0 for v in sizes):
        raise ValueError(f"{name}: output_size must hold non-negative ints or None, got {output_size}")
    if min(shape[1:]) <= 0:
        raise ValueError(f"{name}: input of shape {tuple(shape)} must have non-zero channels, height and width")
    return tuple(int(v) for v in sizes)


# --------------------------------------------------------------------- shared helpers
def _pool_geometry(name, shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Validated (kernel, stride, padding, dilation, out_size) pairs; stride defaults to kernel_size."""
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride in ((), []) else pair(stride, "stride")
    padding, dilation = pair(padding, "padding"), pair(dilation, "dilation")
    for arg, value in (("kernel_size", kernel), ("stride", stride), ("dilation", dilation)):
        if min(value) <= 0:
            raise ValueError(f"{name}: {arg} must be positive, got {value}")
    if min(padding) < 0:
        raise ValueError(f"{name}: padding must be non-negative, got {padding}")
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"{name}: padding {padding} must be at most half of kernel_size {kernel}")
    out_size = tuple(conv_output_size(shape[2 + d], kernel[d], stride[d], padding[d], dilation[d], ceil_mode)
                     for d in range(2))
    if min(out_size) <= 0:
        raise ValueError(f"{name}: input of shape {tuple(shape)} is too small for kernel_size {kernel} "
                         f"with padding {padding} and dilation {dilation}: output size would be {out_size}")
    return kernel, stride, padding, dilation, out_size


def _lowest(dtype):
    """What padding reads in max-pooling: below every value of ``dtype``."""
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
