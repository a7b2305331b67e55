"""max_pool2d, max_unpool2d and avg_pool2d: hand-computed values, gradchecks, properties, PyTorch parity, errors."""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad.gradcheck import gradcheck
from tests.helpers import distinct_values, more_examples, require_torch


def T(array, requires_grad=False):
    return mg.Tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


# ------------------------------------------------------------------ slow, obvious references (loops are fine here)
def _out_len(size, k, s, p, d, ceil_mode):
    """PyTorch's documented output length, written independently of im2col.py."""
    span = (size + 2 * p - d * (k - 1) - 1) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def reference_max_pool(x, k, s, p, d, ceil_mode):
    """PyTorch's CPU loop: only taps inside the input, first maximum wins, index starts at the first tap inside."""
    n, c, h, w = x.shape
    oh, ow = _out_len(h, k[0], s[0], p[0], d[0], ceil_mode), _out_len(w, k[1], s[1], p[1], d[1], ceil_mode)
    values, indices = np.empty((n, c, oh, ow)), np.empty((n, c, oh, ow), dtype=np.int64)
    for y in range(oh):
        for xx in range(ow):
            rows = [r for r in range(y * s[0] - p[0], y * s[0] - p[0] + d[0] * k[0], d[0]) if 0 <= r < h]
            cols = [q for q in range(xx * s[1] - p[1], xx * s[1] - p[1] + d[1] * k[1], d[1]) if 0 <= q < w]
            for b in range(n):
                for ch in range(c):
                    best, where = -np.inf, rows[0] * w + cols[0]
                    for r in rows:
                        for q in cols:
                            if x[b, ch, r, q] > best:
                                best, where = x[b, ch, r, q], r * w + q
                    values[b, ch, y, xx], indices[b, ch, y, xx] = best, where
    return values, indices


def reference_avg_pool(x, k, s, p, ceil_mode, count_include_pad, divisor_override):
    n, c, h, w = x.shape
    oh, ow = _out_len(h, k[0], s[0], p[0], 1, ceil_mode), _out_len(w, k[1], s[1], p[1], 1, ceil_mode)
    out = np.empty((n, c, oh, ow))
    for y in range(oh):
        for xx in range(ow):
            y0, x0 = y * s[0] - p[0], xx * s[1] - p[1]
            y1, x1 = min(y0 + k[0], h + p[0]), min(x0 + k[1], w + p[1])
            pool_size = (y1 - y0) * (x1 - x0)
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
            divisor = divisor_override or (pool_size if count_include_pad else (y1 - y0) * (x1 - x0))
            out[:, :, y, xx] = x[:, :, y0:y1, x0:x1].sum(axis=(2, 3)) / divisor
    return out


# ------------------------------------------------------------------ hand-computed values
def test_max_pool_2x2_values_and_switches():
    x = np.array([[1, 5, 2, 0],
                  [3, 4, 8, 6],
                  [9, 0, 1, 2],
                  [7, 8, 3, 4]], dtype=np.float64).reshape(1, 1, 4, 4)
    out, idx = F.max_pool2d(T(x), 2, return_indices=True)
    np.testing.assert_array_equal(out.numpy()[0, 0], [[5, 8], [9, 4]])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[1, 6], [8, 15]])
    assert idx.dtype == np.int64 and out.dtype == np.float64


def test_max_pool_padding_is_minus_infinity():
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)  # all negative: zero padding would win
    out, idx = F.max_pool2d(T(x), 3, stride=2, padding=1, return_indices=True)
    # windows cover rows/cols {0,1}, {1,2}: their maxima are the top-left-most entries
    np.testing.assert_array_equal(out.numpy()[0, 0], [[-1, -2], [-4, -5]])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[0, 1], [3, 4]])


