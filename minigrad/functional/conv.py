"""2-D convolution and transposed convolution: im2col + one matrix product per group.

The two ops are adjoints of each other, and each is written once on arrays:

* ``_conv_array``: im2col, then weight (g, O/g, C/g*kh*kw) @ columns (N, g, C/g*kh*kw, OH*OW),
  which is already NCHW output (N, O, OH, OW), no transpose.
* ``_conv_transpose_array``: weight^T @ input, then col2im (one strided add per kernel tap;
  for stride 1 usually ``col2im_wide``, one flat add per tap).
* ``_conv_weight_grad``: columns of the image side times the gradient of the column side.

conv2d's input gradient *is* ``_conv_transpose_array``, conv_transpose2d's input
gradient *is* ``_conv_array``, and both weight gradients are ``_conv_weight_grad``,
so <conv2d(x, W), y> = <x, conv_transpose2d(y, W)> holds by construction.

Memory and speed: the column array is C*kh*kw times bigger than the image. It is
built in tiles of at most ``set_im2col_budget`` bytes (but at least one output row of
one sample): a few batch elements at a time, or a block of output rows of one element
when one element is too big. Results are identical. The budget is per device:
* CPU, 4 MiB: small tiles are faster than one big array: they stay in cache and under
  malloc's mmap threshold (a 75 MB column array costs ~20 ms of page faults alone);
  measured 15-30% faster forward+backward than 256 MiB on (8, 64, 64, 64) 3x3, one thread.
* GPU, 256 MiB: every tile costs kernel launches and a product too small to fill the
  GPU; at 4 MiB, VGG conv1_2 on (2, 64, 128, 128) took 7x longer than in one piece
  (H200). 256 MiB keeps whole samples of the 224x224 nets in one tile.

Fast paths (``minigrad.kernels``, switched off by ``MINIGRAD_CUDA_KERNELS=0`` /
``MINIGRAD_CPU_KERNELS=0``): im2col and col2im kernels (one pass over the columns, on
every core on the CPU). On the CPU each thread takes whole tiles (im2col, product, col2im
one after the other, ``kernels.spread``), and a stride-1 convolution needs no columns at all: it
is kh*kw products over shifted views of the padded image (``kernels.cpu.conv2d_taps``; its
input gradient is the same with the flipped weight). On a GPU the products go through cuBLAS (``kernels.matmul``):
one strided-batched call per group for all samples of a tile, the weight shared (batch
stride 0) and read transposed in place for the input gradient; the weight gradient is one
long product over columns built with the batch folded in, accumulated into the result in
place (beta=1). A 1x1 conv's columns are the input itself.

Where we differ from PyTorch: bad arguments raise ValueError (PyTorch: RuntimeError);
no cuDNN-style algorithm choice, the result is deterministic on CPU.
"""
import operator
import threading
from collections import namedtuple

import numpy as np

from .. import kernels
from ..backend import device_of, get_array_module, normalize_device
from ..tensor import Tensor, _result
from .batch_axis import add_batch_axis, remove_batch_axis
from .im2col import (col2im, col2im_wide, conv_output_size, conv_transpose_output_size, im2col, pair, wide_width,
                     window_view)

# CPU: 16 MiB was no faster and raised the nets' peak memory by 5-13 MB. GPU: see the docstring.
_im2col_budgets = {"cpu": 4 * 2 ** 20, "gpu": 256 * 2 ** 20}
_workspaces = threading.local()


def set_im2col_budget(nbytes, device="cpu"):
    """Largest column array (bytes) built at once on ``device``; returns the previous budget."""
    device = normalize_device(device)
    if int(nbytes) < 1:
        raise ValueError(f"set_im2col_budget: nbytes must be >= 1, got {nbytes}")
    previous, _im2col_budgets[device] = _im2col_budgets[device], int(nbytes)
    return previous


def get_im2col_budget(device="cpu"):
    return _im2col_budgets[normalize_device(device)]


def _budget(array):
    return _im2col_budgets[device_of(array)]


# Geometry of a convolution from its image side (N, C, H, W) to its column side (N, O, OH, OW).
# conv2d reads it forward; conv_transpose2d reads it backward (its input is the column side).
_Geometry = namedtuple("_Geometry", "kernel stride pad_before dilation groups image_size column_size")


