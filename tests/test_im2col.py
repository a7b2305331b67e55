"""Convolution geometry: output sizes, im2col and its adjoint col2im."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigrad import kernels
from minigrad.functional.im2col import (col2im, col2im_wide, conv_output_size, conv_transpose_output_size, im2col,
                                        pair, wide_width, window_view)
from tests.helpers import more_examples, require_torch


# ---------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("args, expected", [
    ((5, 3, 1, 0), 3),
    ((5, 3, 2, 1), 3),
    ((7, 3, 2, 0, 2), 2),       # dilated kernel spans 5: windows start at 0 and 2
    ((6, 3, 2, 0), 2),          # floor drops the partial window
    ((2, 5, 1, 0), 0),          # kernel larger than the input
])
def test_conv_output_size_by_hand(args, expected):
    assert conv_output_size(*args) == expected


def test_conv_output_size_ceil_mode_by_hand():
    assert conv_output_size(6, 3, 2, 0, ceil_mode=True) == 3     # last window hangs over the edge
    assert conv_output_size(5, 2, 2, 0, ceil_mode=True) == 3
    # the last window would start in the right padding only: PyTorch drops it
    assert conv_output_size(2, 2, 3, 1, ceil_mode=True) == 1


def test_conv_transpose_output_size_by_hand():
    assert conv_transpose_output_size(3, 3, 2, 1, 1, 1) == 6   # (3-1)*2 - 2 + 2 + 1 + 1
    assert conv_transpose_output_size(2, 3, 2, 0) == 5
    assert conv_transpose_output_size(4, 2, 1, 0, 0, 3) == 7   # 3 steps + a dilated kernel spanning 4


def test_pair():
    assert pair(3) == (3, 3)
    assert pair((1, 2)) == (1, 2)
    with pytest.raises(ValueError, match="stride"):
        pair((1, 2, 3), "stride")


@pytest.mark.torch
def test_output_sizes_match_torch_pooling_and_conv():
    torch = require_torch()
    for size in range(1, 9):
        for kernel in range(1, 4):
            for stride in range(1, 4):
                for padding in range(0, kernel // 2 + 1):
                    for ceil_mode in (False, True):
                        expected = torch.nn.functional.max_pool2d(
                            torch.zeros(1, 1, size, 1), (kernel, 1), (stride, 1), (padding, 0),
                            ceil_mode=ceil_mode).shape[2] if size + 2 * padding >= kernel else 0
                        assert conv_output_size(size, kernel, stride, padding, 1, ceil_mode) == expected, \
                            (size, kernel, stride, padding, ceil_mode)


# ---------------------------------------------------------------------------- im2col / col2im by hand
def test_im2col_by_hand():
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    col = im2col(x, (2, 2), (1, 1), (0, 0), (1, 1), (2, 2))
    assert col.shape == (1, 1, 2, 2, 2, 2) and col.flags.c_contiguous
    # tap (i, j) at output (y, x) reads x[y + i, x + j]
    np.testing.assert_array_equal(col[0, 0, 0, 0], [[1, 2], [4, 5]])
    np.testing.assert_array_equal(col[0, 0, 1, 1], [[5, 6], [8, 9]])
    np.testing.assert_array_equal(col[0, 0, 0, 1], [[2, 3], [5, 6]])


def test_im2col_padding_stride_and_pad_value_by_hand():
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    col = im2col(x, (3, 3), (2, 2), (1, 1), (1, 1), (2, 2), pad_value=-np.inf)
    np.testing.assert_array_equal(col[0, 0, 0, 0], [[-np.inf, -np.inf], [-np.inf, 5]])
    np.testing.assert_array_equal(col[0, 0, 1, 1], [[1, 3], [7, 9]])   # centre tap: x[2y, 2x]
    np.testing.assert_array_equal(col[0, 0, 2, 2], [[5, -np.inf], [-np.inf, -np.inf]])


def test_im2col_dilation_by_hand():
    x = np.arange(1.0, 6.0).reshape(1, 1, 1, 5)
    col = im2col(x, (1, 2), (1, 1), (0, 0), (1, 2), (1, 3))
    np.testing.assert_array_equal(col[0, 0, 0, 0, 0], [1, 2, 3])
    np.testing.assert_array_equal(col[0, 0, 0, 1, 0], [3, 4, 5])


def test_col2im_counts_overlaps_by_hand():
    col = np.ones((1, 1, 3, 3, 3, 3))
    counts = col2im(col, (3, 3), (1, 1), (1, 1), (1, 1))
    np.testing.assert_array_equal(counts[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])


def test_col2im_out_adds_in_place():
    col = np.ones((1, 1, 2, 2, 2, 2))
    out = np.full((1, 1, 3, 3), 10.0)
    result = col2im(col, (3, 3), (1, 1), (0, 0), (1, 1), out=out)
    assert result is out
    np.testing.assert_array_equal(out[0, 0], [[11, 12, 11], [12, 14, 12], [11, 12, 11]])


def test_float32_stays_float32():
    x = np.ones((1, 2, 4, 4), np.float32)
    col = im2col(x, (3, 3), (1, 1), (1, 1), (1, 1), (4, 4))
    assert col.dtype == np.float32
    assert col2im(col, (4, 4), (1, 1), (1, 1), (1, 1)).dtype == np.float32


# ---------------------------------------------------------------------------- adjointness and torch
@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 7))
    out = (conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw))
    return dict(kernel_size=(kh, kw), stride=(sh, sw), pad_before=(ph, pw), dilation=(dh, dw),
                out_size=out, input_size=(h, w))


@more_examples(5)
@given(geometries(), st.integers(0, 2 ** 31))
def test_col2im_is_the_adjoint_of_im2col(geom, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2) + geom["input_size"])
    col = im2col(x, geom["kernel_size"], geom["stride"], geom["pad_before"], geom["dilation"], geom["out_size"])
    c = rng.standard_normal(col.shape)
    back = col2im(c, geom["input_size"], geom["stride"], geom["pad_before"], geom["dilation"])
    assert back.shape == x.shape
    np.testing.assert_allclose((col * c).sum(), (x * back).sum(), rtol=1e-10, atol=1e-10)


@given(geometries(), st.integers(0, 2 ** 31), st.integers(0, 2))
def test_col2im_wide_matches_col2im_for_stride_1(geom, seed, extra_width):
    """Wide columns: rows padded with zeros to the image pitch; the result must not change."""
    rng = np.random.default_rng(seed)
    (h, w), (oh, ow), (kh, kw) = geom["input_size"], geom["out_size"], geom["kernel_size"]
    pad, dil = geom["pad_before"], geom["dilation"]
    oh, ow = oh + extra_width % 2, ow + extra_width // 2   # also column sides larger than the conv's
    col = rng.standard_normal((2, 3, kh, kw, oh, ow))
    pitch = wide_width(w, ow, kw, pad[1], dil[1])
    wide = np.zeros(col.shape[:5] + (pitch,))
    wide[..., :ow] = col
    np.testing.assert_allclose(col2im_wide(wide, (h, w), pad, dil), col2im(col, (h, w), (1, 1), pad, dil),
                               rtol=1e-12, atol=1e-12)


@given(geometries(), st.integers(0, 2 ** 31))
def test_col2im_by_phase_matches_tap_by_tap(geom, seed):
    """Both col2im paths on the same columns (the phase path is taken only without dilation)."""
    from minigrad.functional import im2col as module
    rng = np.random.default_rng(seed)
    col = rng.standard_normal((2, 3) + geom["kernel_size"] + geom["out_size"])
    args = (col, geom["input_size"], geom["stride"], geom["pad_before"], (1, 1))
    previous = module._PHASE_MIN_TAPS_PER_BLOCK
    try:
        with kernels.disabled():   # two rules of the generic code
            module._PHASE_MIN_TAPS_PER_BLOCK = 0
            by_phase = col2im(*args)
            module._PHASE_MIN_TAPS_PER_BLOCK = 10 ** 9
            by_tap = col2im(*args)
    finally:
        module._PHASE_MIN_TAPS_PER_BLOCK = previous
    np.testing.assert_allclose(by_phase, by_tap, rtol=1e-12, atol=1e-12)


def test_col2im_large_kernel_goes_by_phase_by_hand(monkeypatch):
    from minigrad.functional import im2col as module
    calls = []
    original = module._col2im_by_phase
    monkeypatch.setattr(module, "_col2im_by_phase", lambda *a: calls.append(1) or original(*a))
    # kernel 17x17 stride 9: 289 taps in 4 blocks; two windows side by side
    col = np.zeros((1, 1, 17, 17, 1, 2))
    col[..., 0], col[..., 1] = 1.0, 2.0
    with kernels.disabled():   # the generic code's rule (the CPU kernel has no phases)
        out = col2im(col, (17, 26), (9, 9), (0, 0), (1, 1))
    assert calls == [1]
    expected_row = [1.0] * 9 + [3.0] * 8 + [2.0] * 9   # columns 9..16 lie in both windows
    np.testing.assert_array_equal(out[0, 0], np.tile(expected_row, (17, 1)))


def test_col2im_wide_by_hand():
    col = np.zeros((1, 1, 1, 2, 2, 4))        # kernel 1x2, output 2x2, pitch 4 (two zero columns)
    col[..., :2] = [[1, 2], [3, 4]]
    out = col2im_wide(col, (2, 3), (0, 0), (1, 1))
    np.testing.assert_array_equal(out[0, 0], [[1, 3, 2], [3, 7, 4]])   # taps (0,0) and (0,1) overlap


@pytest.mark.torch
@more_examples(5)
@given(geometries(), st.integers(0, 2 ** 31))
def test_im2col_and_col2im_match_torch_unfold_and_fold(geom, seed):
    torch = require_torch()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3) + geom["input_size"])
    kernel, stride, pad, dil = geom["kernel_size"], geom["stride"], geom["pad_before"], geom["dilation"]
    col = im2col(x, kernel, stride, pad, dil, geom["out_size"])
    unfold = torch.nn.functional.unfold(torch.tensor(x), kernel, dil, pad, stride).numpy()
    np.testing.assert_allclose(col.reshape(unfold.shape), unfold, rtol=0, atol=0)
    c = rng.standard_normal(col.shape)
    folded = torch.nn.functional.fold(torch.tensor(c.reshape(unfold.shape)), geom["input_size"],
                                      kernel, dil, pad, stride).numpy()
    np.testing.assert_allclose(col2im(c, geom["input_size"], stride, pad, dil), folded, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- right padding, stride != dilation
# The last window needs right (bottom) padding and stride and dilation differ: a size formula with
# the two swapped pads too little, and the strided view then reads past its buffer. Random draws
# reach such geometries only now and then; these cases are checked every run.
RIGHT_PADDED = [  # kernel, stride, padding, dilation, input size
    ((1, 3), (1, 2), (0, 1), (1, 1), (1, 7)),
    ((3, 1), (2, 1), (1, 0), (1, 1), (7, 2)),
    ((2, 3), (3, 2), (1, 1), (2, 1), (6, 7)),
    ((1, 2), (1, 1), (0, 1), (1, 3), (2, 6)),
]


def test_im2col_right_padding_with_stride_2_by_hand():
    x = np.arange(1.0, 8.0).reshape(1, 1, 1, 7)
    col = im2col(x, (1, 3), (1, 2), (0, 1), (1, 1), (1, 4), pad_value=-1.0)
    # padded row: -1 1 2 3 4 5 6 7 -1; the windows start at 0, 2, 4 and 6
    np.testing.assert_array_equal(col[0, 0, 0, :, 0], [[-1, 2, 4, 6], [1, 3, 5, 7], [2, 4, 6, -1]])
    counts = col2im(np.ones_like(col), (1, 7), (1, 2), (0, 1), (1, 1))
    np.testing.assert_array_equal(counts[0, 0, 0], [1, 2, 1, 2, 1, 2, 1])


def _buffer_of(view):
    while not (isinstance(view, np.ndarray) and view.flags.owndata):
        view = view.base
    return view


def _byte_range(array):
    """First and one-past-last byte an array with non-negative strides can read."""
    start = array.__array_interface__["data"][0]
    return start, start + sum((n - 1) * s for n, s in zip(array.shape, array.strides)) + array.itemsize


def _loop_im2col(x, kernel, stride, padding, dilation, out_size, pad_value):
    """col[n, c, i, j, y, x] = x_pad[n, c, y*sh + i*dh, x*sw + j*dw], one element at a time."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out_size
    n, c, h, w = x.shape
    col = np.empty((n, c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            for y in range(oh):
                for q in range(ow):
                    r, s = y * sh + i * dh - ph, q * sw + j * dw - pw
                    col[:, :, i, j, y, q] = x[:, :, r, s] if 0 <= r < h and 0 <= s < w else pad_value
    return col


@pytest.mark.parametrize("kernel, stride, padding, dilation, size", RIGHT_PADDED)
def test_im2col_right_padding_with_stride_unlike_dilation(kernel, stride, padding, dilation, size):
    out_size = tuple(conv_output_size(*axis) for axis in zip(size, kernel, stride, padding, dilation))
    x = np.random.default_rng(0).standard_normal((2, 3) + size)
    windows = window_view(x, kernel, stride, padding, dilation, out_size, pad_value=7.5)
    low, high = _byte_range(windows)
    buffer_low, buffer_high = _byte_range(_buffer_of(windows))
    assert buffer_low <= low and high <= buffer_high, "the window view reads outside its buffer"
    expected = _loop_im2col(x, kernel, stride, padding, dilation, out_size, 7.5)
    np.testing.assert_array_equal(im2col(x, kernel, stride, padding, dilation, out_size, pad_value=7.5), expected)
    c = np.random.default_rng(1).standard_normal(expected.shape)
    back = col2im(c, size, stride, padding, dilation)
    np.testing.assert_allclose((expected * c)[expected != 7.5].sum(), (x * back).sum(), rtol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize("kernel, stride, padding, dilation, size", RIGHT_PADDED)
def test_im2col_right_padding_with_stride_unlike_dilation_matches_torch(kernel, stride, padding, dilation, size):
    torch = require_torch()
    out_size = tuple(conv_output_size(*axis) for axis in zip(size, kernel, stride, padding, dilation))
    x = np.random.default_rng(2).standard_normal((2, 3) + size)
    unfold = torch.nn.functional.unfold(torch.tensor(x), kernel, dilation, padding, stride).numpy()
    col = im2col(x, kernel, stride, padding, dilation, out_size)
    np.testing.assert_array_equal(col.reshape(unfold.shape), unfold)
    c = np.random.default_rng(3).standard_normal(col.shape)
    folded = torch.nn.functional.fold(torch.tensor(c.reshape(unfold.shape)), size, kernel, dilation, padding,
                                      stride).numpy()
    np.testing.assert_allclose(col2im(c, size, stride, padding, dilation), folded, rtol=1e-12, atol=1e-12)


@more_examples(5)
@given(geometries())
def test_window_view_reads_only_its_buffer(geom):
    x = np.zeros((2, 3) + geom["input_size"])
    windows = window_view(x, geom["kernel_size"], geom["stride"], geom["pad_before"], geom["dilation"],
                          geom["out_size"])
    low, high = _byte_range(windows)
    buffer_low, buffer_high = _byte_range(_buffer_of(windows))
    assert buffer_low <= low and high <= buffer_high