def test_max_pool_ceil_mode_keeps_partial_window_and_drops_one_in_padding():
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    out, idx = F.max_pool2d(T(x), 2, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(out.numpy()[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    assert F.max_pool2d(T(x), 2).shape == (1, 1, 2, 2)
    # H=3, k=2, s=2, p=1: ceil would give 3 windows, but the third would start in the right padding
    small = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    out, idx = F.max_pool2d(T(small), 2, stride=2, padding=1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(out.numpy()[0, 0], [[0, 2], [6, 8]])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[0, 2], [6, 8]])


def test_max_pool_dilation():
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)[:, :, ::-1].copy()  # max at the top row
    out, idx = F.max_pool2d(T(x), 2, stride=1, dilation=3, return_indices=True)
    # window (y, x) reads rows {y, y+3}, cols {x, x+3}; with rows reversed the top row is larger
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[3, 4], [8, 9]])
    np.testing.assert_array_equal(out.numpy()[0, 0], x[0, 0].ravel()[[[3, 4], [8, 9]]])


def test_max_pool_ties_go_to_first_in_row_major_window_order():
    x = np.ones((1, 1, 4, 4))
    _, idx = F.max_pool2d(T(x), 3, stride=1, padding=1, return_indices=True)
    expected = [[max(y - 1, 0) * 4 + max(q - 1, 0) for q in range(4)] for y in range(4)]
    np.testing.assert_array_equal(idx.numpy()[0, 0], expected)


def test_max_pool_all_minus_inf_window_points_at_its_first_input_pixel():
    x = np.full((1, 1, 3, 3), -np.inf)
    out, idx = F.max_pool2d(T(x), 2, stride=2, padding=1, return_indices=True)
    assert np.all(out.numpy() == -np.inf)
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[0, 1], [3, 4]])  # what PyTorch reports


def test_max_pool_window_with_nan_returns_nan_at_its_first_nan():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan  # two NaNs in the top-left window, the first at tap 1
    x[0, 0, 3, 3] = np.nan                  # the bottom-right window's last tap
    out, idx = F.max_pool2d(T(x), 2, return_indices=True)
    assert np.isnan(out.numpy()[0, 0, 0, 0]) and np.isnan(out.numpy()[0, 0, 1, 1])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[1, 7], [13, 15]])
    np.testing.assert_array_equal(out.numpy()[0, 0, [0, 1], [1, 0]], [7, 13])


def test_max_pool_window_of_more_than_255_taps_matches_reference():
    # switches come from a per-window tap number: uint8 up to 255 taps, int64 beyond
    x = distinct_values(np.random.default_rng(3), (1, 2, 3, 310))
    out, idx = F.max_pool2d(T(x), (1, 300), stride=(1, 5), return_indices=True)
    ref_out, ref_idx = reference_max_pool(x, (1, 300), (1, 5), (0, 0), (1, 1), False)
    np.testing.assert_array_equal(out.numpy(), ref_out)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)


def test_max_pool_unbatched_input():
    x = distinct_values(np.random.default_rng(1), (2, 4, 4))
    out, idx = F.max_pool2d(T(x), 2, return_indices=True)
    ref, ref_idx = reference_max_pool(x[None], (2, 2), (2, 2), (0, 0), (1, 1), False)
    assert out.shape == idx.shape == (2, 2, 2)
    np.testing.assert_array_equal(out.numpy(), ref[0])
    np.testing.assert_array_equal(idx.numpy(), ref_idx[0])


def test_max_pool_gradient_by_hand_with_shared_switch():
    # overlapping windows (k=2, s=1) that all pick the centre 9: its gradient is the sum of the four
    x = np.array([[1, 2, 3], [4, 9, 5], [6, 7, 8]], dtype=np.float64).reshape(1, 1, 3, 3)
    xt = T(x, requires_grad=True)
    out = F.max_pool2d(xt, 2, stride=1)
    out.backward(np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2))
    expected = np.zeros((3, 3))
    expected[1, 1] = 10.0
    np.testing.assert_array_equal(xt.grad.numpy()[0, 0], expected)