# ---------------------------------------------------------------------------- public ops
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution, as ``torch.nn.functional.conv2d``.

    input (N, C, H, W) or unbatched (C, H, W); weight (O, C/groups, kh, kw); bias (O,).
    ``padding`` is an int, a pair, 'valid' or 'same' ('same' needs stride 1; an odd
    total padding puts the extra pixel bottom/right, as PyTorch does).
    """
    x, added = add_batch_axis("conv2d", input, 4)
    _check_operands("conv2d", x, weight, bias)
    geom = _conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    _check_bias("conv2d", bias, weight.shape[0])
    out = _conv_array(x.data, weight.data, geom, None if bias is None else bias.data)

    def backward(g):
        return (_conv_transpose_array(g, weight.data, geom) if x.requires_grad else None,
                _conv_weight_grad(x.data, g, geom) if weight.requires_grad else None,
                *_bias_grad(g, bias))
    result = _result(out, _parents(x, weight, bias), backward)
    return remove_batch_axis(result, added)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    input (N, C_in, H, W) or unbatched; weight (C_in, C_out/groups, kh, kw); bias (C_out,).
    The output has size (H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1.
    It is the input gradient of ``conv2d`` with the same weight: a product with the
    transposed weight, then col2im. String padding is not accepted (as in PyTorch).
    """
    x, added = add_batch_axis("conv_transpose2d", input, 4)
    _check_operands("conv_transpose2d", x, weight, bias)
    geom = _conv_transpose_geometry(x.shape, weight.shape, stride, padding, output_padding, dilation, groups)
    _check_bias("conv_transpose2d", bias, weight.shape[1] * groups)
    out = _conv_transpose_array(x.data, weight.data, geom)
    if bias is not None:
        out += bias.data.reshape(1, -1, 1, 1)

    def backward(g):
        return (_conv_array(g, weight.data, geom) if x.requires_grad else None,
                _conv_weight_grad(g, x.data, geom) if weight.requires_grad else None,
                *_bias_grad(g, bias))
    result = _result(out, _parents(x, weight, bias), backward)
    return remove_batch_axis(result, added)


def _parents(x, weight, bias):
    return (x, weight) if bias is None else (x, weight, bias)


def _bias_grad(g, bias):
    if bias is None:
        return ()
    if not bias.requires_grad:
        return (None,)
    fast = kernels.get("channel_sums", g)   # batch norm's per-channel sums, on every core
    return (fast(g)[0] if fast is not None else g.sum(axis=(0, 2, 3)),)


