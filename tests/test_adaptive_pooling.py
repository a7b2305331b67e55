"""adaptive_avg_pool2d and adaptive_max_pool2d: hand-computed bins, gradchecks, properties, PyTorch parity, errors."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
import minigrad.functional as F
import minigrad.nn as nn
from minigrad.gradcheck import gradcheck
from tests.helpers import distinct_values, require_torch


def T(array, requires_grad=False):
    return mg.Tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


def reference_bins(size, out):
    """PyTorch's documented bin edges, as plain loops: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def reference_adaptive(x, out_size, reduce):
    """Slow loop over every bin; ``reduce`` is np.mean or "max" (first maximum in row-major order)."""
    n, c, h, w = x.shape
    values = np.empty((n, c) + tuple(out_size))
    indices = np.empty((n, c) + tuple(out_size), dtype=np.int64)
    for i, (r0, r1) in enumerate(reference_bins(h, out_size[0])):
        for j, (c0, c1) in enumerate(reference_bins(w, out_size[1])):
            window = x[:, :, r0:r1, c0:c1]
            if reduce == "max":
                flat = window.reshape(n, c, -1)
                best = flat.argmax(axis=2)
                values[:, :, i, j] = flat.max(axis=2)
                indices[:, :, i, j] = (r0 + best // (c1 - c0)) * w + c0 + best % (c1 - c0)
            else:
                values[:, :, i, j] = window.mean(axis=(2, 3))
    return values, indices


# ------------------------------------------------------------------ hand-computed values
def test_bins_overlap_where_the_size_does_not_divide():
    # H = 5 into 3 bins: rows [0, 2), [1, 4), [3, 5)
    x = np.arange(5, dtype=np.float64).reshape(1, 1, 5, 1)
    out = F.adaptive_avg_pool2d(T(x), (3, 1)).numpy()
    np.testing.assert_allclose(out.ravel(), [0.5, 2.0, 3.5])
    values, idx = F.adaptive_max_pool2d(T(-x), (3, 1), return_indices=True)
    np.testing.assert_array_equal(values.numpy().ravel(), [0, -1, -3])
    np.testing.assert_array_equal(idx.numpy().ravel(), [0, 1, 3])


def test_max_gradient_adds_at_a_switch_shared_by_overlapping_bins():
    x = T(np.array([0.0, 9.0, 1.0, 2.0, 3.0]).reshape(1, 1, 5, 1), requires_grad=True)
    out = F.adaptive_max_pool2d(x, (3, 1))  # bins [0,2) and [1,4) both pick row 1
    (out * T(np.array([1.0, 10.0, 100.0]).reshape(1, 1, 3, 1))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy().ravel(), [0, 11, 0, 0, 100])


def test_avg_gradient_by_hand():
    x = T(np.zeros((1, 1, 5, 1)), requires_grad=True)
    F.adaptive_avg_pool2d(x, (3, 1)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy().ravel(), [0.5, 0.5 + 1 / 3, 1 / 3, 1 / 3 + 0.5, 0.5])


def test_ties_go_to_first_in_row_major_bin_order():
    x = np.array([[1, 3], [3, 2]], dtype=np.float64).reshape(1, 1, 2, 2)
    _, idx = F.adaptive_max_pool2d(T(x), 1, return_indices=True)
    assert idx.numpy().ravel().tolist() == [1]


def test_output_larger_than_input_repeats_pixels():
    x = np.array([[1.0, 2.0]]).reshape(1, 1, 1, 2)
    np.testing.assert_array_equal(F.adaptive_avg_pool2d(T(x), (2, 3)).numpy()[0, 0], [[1, 1.5, 2], [1, 1.5, 2]])
    values, idx = F.adaptive_max_pool2d(T(x), (2, 3), return_indices=True)
    np.testing.assert_array_equal(values.numpy()[0, 0], [[1, 2, 2], [1, 2, 2]])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[0, 1, 1], [0, 1, 1]])


def test_none_keeps_an_axis_unbatched_input_and_float32(rng):
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    out = F.adaptive_avg_pool2d(mg.Tensor(x), (None, 2))
    assert out.shape == (3, 6, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), x.reshape(3, 6, 2, 2).mean(axis=3), rtol=1e-6)
    values, idx = F.adaptive_max_pool2d(mg.Tensor(x), 1, return_indices=True)
    assert values.shape == idx.shape == (3, 1, 1) and values.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(values.numpy().ravel(), x.reshape(3, -1).max(axis=1))


def test_zero_output_size_and_empty_batch(rng):
    x = T(rng.standard_normal((2, 3, 5, 7)))
    assert F.adaptive_avg_pool2d(x, (0, 3)).shape == (2, 3, 0, 3)
    assert F.adaptive_max_pool2d(x, (2, 0)).shape == (2, 3, 2, 0)
    assert F.adaptive_avg_pool2d(T(np.zeros((0, 3, 5, 7))), 2).shape == (0, 3, 2, 2)
    assert F.adaptive_max_pool2d(T(np.zeros((0, 3, 5, 7))), 2).shape == (0, 3, 2, 2)