# stride >= kernel, yet the dilated windows (span (k - 1) * d + 1 > stride) share pixels that are their maxima
SHARED_DILATED_MAXIMUM = [
    # input, kwargs, upstream, expected input gradient (by hand: each window's upstream lands on its maximum)
    ([[0, 1, 9, 2, 3]], dict(kernel_size=(1, 2), stride=(1, 2), dilation=(1, 2)), [[1, 10]], [[0, 0, 11, 0, 0]]),
    ([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 99, 12, 13], [14, 15, 16, 17, 18], [19, 20, 21, 22, 23]],
     dict(kernel_size=2, stride=2, dilation=2), [[1, 10], [100, 1000]],
     [[0] * 5, [0] * 5, [0, 0, 1111, 0, 0], [0] * 5, [0] * 5]),
    ([[5, 0, 9, 2, 3, 4]], dict(kernel_size=(1, 2), stride=(1, 3), dilation=(1, 3), padding=(0, 1)), [[1, 10]],
     [[0, 0, 11, 0, 0, 0]]),
]


@pytest.mark.parametrize("x, kwargs, upstream, expected", SHARED_DILATED_MAXIMUM)
def test_max_pool_gradient_by_hand_dilated_windows_share_a_maximum(x, kwargs, upstream, expected):
    xt = T(np.array(x)[None, None], requires_grad=True)
    out = F.max_pool2d(xt, **kwargs)
    out.backward(np.array(upstream, dtype=np.float64)[None, None])
    np.testing.assert_array_equal(xt.grad.numpy()[0, 0], expected)


@pytest.mark.torch
@pytest.mark.parametrize("x, kwargs, upstream, expected", SHARED_DILATED_MAXIMUM)
def test_max_pool_gradient_dilated_windows_share_a_maximum_like_pytorch(x, kwargs, upstream, expected):
    torch = require_torch()
    ours = T(np.array(x)[None, None], requires_grad=True)
    theirs = torch.tensor(np.array(x, dtype=np.float64)[None, None], requires_grad=True)
    F.max_pool2d(ours, **kwargs).backward(np.array(upstream, dtype=np.float64)[None, None])
    torch.nn.functional.max_pool2d(theirs, **kwargs).backward(torch.tensor(upstream, dtype=torch.float64)[None, None])
    np.testing.assert_array_equal(ours.grad.numpy(), theirs.grad.numpy())


def test_max_unpool_places_values_and_zeros():
    values = T([[[[5.0, 8.0], [9.0, 4.0]]]])
    indices = mg.Tensor(np.array([[[[1, 6], [8, 15]]]]))
    out = F.max_unpool2d(values, indices, 2)
    expected = np.zeros(16)
    expected[[1, 6, 8, 15]] = [5, 8, 9, 4]
    np.testing.assert_array_equal(out.numpy().ravel(), expected)
    # output_size as a 4-entry shape (like x.shape) and a 2-entry size give the same (5, 5) planes
    big = F.max_unpool2d(values, indices, 2, output_size=(1, 1, 5, 5))
    assert big.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(big.numpy(), F.max_unpool2d(values, indices, 2, output_size=(5, 5)).numpy())
    assert big.numpy().ravel()[15] == 4.0 and big.numpy().sum() == 26.0


def test_max_unpool_adds_values_sharing_a_switch_and_gathers_gradients():
    # overlapping windows (kernel 3, stride 2): values sharing a switch add, as the max-pool gradient does
    values = T([[[[1.0, 2.0, 3.0]]]], requires_grad=True)
    indices = mg.Tensor(np.array([[[[1, 1, 4]]]]))
    out = F.max_unpool2d(values, indices, (1, 3), stride=(1, 2), output_size=(1, 6))
    np.testing.assert_array_equal(out.numpy().ravel(), [0, 3, 0, 0, 3, 0])
    out.backward(np.arange(6, dtype=np.float64).reshape(1, 1, 1, 6))
    np.testing.assert_array_equal(values.grad.numpy().ravel(), [1, 1, 4])