# ---------------------------------------------------------------------------- the array kernels
def _conv_array(x, w, geom, bias=None):
    """Image side (N, C, H, W) -> column side (N, O, OH, OW): im2col, then one product per group (+ bias)."""
    taps = _by_taps(w, geom, w.shape[1], w.shape[0])
    if taps is not None:
        return taps(x, w, geom.pad_before, _pad_after(geom), geom.dilation, bias)
    windows = _by_windows(w, geom, "conv2d_windows")
    if windows is not None:
        return windows(x, w, geom.stride, geom.pad_before, geom.dilation, geom.column_size, bias)
    xp = get_array_module(w)
    n, c = x.shape[:2]
    o, g = w.shape[0], geom.groups
    out = xp.empty((n, o) + tuple(geom.column_size), dtype=w.dtype)
    w_mat = w.reshape(g, o // g, -1)

    def work(tiles):
        for batch, rows, window, tile in tiles:
            samples = batch.stop - batch.start
            if _fold_batch(samples, o // g, tile):   # one product for all samples (weight read once)
                product = _matmul(w_mat, _folded_columns(x[batch, :, window], tile), None)   # (g, O/g, S*P)
                target = out[batch, :, rows]
                target[...] = product.reshape((o, samples) + target.shape[2:]).transpose(1, 0, 2, 3)
                target = target.reshape(samples, g, o // g, -1)
            else:
                col = _columns(x[batch, :, window], tile, workspace=True)
                # a block of whole output rows is contiguous per channel, so this reshape is a view
                target = out[batch, :, rows].reshape(samples, g, o // g, -1)
                _matmul(w_mat, col, target)
            if bias is not None:   # while the tile is in cache
                target += bias.reshape(1, g, o // g, 1)
    cost = out.size * w_mat.shape[2]
    kernels.spread(work, _tiles(n, c, geom, w.dtype, _budget(w), _parts(w, cost)), like=w, cost=cost)
    return out


def _conv_transpose_array(y, w, geom):
    """Column side (N, O, OH, OW) -> image side (N, C, H, W): weight^T @ y, then col2im."""
    taps = _by_taps(w, geom, w.shape[0], w.shape[0])
    if taps is not None:
        # for stride 1 this is a convolution of y with the flipped, transposed weight
        before, after = _flipped_padding(geom)
        if min(before + after) >= 0:   # (padding beyond the kernel's reach: im2col below)
            return taps(y, w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1], before, after, geom.dilation)
    windows = _by_windows(w, geom, "conv2d_windows_input_grad")
    if windows is not None:
        return windows(y, w, geom.stride, geom.pad_before, geom.dilation, geom.image_size)
    xp = get_array_module(w)
    n, o = y.shape[:2]
    g = geom.groups
    c = w.shape[1] * g
    out = xp.zeros((n, c) + tuple(geom.image_size), dtype=w.dtype)
    w_mat = w.reshape(g, o // g, -1)
    wide = kernels.get("col2im", w) is None  # a col2im kernel needs no wide rows

    def work(tiles):
        for batch, rows, window, tile in tiles:
            y_tile = y[batch, :, rows]
            samples = y_tile.shape[0]
            if _fold_batch(samples, o // g, tile):   # one product for all samples (weight read once)
                y_folded = xp.ascontiguousarray(y_tile.transpose(1, 0, 2, 3)).reshape(g, o // g, -1)
                col = _workspace(w, (g, w_mat.shape[2], y_folded.shape[2]))   # None on a GPU: a new array
                col = _matmul(w_mat, y_folded, col, transpose_a=True)   # (g, C/g*kh*kw, S*P)
                col = col.reshape((c,) + tile.kernel + (samples,) + y_tile.shape[2:]).transpose(3, 0, 1, 2, 4, 5)
                col2im(col, tile.image_size, tile.stride, tile.pad_before, tile.dilation, out=out[batch, :, window])
                continue
            pitch = _wide_pitch(tile, o // g) if wide else None
            if pitch:   # zero-pad the rows to the image's pitch: contiguous adds in col2im_wide
                y_tile = _pad_right(y_tile, pitch)
            y_mat = y_tile.reshape(samples, g, o // g, -1)
            col = _workspace(w, (samples, g, w_mat.shape[2], y_mat.shape[3]))
            col = _matmul(w_mat, y_mat, col, transpose_a=True)
            col = col.reshape((samples, c) + tile.kernel + y_tile.shape[2:])
            # tiles of neighbouring rows overlap in the image: col2im adds into ``out``
            if pitch:
                col2im_wide(col, tile.image_size, tile.pad_before, tile.dilation, out=out[batch, :, window])
            else:
                col2im(col, tile.image_size, tile.stride, tile.pad_before, tile.dilation, out=out[batch, :, window])
    cost = y.size * w_mat.shape[2]
    tiles = _tiles(n, c, geom, w.dtype, _budget(w), _parts(w, cost))
    # the row blocks of one sample overlap in the image: they stay in one share
    kernels.spread(work, tiles, like=w, keys=[batch.start for batch, *_ in tiles], cost=cost)
    return out


def _wide_pitch(tile, channels_per_group):
    """Row pitch for ``col2im_wide`` when it pays off, else None (strided ``col2im``).

    Only for stride 1, and only without a col2im kernel. Padding the rows costs
    (pitch - OW) / OW more matrix product, which grows with the channels; the flat adds
    save ~0.6 ns per column entry. Measured on OpenBLAS: a win for (8, 64, 64, 64)
    64->64 (ratio 2), a loss for (2, 512, 28, 28) 512->512 (ratio 36).
    """
    if tile.stride != (1, 1):
        return None
    ow = tile.column_size[1]
    pitch = wide_width(tile.image_size[1], ow, tile.kernel[1], tile.pad_before[1], tile.dilation[1])
    return pitch if channels_per_group * (pitch - ow) <= 16 * ow else None


def _pad_right(y, width):
    """``y`` (N, C, H, W) with zero columns appended up to ``width``."""
    if y.shape[3] == width:
        return y
    padded = get_array_module(y).zeros(y.shape[:3] + (width,), dtype=y.dtype)
    padded[..., :y.shape[3]] = y
    return padded


# How each device builds the weight gradient. GPU: always with the batch folded into one long
# product per group, added into the result in place by cuBLAS. CPU: folded only where a
# per-sample product would write weight-sized partial sums (more output channels than positions),
# and with tiles that may grow to 4x the weight (see ``_conv_weight_grad``).
_ALWAYS_FOLD = {"cpu": False, "gpu": True}


def _conv_weight_grad(x, gy, geom):
    """d<conv(x, W), gy>/dW, shape (O, C/g, kh, kw): gy @ columns(x)^T summed over the batch.

    Each tile's product has the tile's positions as its inner dimension and writes a
    weight-sized partial sum, so the CPU's tiles may grow to 4x the weight's size (inner
    dimension >= 4 O), up to 16x the im2col budget: conv4_3's (2, 512, 16, 16) gradient
    took 88 ms in 14-row tiles of one sample, 45 ms in one tile (one product of the same
    FLOPs: 30 ms).
    """
    if _by_taps(x, geom, x.shape[1], gy.shape[1]) is not None:
        return kernels.get("conv2d_taps_weight_grad", x)(x, gy, geom.kernel, geom.pad_before, _pad_after(geom),
                                                          geom.dilation)
    windows = _by_windows(x, geom, "conv2d_windows_weight_grad")
    if windows is not None:
        return windows(x, gy, geom.kernel, geom.stride, geom.pad_before, geom.dilation)
    xp = get_array_module(x)
    device = device_of(x)
    n, c = x.shape[:2]
    o, g = gy.shape[1], geom.groups
    kh, kw = geom.kernel
    shape = (g, o // g, (c // g) * kh * kw)
    budget = _budget(x)
    if not _ALWAYS_FOLD[device]:
        budget = min(max(budget, 4 * np.prod(shape) * x.dtype.itemsize), 16 * budget)
    # Each share sums its tiles into its own weight-sized partial sum: worth it where the shares'
    # products are long (positions >> output channels) and the partial sums small. Otherwise one
    # share, each product split over the threads by columns. Measured at 2 threads: (8, 32, 64, 64)
    # 32->16 12.2 -> 9.0 ms with shares; (8, 256, 4, 4) 256->256 6.4 -> 8.8 ms (so: not there).
    cost = gy.size * shape[2]
    parts = _parts(x, cost)
    if n * geom.column_size[0] * geom.column_size[1] < 8 * parts * o or \
            np.prod(shape) * x.dtype.itemsize > _MAX_PARTIAL_BYTES:
        parts = 1

    def work(tiles):
        gw = xp.zeros(shape, dtype=x.dtype)
        for batch, rows, window, tile in tiles:
            gy_tile = gy[batch, :, rows]
            samples = gy_tile.shape[0]
            # Few positions per sample (fc layers, deep maps): one product per sample would
            # build a per-sample weight-sized result first (32 MB for a 1024x1024 fc7 on 8
            # images); fold the batch into the product's inner dimension instead.
            if _ALWAYS_FOLD[device] or _fold_batch(samples, o // g, tile):
                col = _folded_columns(x[batch, :, window], tile)  # built folded: no second copy
                gy_mat = xp.ascontiguousarray(gy_tile.transpose(1, 0, 2, 3)).reshape(g, o // g, -1)
                _matmul(gy_mat, col, gw, transpose_b=True, accumulate=True)
                continue
            col = _columns(x[batch, :, window], tile, workspace=True)
            gy_mat = gy_tile.reshape(samples, g, o // g, -1)
            gw += _matmul(gy_mat, col, None, transpose_b=True).sum(axis=0)   # per sample, then summed
        return gw
    partials = kernels.spread(work, _tiles(n, c, geom, x.dtype, budget, parts), like=x, cost=cost)
    gw = partials[0]
    for partial in partials[1:]:   # in share order: the same sum for the same thread count
        gw += partial
    return gw.reshape(o, c // g, kh, kw)


def _fold_batch(samples, channels_per_group, tile):
    """Whether a tile's product should take all its samples at once: when each sample has fewer
    positions than output channels (fc layers, deep maps), per-sample products are thin (8 products
    of 1024 x 1024 by 1024 x 4 for FCN's fc7 on 2x2 maps) and read the weight once per sample."""
    return samples > 1 and channels_per_group > tile.column_size[0] * tile.column_size[1]


def _by_taps(like, geom, inner, outputs):
    """The CPU's stride-1 convolution without columns (``kernels.cpu.conv2d_taps``), where it pays.

    Its products run over each sample's padded plane, (OH + dilation*(kh-1) + 1) rows of
    OW + dilation*(kw-1), and drop what falls outside the output: not where that is over 2.5 times
    the output (small maps, large dilations), where im2col's columns hold only real positions
    ((8, 512, 2, 2) 512->512 forward+backward at one thread: 28 ms by im2col, 60 ms by taps), nor
    for 1x1 kernels (their columns are the image already), nor where the products' ``inner``
    dimension (the input channels of the convolution computed) is under 16: each tap's product then
    does a few multiply-adds per output it reads and writes (VGG conv1_1, 3 -> 64 channels at
    128x128, 2 threads: 3.3x PyTorch's time by taps). Measured where it pays, one thread:
    (8, 64, 8, 8) 64->128 10.6 -> 7.2 ms, (8, 128, 16, 16) 128->64 33.4 -> 22.4 ms.

    The padded plane's extra positions cost products in proportion to ``outputs`` (the output
    channels of the forward convolution), while im2col's copy per multiply-add shrinks as
    1/outputs: so not where (padded plane / output - 1) * outputs > 128. Measured at 2 threads,
    forward + both gradients, im2col / taps: (2, 512, 8, 8) 512->512 (0.72 * 512) 24.7 / 53.0 ms,
    (2, 512, 16, 16) (0.34 * 512) 82.6 / 94.1 ms; kept by taps: (8, 256, 8, 8) 256->128 (0.72 *
    128) 17.0 / 14.9 ms, (2, 256, 32, 32) 256->256 (0.16 * 256) 88.1 / 76.9 ms, (8, 32, 32, 32)
    32->32 13.3 / 7.1 ms.
    """
    if geom.stride != (1, 1) or geom.groups != 1 or geom.kernel == (1, 1) or inner < 16:
        return None
    (oh, ow), (dh, dw), (kh, kw) = geom.column_size, geom.dilation, geom.kernel
    padded = (oh + dh * (kh - 1) + 1) * (ow + dw * (kw - 1))
    if 2 * padded > 5 * oh * ow or (padded - oh * ow) * outputs > 128 * oh * ow:
        return None
    return kernels.get("conv2d_taps", like)


def _by_windows(like, geom, name):
    """The CPU's convolution through window rows (``kernels.cpu.conv2d_windows`` and its two gradients,
    ``name``) where the kernel is at least four times as wide as the output (FCN's upsampling layers:
    32x32 kernels on 4x4 maps), ungrouped. There the column-major product (C*kh*kw, positions) is long
    and thin and col2im/im2col read it across; position-major rows keep both contiguous. Measured on
    FCN-16s's upsampling (8, 21, 4, 4) -> (8, 21, 64, 64), forward + input gradient: 25.1 -> 8.8 ms at
    two threads (PyTorch 13.9), 12.0 ms at one (PyTorch 27.9); training steps at two threads: FCN-16s
    0.90x, FCN-32s 0.86x the time (benchmarks/README.md, "Issue 12, third pass")."""
    if geom.groups != 1 or 4 * geom.column_size[1] > geom.kernel[1]:
        return None
    return kernels.get(name, like)


def _pad_after(geom):
    """(bottom, right) padding of a stride-1 geometry, from its sizes."""
    return tuple(out + d * (k - 1) - size - before for out, d, k, size, before in
                 zip(geom.column_size, geom.dilation, geom.kernel, geom.image_size, geom.pad_before))


def _flipped_padding(geom):
    """(before, after) padding of the stride-1 convolution that maps the column side back to the image side."""
    extent = [d * (k - 1) for d, k in zip(geom.dilation, geom.kernel)]
    return (tuple(e - p for e, p in zip(extent, geom.pad_before)),
            tuple(e - p for e, p in zip(extent, _pad_after(geom))))


# Largest weight gradient summed in one partial per thread (else the tiles run in one share,
# each product split over the threads): fc6 of the full-width FCNs is 411 MB.
_MAX_PARTIAL_BYTES = 64 * 2 ** 20


def _parts(like, cost):
    """How many shares ``kernels.spread`` runs at once on ``like``'s backend for work of ``cost``
    multiply-adds (the CPU kernels: one per thread, one for small work); the tiles are cut to match."""
    count = kernels.get("share_count", like)
    return 1 if count is None else count(cost)


def _matmul(a, b, out, transpose_a=False, transpose_b=False, accumulate=False):
    """out = op(a) @ op(b) (+ out if ``accumulate``), batched as ``numpy.matmul``; returns ``out``.

    a: the weight, (g, m, k) one matrix per group; b: (batch, g, k, n) or (g, k, n).
    ``out`` may be None (then a new array). Fast path: ``kernels.matmul`` (cuBLAS on a GPU,
    reading the weight transposed in place). The generic forms keep NumPy on BLAS: a transposed
    view as the *right* operand of a stacked product makes NumPy leave BLAS (3-120x slower
    measured), so ``a @ b^T`` is computed as ``(b @ a^T)^T``.
    """
    fast = kernels.get("matmul", a)
    if fast is not None:
        if out is None:
            xp = get_array_module(a)
            m = a.shape[-1] if transpose_a else a.shape[-2]
            k = b.shape[-2] if transpose_b else b.shape[-1]
            out = xp.empty(b.shape[:-2] + (m, k), dtype=a.dtype)
        return fast(a, b, out, transpose_a, transpose_b, accumulate)
    return generic_matmul(a, b, out, transpose_a, transpose_b, accumulate)


def generic_matmul(a, b, out, transpose_a=False, transpose_b=False, accumulate=False):
    """``_matmul``'s generic code on any array module (also what each share of the CPU kernel runs)."""
    xp = get_array_module(a)
    if transpose_a:
        a = a.swapaxes(-1, -2)
    if transpose_b:
        product = xp.matmul(b, a.swapaxes(-1, -2)).swapaxes(-1, -2)
    elif accumulate or out is None:
        product = xp.matmul(a, b)
    else:
        return xp.matmul(a, b, out=out)
    if out is None:
        return product
    if accumulate:
        out += product
    else:
        out[...] = product
    return out


def _folded_columns(x, geom):
    """im2col with the batch folded into the positions: (g, C/g*kh*kw, N*OH*OW) (CPU: in the workspace)."""
    xp = get_array_module(x)
    n = x.shape[0]
    positions = geom.column_size[0] * geom.column_size[1]
    fast = kernels.get("im2col", x)
    if fast is not None:
        shape = (x.shape[1],) + tuple(geom.kernel) + (n,) + tuple(geom.column_size)
        col = fast(x, geom.kernel, geom.stride, geom.pad_before, geom.dilation, geom.column_size, 0.0,
                   out=_workspace(x, shape), folded=True)
    else:
        windows = window_view(x, geom.kernel, geom.stride, geom.pad_before, geom.dilation, geom.column_size)
        folded = windows.transpose(1, 2, 3, 0, 4, 5)  # (C, kh, kw, N, OH, OW)
        col = _workspace(x, folded.shape)
        if col is None:
            col = xp.ascontiguousarray(folded)
        else:
            xp.copyto(col, folded)
    return col.reshape(geom.groups, -1, n * positions)


def _columns(x, geom, workspace=False):
    """im2col of ``x`` as (N, g, C/g*kh*kw, OH*OW): the right operand of the per-group product.

    ``workspace``: build it in the shared column workspace (valid until the next tile).
    """
    shape = (x.shape[0], geom.groups, (x.shape[1] // geom.groups) * geom.kernel[0] * geom.kernel[1],
             geom.column_size[0] * geom.column_size[1])
    if _is_pointwise(geom):  # a 1x1 conv's columns are the image itself
        return x.reshape(shape)
    out = _workspace(x, shape) if workspace else None
    col = im2col(x, geom.kernel, geom.stride, geom.pad_before, geom.dilation, geom.column_size, out=out)
    return col.reshape(shape)


def _is_pointwise(geom):
    """1x1 kernel, stride 1, no padding: every column is one input pixel, in place."""
    return (geom.kernel == (1, 1) and geom.stride == (1, 1) and geom.pad_before == (0, 0)
            and tuple(geom.column_size) == tuple(geom.image_size))


def _workspace(like, shape):
    """A C-contiguous array of ``shape`` and ``like``'s dtype in a buffer reused by every tile of every conv.

    CPU only (None for a GPU array: CuPy's memory pool already reuses device memory).
    Column tiles are the largest temporaries; allocated afresh, each one above glibc's
    mmap threshold is mapped and page-faulted in again (measured: a (8, 32, 32, 32)
    3x3 forward took 11.4 ms that way, 3.5 ms with the memory reused). The buffer lives
    per thread and per dtype and grows to the largest tile seen (the im2col budget, up to
    16x that for weight gradients, or one output row of one sample if that is bigger); it
    is only valid until the next tile: callers use it at once and never keep it.
    """
    if device_of(like) != "cpu":
        return None
    size = int(np.prod(shape))
    buffers = getattr(_workspaces, "buffers", None)
    if buffers is None:
        buffers = _workspaces.buffers = {}
    dtype = np.dtype(like.dtype)
    buffer = buffers.get(dtype)
    if buffer is None or buffer.size < size:
        buffer = buffers[dtype] = np.empty(size, dtype=dtype)
    return buffer[:size].reshape(shape)


def _tiles(n, image_channels, geom, dtype, budget, parts=1):
    """(batch slice, output-row slice, input-row slice, tile geometry) for columns within ``budget`` bytes.

    Several whole samples per tile when one sample's columns fit (but at least ``parts``
    tiles when there are that many samples); otherwise one sample at a time, a block of
    output rows at a time (large feature maps).
    """
    kh, kw = geom.kernel
    oh, ow = geom.column_size
    per_row = image_channels * kh * kw * ow * dtype.itemsize
    if per_row * oh <= budget:
        step = min(n, budget // (per_row * oh), -(-n // parts))
        return [(slice(lo, min(lo + step, n)), slice(0, oh), slice(0, geom.image_size[0]), geom)
                for lo in range(0, n, step)]
    step = max(1, budget // per_row)
    row_blocks = [_row_block(geom, slice(lo, min(lo + step, oh))) for lo in range(0, oh, step)]
    return [(slice(i, i + 1),) + block for i in range(n) for block in row_blocks]


def _row_block(geom, rows):
    """(rows, the input rows they read, their geometry): padding at the top only for the first block."""
    (sh, _), (pt, pl), (dh, _) = geom.stride, geom.pad_before, geom.dilation
    first = rows.start * sh - pt                           # first row read, in input coordinates
    last = (rows.stop - 1) * sh - pt + dh * (geom.kernel[0] - 1)
    lo = min(max(first, 0), geom.image_size[0])
    hi = max(min(last + 1, geom.image_size[0]), lo)
    tile = geom._replace(pad_before=(lo - first, pl), image_size=(hi - lo, geom.image_size[1]),
                         column_size=(rows.stop - rows.start, geom.column_size[1]))
    return rows, slice(lo, hi), tile


# ---------------------------------------------------------------------------- argument checks
def _check_operands(op, x, weight, bias):
    if not isinstance(weight, Tensor):
        raise ValueError(f"{op}: weight must be a Tensor, got {type(weight).__name__}")
    if weight.ndim != 4:
        raise ValueError(f"{op}: weight must be 4-D (out, in/groups, kh, kw), got shape {weight.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{op}: input is on device {x.device} but {name} is on device {t.device} "
                             f"(input shape {x.shape}, {name} shape {t.shape})")
        if t.dtype != x.dtype:
            raise ValueError(f"{op}: input has dtype {x.dtype} but {name} has dtype {t.dtype} "
                             f"(input shape {x.shape}, {name} shape {t.shape})")
    if x.dtype.kind != "f":
        raise ValueError(f"{op}: input must be floating point, got dtype {x.dtype}")


def _check_bias(op, bias, channels):
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"{op}: bias must have shape ({channels},) (one per output channel), got {bias.shape}")


def _positive_pair(value, name, op, minimum=1):
    try:
        result = pair(value, name)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    if min(result) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return result


def _check_groups(op, groups, in_channels, out_channels, in_name, out_name):
    try:
        groups = operator.index(groups)
    except TypeError:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}") from None
    if groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    for name, count in ((in_name, in_channels), (out_name, out_channels)):
        if count % groups:
            raise ValueError(f"{op}: groups={groups} must divide the {name} ({count})")
    return groups


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    op = "conv2d"
    n, c, h, w = x_shape
    o, c_per_group, kh, kw = w_shape
    stride = _positive_pair(stride, "stride", op)
    dilation = _positive_pair(dilation, "dilation", op)
    groups = _check_groups(op, groups, c, o, "input channels", "output channels of weight")
    if c_per_group * groups != c:
        raise ValueError(f"{op}: input has {c} channels but weight {tuple(w_shape)} with groups={groups} "
                         f"expects {c_per_group * groups} (weight.shape[1] * groups)")
    pad_before, pad_after = _conv_padding(padding, (kh, kw), stride, dilation)
    padded = (h + pad_before[0] + pad_after[0], w + pad_before[1] + pad_after[1])
    out_size = tuple(conv_output_size(size, k, s, 0, d) for size, k, s, d in zip(padded, (kh, kw), stride, dilation))
    if min(out_size) < 1:
        raise ValueError(f"{op}: kernel {(kh, kw)} with dilation {dilation} is larger than the padded input: "
                         f"input {(h, w)}, padding {padding!r}, output would be {out_size}")
    return _Geometry((kh, kw), stride, pad_before, dilation, groups, (h, w), out_size)


def _conv_padding(padding, kernel, stride, dilation):
    """(top, left), (bottom, right) padding from an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"conv2d: padding='same' needs stride 1, got stride {stride}")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        before = tuple(t // 2 for t in totals)
        return before, tuple(t - b for t, b in zip(totals, before))
    pad = _positive_pair(padding, "padding", "conv2d", minimum=0)
    return pad, pad


def _conv_transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation, groups):
    op = "conv_transpose2d"
    n, c_in, h, w = x_shape
    w_in, c_out_per_group, kh, kw = w_shape
    stride = _positive_pair(stride, "stride", op)
    dilation = _positive_pair(dilation, "dilation", op)
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding must be an int or a pair of ints (no 'same'/'valid'), got {padding!r}")
    padding = _positive_pair(padding, "padding", op, minimum=0)
    output_padding = _positive_pair(output_padding, "output_padding", op, minimum=0)
    groups = _check_groups(op, groups, c_in, w_in, "input channels", "weight.shape[0]")
    if w_in != c_in:
        raise ValueError(f"{op}: input has {c_in} channels but weight {tuple(w_shape)} expects {w_in} "
                         f"(weight.shape[0] is the input channels)")
    for op_, s, d in zip(output_padding, stride, dilation):
        if op_ >= s and op_ >= d:
            raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride {stride} "
                             f"or dilation {dilation}")
    out_size = tuple(conv_transpose_output_size(size, k, s, p, op_, d)
                     for size, k, s, p, op_, d in zip((h, w), (kh, kw), stride, padding, output_padding, dilation))
    if min(out_size) < 1:
        raise ValueError(f"{op}: output size {out_size} is not positive: input {(h, w)}, kernel {(kh, kw)}, "
                         f"stride {stride}, padding {padding}, dilation {dilation}")
    return _Geometry((kh, kw), stride, padding, dilation, groups, out_size, (h, w))