def test_modules():
    x = T(np.arange(16.0).reshape(1, 1, 4, 4))
    np.testing.assert_array_equal(nn.AdaptiveAvgPool2d(1)(x).numpy().ravel(), [7.5])
    values, idx = nn.AdaptiveMaxPool2d((2, None), return_indices=True)(x)
    np.testing.assert_array_equal(values.numpy()[0, 0], [[4, 5, 6, 7], [12, 13, 14, 15]])
    np.testing.assert_array_equal(idx.numpy()[0, 0], [[4, 5, 6, 7], [12, 13, 14, 15]])
    assert nn.AdaptiveMaxPool2d(3)(x).shape == (1, 1, 3, 3)
    assert "output_size=(2, None)" in repr(nn.AdaptiveMaxPool2d((2, None)))


@pytest.mark.parametrize("call, match", [
    (lambda x: F.adaptive_avg_pool2d(x, (1, 2, 3)), "int or a pair"),
    (lambda x: F.adaptive_avg_pool2d(x, -1), "non-negative"),
    (lambda x: F.adaptive_max_pool2d(x, (2.5, 1)), "non-negative ints"),
    (lambda x: F.adaptive_max_pool2d(x[0, 0], 2), "3-D .* or 4-D"),
    (lambda x: F.adaptive_avg_pool2d(x[:, :, :0], 2), "non-zero channels, height and width"),
])
def test_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(T(np.zeros((1, 2, 4, 4))))


# ------------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("shape, output_size", [
    ((2, 2, 5, 7), (3, 4)), ((1, 2, 3, 2), (5, 3)), ((2, 6, 5), (None, 2)), ((1, 1, 4, 6), 1)])
def test_gradcheck(rng, shape, output_size):
    x = T(distinct_values(rng, shape), requires_grad=True)
    gradcheck(lambda t: F.adaptive_avg_pool2d(t, output_size), [x])
    gradcheck(lambda t: F.adaptive_max_pool2d(t, output_size), [x])


# ------------------------------------------------------------------ properties
@given(h=st.integers(1, 7), w=st.integers(1, 7), oh=st.integers(1, 9), ow=st.integers(1, 9),
       seed=st.integers(0, 2 ** 16))
def test_matches_reference_loops_and_gradcheck(h, w, oh, ow, seed):
    x = distinct_values(np.random.default_rng(seed), (1, 2, h, w))
    mean, _ = reference_adaptive(x, (oh, ow), np.mean)
    top, where = reference_adaptive(x, (oh, ow), "max")
    np.testing.assert_allclose(F.adaptive_avg_pool2d(T(x), (oh, ow)).numpy(), mean, rtol=1e-12, atol=1e-15)
    values, idx = F.adaptive_max_pool2d(T(x), (oh, ow), return_indices=True)
    np.testing.assert_array_equal(values.numpy(), top)
    np.testing.assert_array_equal(idx.numpy(), where)
    t = T(x, requires_grad=True)
    gradcheck(lambda a: F.adaptive_avg_pool2d(a, (oh, ow)), [t])
    gradcheck(lambda a: F.adaptive_max_pool2d(a, (oh, ow)), [t])


@given(kh=st.integers(1, 4), kw=st.integers(1, 4), oh=st.integers(1, 4), ow=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
def test_even_bins_equal_fixed_window_pooling(kh, kw, oh, ow, seed):
    """Where kernel sizes divide the input, adaptive pooling is avg_pool2d / max_pool2d with kernel = stride."""
    x = T(distinct_values(np.random.default_rng(seed), (2, 3, kh * oh, kw * ow)), requires_grad=True)
    g = T(np.random.default_rng(seed + 1).standard_normal((2, 3, oh, ow)))
    pairs = [(F.adaptive_avg_pool2d(x, (oh, ow)), F.avg_pool2d(x, (kh, kw)))]
    (a, ia), (b, ib) = F.adaptive_max_pool2d(x, (oh, ow), True), F.max_pool2d(x, (kh, kw), return_indices=True)
    np.testing.assert_array_equal(ia.numpy(), ib.numpy())
    pairs.append((a, b))
    for adaptive, fixed in pairs:
        np.testing.assert_allclose(adaptive.numpy(), fixed.numpy(), rtol=1e-12, atol=1e-15)
        x.grad = None
        (adaptive * g).sum().backward()
        grad_adaptive = x.grad.numpy().copy()
        x.grad = None
        (fixed * g).sum().backward()
        np.testing.assert_allclose(grad_adaptive, x.grad.numpy(), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ PyTorch parity
@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, output_size", [
    ((2, 3, 13, 9), (6, 4)), ((2, 3, 5, 7), (7, 10)), ((3, 8, 8), 3), ((1, 2, 10, 10), (None, 3)),
    ((2, 4, 32, 24), (1, 2)), ((2, 4, 33, 17), 6)])
def test_parity(rng, dtype, shape, output_size):
    torch = require_torch()
    x = distinct_values(rng, shape, dtype)
    g = rng.standard_normal(1).astype(dtype)  # overwritten below per output shape
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        ours = mg.Tensor(x, requires_grad=True)
        theirs = torch.tensor(x, requires_grad=True)
        kwargs = {"return_indices": True} if name == "adaptive_max_pool2d" else {}
        a = getattr(F, name)(ours, output_size, **kwargs)
        b = getattr(torch.nn.functional, name)(theirs, output_size, **kwargs)
        if kwargs:
            (a, ia), (b, ib) = a, b
            np.testing.assert_array_equal(ia.numpy(), ib.numpy())
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), **tol)
        assert a.dtype == dtype
        g = rng.standard_normal(a.shape).astype(dtype)
        (a * mg.Tensor(g)).sum().backward()
        (b * torch.tensor(g)).sum().backward()
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), **tol)