def test_max_unpool_with_disjoint_windows_keeps_one_of_colliding_values_like_pytorch():
    # max-pooling over disjoint windows never yields colliding switches; hand-made ones keep the last (PyTorch CPU too)
    values = T([[[[1.0, 2.0, 3.0]]]])
    out = F.max_unpool2d(values, mg.Tensor(np.array([[[[1, 1, 4]]]])), (1, 2), output_size=(1, 6))
    np.testing.assert_array_equal(out.numpy().ravel(), [0, 2, 0, 0, 3, 0])


def test_max_unpool_default_size_and_unbatched():
    x = distinct_values(np.random.default_rng(2), (3, 5, 5))
    pooled, idx = F.max_pool2d(T(x), 3, stride=2, padding=1, return_indices=True)
    out = F.max_unpool2d(pooled, idx, 3, stride=2, padding=1)
    assert pooled.shape == (3, 3, 3) and out.shape == (3, 5, 5)  # (3 - 1) * 2 + 3 - 2 * 1 = 5
    expected = np.zeros((3, 25))
    for ch, switches in enumerate(idx.numpy().reshape(3, -1)):  # overlapping windows may share a switch
        np.add.at(expected[ch], switches, x[ch].ravel()[switches])
    np.testing.assert_array_equal(out.numpy(), expected.reshape(3, 5, 5))


def test_avg_pool_divisors_by_hand():
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    # k=2, s=2, p=1: windows {pad,0} x {pad,0}, {pad,0} x {1,2}, ...
    include = F.avg_pool2d(T(x), 2, stride=2, padding=1).numpy()[0, 0]
    np.testing.assert_allclose(include, [[1 / 4, (2 + 3) / 4], [(4 + 7) / 4, (5 + 6 + 8 + 9) / 4]])
    exclude = F.avg_pool2d(T(x), 2, stride=2, padding=1, count_include_pad=False).numpy()[0, 0]
    np.testing.assert_allclose(exclude, [[1, 5 / 2], [11 / 2, 28 / 4]])
    override = F.avg_pool2d(T(x), 2, stride=2, padding=1, divisor_override=3).numpy()[0, 0]
    np.testing.assert_allclose(override, [[1 / 3, 5 / 3], [11 / 3, 28 / 3]])


def test_avg_pool_ceil_mode_window_past_the_padding():
    # W=4, k=3, s=2, p=1, ceil: windows start at -1, 1, 3; the last covers {3, pad, beyond}
    x = np.array([[1.0, 2.0, 4.0, 8.0]]).reshape(1, 1, 1, 4)
    out = F.avg_pool2d(T(x), (1, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True).numpy().ravel()
    # count_include_pad: divide by the part inside input + padding: 3, 3, then 2 (pixel 3 and one pad)
    np.testing.assert_allclose(out, [(1 + 2) / 3, (2 + 4 + 8) / 3, 8 / 2])
    out = F.avg_pool2d(T(x), (1, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True,
                       count_include_pad=False).numpy().ravel()
    np.testing.assert_allclose(out, [(1 + 2) / 2, (2 + 4 + 8) / 3, 8 / 1])


def test_avg_pool_float32_stays_float32():
    x = mg.Tensor(np.ones((1, 2, 4, 4), dtype=np.float32), requires_grad=True)
    out = F.avg_pool2d(x, 2, padding=1, count_include_pad=False)
    out.sum().backward()
    assert out.dtype == np.float32 and x.grad.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), 1.0)


# ------------------------------------------------------------------ gradchecks
MAX_POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=2, stride=1),  # overlapping windows: gradients add
]


@pytest.mark.parametrize("kwargs", MAX_POOL_CASES)
def test_max_pool_gradcheck(kwargs):
    x = T(distinct_values(np.random.default_rng(3), (2, 2, 6, 7)), requires_grad=True)
    assert gradcheck(lambda t: F.max_pool2d(t, **kwargs), [x])


AVG_POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=1, padding=(1, 1), divisor_override=5),
]


@pytest.mark.parametrize("kwargs", AVG_POOL_CASES)
def test_avg_pool_gradcheck(kwargs):
    x = T(np.random.default_rng(4).standard_normal((2, 2, 6, 7)), requires_grad=True)
    assert gradcheck(lambda t: F.avg_pool2d(t, **kwargs), [x])


def test_max_unpool_gradcheck():
    rng = np.random.default_rng(5)
    x = distinct_values(rng, (2, 2, 6, 7))
    pooled, idx = F.max_pool2d(T(x), 3, stride=2, padding=1, ceil_mode=True, return_indices=True)
    values = T(rng.standard_normal(pooled.shape), requires_grad=True)
    assert gradcheck(lambda v: F.max_unpool2d(v, idx, 3, stride=2, padding=1, output_size=(6, 7)), [values])


# ------------------------------------------------------------------ properties
@st.composite
def pool_geometry(draw, dilations=True, non_overlapping=False):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    if non_overlapping:
        stride = tuple(draw(st.integers(k, k + 2)) for k in kernel)
    else:
        stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilations else (1, 1)
    ceil_mode = draw(st.booleans())
    size = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + size
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        assume(n + 2 * p >= d * (k - 1) + 1)  # at least one window
        out = _out_len(n, k, s, p, d, ceil_mode)
        # every window must touch the input (dilated windows can skip over it entirely)
        assume(all(any(0 <= o * s - p + i * d < n for i in range(k)) for o in range(out)))
    return shape, dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)


@more_examples(3)  # 40 derandomized examples missed windows that share a dilated maximum
@given(pool_geometry(), st.integers(0, 2**16))
def test_max_pool_matches_reference_and_gradcheck(geometry, seed):
    shape, kwargs = geometry
    x = distinct_values(np.random.default_rng(seed), shape)
    out, idx = F.max_pool2d(T(x), return_indices=True, **kwargs)
    ref, ref_idx = reference_max_pool(x, *(kwargs[k] for k in ("kernel_size", "stride", "padding", "dilation",
                                                               "ceil_mode")))
    np.testing.assert_array_equal(out.numpy(), ref)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    assert gradcheck(lambda t: F.max_pool2d(t, **kwargs), [T(x, requires_grad=True)])


@more_examples(3)
@given(pool_geometry(), st.integers(0, 2**16))
def test_unpool_of_pool_keeps_window_maxima_at_their_switches(geometry, seed):
    shape, kwargs = geometry
    x = distinct_values(np.random.default_rng(seed), shape)
    out, idx = F.max_pool2d(T(x), return_indices=True, **kwargs)
    # the effective (dilated) kernel makes (H, W) an allowed output_size
    k, s, p, d = kwargs["kernel_size"], kwargs["stride"], kwargs["padding"], kwargs["dilation"]
    span = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    unpooled = F.max_unpool2d(out, idx, span, stride=s, padding=p, output_size=shape[2:]).numpy()
    planes, switches = x.reshape(shape[0] * shape[1], -1), idx.numpy().reshape(shape[0] * shape[1], -1)
    expected = np.zeros_like(planes)
    for plane in range(planes.shape[0]):  # a switch chosen by m windows holds m times its maximum
        np.add.at(expected[plane], switches[plane], planes[plane, switches[plane]])
    np.testing.assert_array_equal(unpooled.reshape(expected.shape), expected)
    assert gradcheck(lambda v: F.max_unpool2d(v, idx, span, stride=s, padding=p, output_size=shape[2:]),
                     [T(out.numpy(), requires_grad=True)])


@given(pool_geometry(dilations=False, non_overlapping=True), st.integers(0, 2**16))
def test_non_overlapping_max_pool_gradient_is_unpooling(geometry, seed):
    shape, kwargs = geometry
    rng = np.random.default_rng(seed)
    x = T(distinct_values(rng, shape), requires_grad=True)
    out, idx = F.max_pool2d(x, return_indices=True, **kwargs)
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    unpooled = F.max_unpool2d(T(upstream), idx, kwargs["kernel_size"], stride=kwargs["stride"],
                              padding=kwargs["padding"], output_size=shape[2:])
    np.testing.assert_array_equal(x.grad.numpy(), unpooled.numpy())


@given(pool_geometry(dilations=False), st.booleans(), st.sampled_from([None, 1, 3]), st.integers(0, 2**16))
def test_avg_pool_matches_reference_and_gradcheck(geometry, count_include_pad, divisor_override, seed):
    shape, kwargs = geometry
    del kwargs["dilation"]
    x = np.random.default_rng(seed).standard_normal(shape)
    kwargs.update(count_include_pad=count_include_pad, divisor_override=divisor_override)
    out = F.avg_pool2d(T(x), **kwargs)
    ref = reference_avg_pool(x, kwargs["kernel_size"], kwargs["stride"], kwargs["padding"], kwargs["ceil_mode"],
                             count_include_pad, divisor_override)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda t: F.avg_pool2d(t, **kwargs), [T(x, requires_grad=True)])


# ------------------------------------------------------------------ parity with PyTorch
PARITY_MAX = MAX_POOL_CASES + [
    dict(kernel_size=3, stride=3, padding=1, dilation=2, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True),
    dict(kernel_size=1, stride=2),
]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", PARITY_MAX)
def test_max_pool_and_unpool_parity(kwargs, dtype):
    torch = require_torch()
    rng = np.random.default_rng(6)
    x = distinct_values(rng, (2, 3, 9, 8)).astype(dtype)
    ours = mg.Tensor(x, requires_grad=True)
    theirs = torch.tensor(x, requires_grad=True)
    out, idx = F.max_pool2d(ours, return_indices=True, **kwargs)
    t_out, t_idx = torch.nn.functional.max_pool2d(theirs, return_indices=True, **kwargs)
    np.testing.assert_array_equal(out.numpy(), t_out.detach().numpy())
    np.testing.assert_array_equal(idx.numpy(), t_idx.numpy())
    upstream = rng.standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    t_out.backward(torch.tensor(upstream))
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-6, atol=1e-6)
    if kwargs.get("dilation", 1) == 1 and kwargs.get("stride", kwargs["kernel_size"]) == kwargs["kernel_size"]:
        # non-overlapping windows: every switch is unique, so PyTorch's unpool agrees with ours
        values = rng.standard_normal(out.shape).astype(dtype)
        size = dict(output_size=x.shape[2:])
        got = F.max_unpool2d(mg.Tensor(values), idx, kwargs["kernel_size"], padding=kwargs.get("padding", 0), **size)
        want = torch.nn.functional.max_unpool2d(torch.tensor(values), t_idx, kwargs["kernel_size"],
                                                padding=kwargs.get("padding", 0), **size)
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.torch
def test_max_unpool_parity_with_gradient():
    torch = require_torch()
    rng = np.random.default_rng(7)
    x = distinct_values(rng, (2, 3, 7, 9))
    _, idx = F.max_pool2d(T(x), 2, return_indices=True)  # 3x4 windows, unique switches
    values = rng.standard_normal(idx.shape)
    ours, theirs = T(values, requires_grad=True), torch.tensor(values, requires_grad=True)
    out = F.max_unpool2d(ours, idx, 2, output_size=(7, 9))
    t_out = torch.nn.functional.max_unpool2d(theirs, torch.tensor(idx.numpy()), 2, output_size=(7, 9))
    np.testing.assert_array_equal(out.numpy(), t_out.detach().numpy())
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    t_out.backward(torch.tensor(upstream))
    np.testing.assert_array_equal(ours.grad.numpy(), theirs.grad.numpy())


PARITY_AVG = AVG_POOL_CASES + [
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=2),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True, count_include_pad=False),
    dict(kernel_size=4, stride=3, padding=2, ceil_mode=True),
    dict(kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=False),
]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", PARITY_AVG)
def test_avg_pool_parity(kwargs, dtype):
    torch = require_torch()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    ours, theirs = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out = F.avg_pool2d(ours, **kwargs)
    t_out = torch.nn.functional.avg_pool2d(theirs, **kwargs)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), rtol=tol, atol=tol)
    upstream = rng.standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    t_out.backward(torch.tensor(upstream))
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=tol, atol=tol)


# ------------------------------------------------------------------ errors
X4 = np.zeros((1, 1, 4, 4))


@pytest.mark.parametrize("call, match", [
    (lambda: F.max_pool2d(T(np.zeros((4, 4))), 2), r"3-D \(C, H, W\) or 4-D .* got shape \(4, 4\)"),
    (lambda: F.avg_pool2d(T(np.zeros((1, 1, 1, 4, 4))), 2), r"avg_pool2d: input must be 3-D .* \(1, 1, 1, 4, 4\)"),
    (lambda: F.max_pool2d(T(X4), 2, padding=2), r"padding \(2, 2\) must be at most half of kernel_size \(2, 2\)"),
    (lambda: F.avg_pool2d(T(X4), 3, padding=(0, 2)), r"padding \(0, 2\) must be at most half"),
    (lambda: F.max_pool2d(T(X4), 5), r"input of shape \(1, 1, 4, 4\) is too small for kernel_size \(5, 5\)"),
    (lambda: F.avg_pool2d(T(X4), (2, 7), padding=1), r"too small for kernel_size \(2, 7\)"),
    (lambda: F.max_pool2d(T(X4), 3, dilation=2), r"too small .* dilation \(2, 2\)"),
    (lambda: F.max_pool2d(T(X4), 0), r"kernel_size must be positive, got \(0, 0\)"),
    (lambda: F.max_pool2d(T(X4), 2, stride=(1, 0)), r"stride must be positive, got \(1, 0\)"),
    (lambda: F.max_pool2d(T(X4), 2, dilation=0), r"dilation must be positive"),
    (lambda: F.avg_pool2d(T(X4), 2, padding=-1), r"padding must be non-negative, got \(-1, -1\)"),
    (lambda: F.max_pool2d(T(X4), (2, 2, 2)), r"kernel_size must be an int or a pair"),
    (lambda: F.max_pool2d(T(np.zeros((1, 1, 2, 2))), 2, stride=1, padding=1, dilation=3),
     r"window at output height 0 covers no input pixel"),
    (lambda: F.avg_pool2d(T(X4), 2, divisor_override=0), r"divisor_override must not be zero"),
])
def test_pooling_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _pooled():
    x = distinct_values(np.random.default_rng(9), (1, 2, 4, 4))
    return F.max_pool2d(T(x), 2, return_indices=True)


@pytest.mark.parametrize("call, match", [
    (lambda v, i: F.max_unpool2d(v, i[:, :1], 2), r"indices must have the shape of input \(1, 2, 2, 2\), got \(1, 1, 2, 2\)"),
    (lambda v, i: F.max_unpool2d(v, mg.Tensor(i.numpy().astype(np.float64)), 2), r"indices must be integers"),
    (lambda v, i: F.max_unpool2d(v, i, 2, output_size=(4, 4, 4)), r"output_size must have 2 or 4 entries"),
    (lambda v, i: F.max_unpool2d(v, i, 2, output_size=(2, 4)), r"height must lie strictly between 2 and 6"),
    (lambda v, i: F.max_unpool2d(v, i, 2, output_size=(1, 2, 4, 6)), r"width must lie strictly between 2 and 6"),
    (lambda v, i: F.max_unpool2d(v, i, 1, padding=1), r"output size \(0, 0\) must be positive"),
    (lambda v, i: F.max_unpool2d(T(np.zeros((2, 2))), i, 2), r"3-D \(C, H, W\) or 4-D"),
])
def test_unpool_value_errors(call, match):
    values, indices = _pooled()
    with pytest.raises(ValueError, match=match):
        call(values, indices)


@pytest.mark.parametrize("bad", [-1, 16])
def test_unpool_index_out_of_range(bad):
    values, indices = _pooled()
    switches = indices.numpy()
    switches[0, 1, 1, 0] = bad
    with pytest.raises(IndexError, match=rf"indices must lie in \[0, 16\) for output planes of size \(4, 4\); "
                                         rf"1 do not, e.g. {bad} at \(0, 1, 1, 0\)"):
        F.max_unpool2d(values, mg.Tensor(switches), 2)
