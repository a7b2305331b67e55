"""interpolate: hand-computed values, gradchecks, properties, PyTorch parity, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigrad as mg
import minigrad.functional as F
from minigrad.gradcheck import gradcheck
from tests.helpers import require_torch


def T(array, requires_grad=False, dtype=np.float64):
    return mg.Tensor(np.asarray(array, dtype=dtype), requires_grad=requires_grad)


ROW = np.array([[[[1.0, 5.0]]]])  # (1, 1, 1, 2): one row with two pixels a=1, b=5


# ------------------------------------------------------------------ hand-computed values
def test_nearest_doubling_repeats_pixels():
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    out = F.interpolate(T(x), scale_factor=2).numpy()[0, 0]
    np.testing.assert_array_equal(out, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])


def test_nearest_and_nearest_exact_source_indices():
    # 2 -> 3: nearest reads floor(dst * 2/3) = 0, 0, 1; nearest-exact floor((dst + .5) * 2/3) = 0, 1, 1
    np.testing.assert_array_equal(F.interpolate(T(ROW), size=(1, 3)).numpy().ravel(), [1, 1, 5])
    np.testing.assert_array_equal(F.interpolate(T(ROW), size=(1, 3), mode="nearest-exact").numpy().ravel(), [1, 5, 5])
    # scale_factor 1.6 -> size floor(2 * 1.6) = 3, source floor(dst / 1.6) = 0, 0, 1
    np.testing.assert_array_equal(F.interpolate(T(ROW), scale_factor=(1, 1.6)).numpy().ravel(), [1, 1, 5])
    # downsampling 4 -> 2 picks pixels 0 and 2
    x = np.array([[[[1.0, 2.0, 3.0, 4.0]]]])
    np.testing.assert_array_equal(F.interpolate(T(x), size=(1, 2)).numpy().ravel(), [1, 3])


def test_scale_factor_versus_recomputed_scale():
    x = np.arange(5.0).reshape(1, 1, 1, 5)
    # 5 * 1.3 = 6.5 -> 6 outputs. With the given factor the source is floor(dst / 1.3): 0 0 1 2 3 3;
    # recomputed (5 / 6) it is floor(dst * 5/6): 0 0 1 2 3 4
    given_scale = F.interpolate(T(x), scale_factor=(1, 1.3)).numpy().ravel()
    recomputed = F.interpolate(T(x), scale_factor=(1, 1.3), recompute_scale_factor=True).numpy().ravel()
    np.testing.assert_array_equal(given_scale, [0, 0, 1, 2, 3, 3])
    np.testing.assert_array_equal(recomputed, [0, 0, 1, 2, 3, 4])


def test_bilinear_align_corners_true_and_false():
    # align_corners=True, 2 -> 3: source 0, 0.5, 1
    out = F.interpolate(T(ROW), size=(1, 3), mode="bilinear", align_corners=True).numpy().ravel()
    np.testing.assert_allclose(out, [1, 3, 5])
    # align_corners=False, 2 -> 4: source (dst + .5) / 2 - .5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (edge)
    for align_corners in (False, None):
        out = F.interpolate(T(ROW), size=(1, 4), mode="bilinear", align_corners=align_corners).numpy().ravel()
        np.testing.assert_allclose(out, [1, 2, 4, 5])


def test_bilinear_2d_by_hand():
    x = np.array([[0.0, 4.0], [8.0, 12.0]]).reshape(1, 1, 2, 2)
    out = F.interpolate(T(x), size=3, mode="bilinear", align_corners=True).numpy()[0, 0]
    np.testing.assert_allclose(out, [[0, 2, 4], [4, 6, 8], [8, 10, 12]])
    # a single output pixel with align_corners=True reads the corner (ratio 0)
    np.testing.assert_allclose(F.interpolate(T(x), size=1, mode="bilinear", align_corners=True).numpy().ravel(), [0])


def test_same_size_is_a_copy_and_dtype_is_kept():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    for mode in ("nearest", "bilinear", "nearest-exact"):
        out = F.interpolate(mg.Tensor(x), size=(4, 5), mode=mode)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out.numpy(), x)


def test_bilinear_gradient_by_hand():
    # 2 -> 4 with align_corners=False: outputs are (1, 0), (.75, .25), (.25, .75), (0, 1) mixes of (a, b)
    x = T(ROW, requires_grad=True)
    F.interpolate(x, size=(1, 4), mode="bilinear").backward(np.array([1.0, 10.0, 100.0, 1000.0]).reshape(1, 1, 1, 4))
    np.testing.assert_allclose(x.grad.numpy().ravel(), [1 + 7.5 + 25, 2.5 + 75 + 1000])


def test_nearest_gradient_adds_back():
    x = T(ROW, requires_grad=True)
    F.interpolate(x, size=(2, 3)).backward(np.arange(6.0).reshape(1, 1, 2, 3))
    # sources per column: 0, 0, 1 -> pixel a gets 0+1+3+4, pixel b gets 2+5
    np.testing.assert_array_equal(x.grad.numpy().ravel(), [8, 7])


# ------------------------------------------------------------------ gradchecks
CASES = [
    dict(size=(7, 5), mode="nearest"),
    dict(scale_factor=(2.5, 0.7), mode="nearest"),
    dict(size=(3, 8), mode="nearest-exact"),
    dict(size=(7, 5), mode="bilinear", align_corners=False),
    dict(size=(7, 3), mode="bilinear", align_corners=True),
    dict(scale_factor=1.7, mode="bilinear"),
    dict(scale_factor=(0.5, 1.5), mode="bilinear", recompute_scale_factor=True),
]


@pytest.mark.parametrize("kwargs", CASES)
def test_interpolate_gradcheck(kwargs):
    x = T(np.random.default_rng(1).standard_normal((2, 2, 4, 6)), requires_grad=True)
    assert gradcheck(lambda t: F.interpolate(t, **kwargs), [x])


@given(st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 7), st.integers(1, 7)),
       st.tuples(st.integers(1, 12), st.integers(1, 12)),
       st.sampled_from([("nearest", None), ("nearest-exact", None), ("bilinear", True), ("bilinear", False)]),
       st.integers(0, 2**16))
def test_interpolate_gradcheck_property(shape, size, mode, seed):
    mode, align_corners = mode
    x = T(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)
    out = F.interpolate(x, size=size, mode=mode, align_corners=align_corners)
    assert out.shape == shape[:2] + size
    assert gradcheck(lambda t: F.interpolate(t, size=size, mode=mode, align_corners=align_corners), [x])


@given(st.tuples(st.integers(1, 6), st.integers(1, 6)), st.tuples(st.integers(1, 12), st.integers(1, 12)),
       st.booleans())
def test_bilinear_preserves_constants_and_stays_in_range(in_size, size, align_corners):
    ones = F.interpolate(T(np.ones((1, 1) + in_size)), size=size, mode="bilinear", align_corners=align_corners)
    np.testing.assert_allclose(ones.numpy(), 1.0, rtol=0, atol=1e-15)
    x = np.random.default_rng(0).standard_normal((1, 1) + in_size)
    out = F.interpolate(T(x), size=size, mode="bilinear", align_corners=align_corners).numpy()
    assert out.min() >= x.min() - 1e-12 and out.max() <= x.max() + 1e-12  # convex combinations


# ------------------------------------------------------------------ parity with PyTorch
PARITY = CASES + [
    dict(size=9, mode="bilinear", align_corners=True),
    dict(size=(13, 7), mode="bilinear"),
    dict(size=(2, 3), mode="bilinear", align_corners=False),  # downsampling
    dict(size=(1, 1), mode="bilinear", align_corners=True),
    dict(scale_factor=2, mode="bilinear", align_corners=False),
    dict(scale_factor=(1.3, 2.1), mode="bilinear", align_corners=True),
    dict(scale_factor=(1.3, 2.1), mode="bilinear", recompute_scale_factor=True),
    dict(scale_factor=2.05, mode="nearest"),  # 5 * 2.05 -> 10 = 2 * 5: PyTorch's "shift by one" special case
    dict(scale_factor=(1.01, 1.1), mode="nearest"),  # same size as the input: a copy
    dict(scale_factor=(1.01, 1.1), mode="bilinear"),
    dict(scale_factor=(0.5, 3), mode="nearest"),
    dict(scale_factor=(2.6, 0.4), mode="nearest", recompute_scale_factor=True),
    dict(size=(11, 13), mode="nearest"),
    dict(scale_factor=1.7, mode="nearest-exact"),
    dict(size=(11, 2), mode="nearest-exact"),
]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kwargs", PARITY)
def test_interpolate_parity(kwargs, dtype):
    torch = require_torch()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    ours, theirs = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out = F.interpolate(ours, **kwargs)
    t_out = torch.nn.functional.interpolate(theirs, **kwargs)
    assert out.shape == tuple(t_out.shape)
    if kwargs["mode"] == "bilinear":  # same indices and weights; the sums may round differently by an ulp
        tol = 1e-12 if dtype == np.float64 else 1e-6
        np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(out.numpy(), t_out.detach().numpy())
    upstream = rng.standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    t_out.backward(torch.tensor(upstream))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.torch
def test_bilinear_weights_match_pytorch_bit_for_bit():
    torch = require_torch()
    # interpolating the identity along one axis reads off the (out, in) weight matrix
    for n, size in ((7, 9), (5, 13), (10, 23), (17, 5), (3, 8)):
        for align_corners in (False, True):
            eye = np.eye(n, dtype=np.float32).reshape(n, 1, 1, n)
            ours = F.interpolate(mg.Tensor(eye), size=(1, size), mode="bilinear", align_corners=align_corners)
            theirs = torch.nn.functional.interpolate(torch.tensor(eye), size=(1, size), mode="bilinear",
                                                     align_corners=align_corners)
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_scale_is_float32_like_pytorch(mode):
    torch = require_torch()
    # sizes where PyTorch's float32 arithmetic floors differently from exact arithmetic:
    # floor(dst * float32(in / out)) for nearest, float32((dst + .5) * scale) for nearest-exact
    for n, size in ((6, 74), (14, 46), (26, 22), (21, 69), (2, 25), (2, 29)):
        x = np.arange(float(n)).reshape(1, 1, 1, n)
        ours = F.interpolate(T(x), size=(1, size), mode=mode).numpy()
        theirs = torch.nn.functional.interpolate(torch.tensor(x), size=(1, size), mode=mode).numpy()
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.torch
def test_infinity_spreads_like_pytorch():
    torch = require_torch()
    x = np.random.default_rng(3).standard_normal((1, 1, 4, 5))
    x[0, 0, 1, 2] = np.inf
    for kwargs in (dict(size=(7, 9), mode="bilinear"), dict(size=(7, 9), mode="nearest")):
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN here, as in PyTorch
            ours = F.interpolate(T(x), **kwargs).numpy()
        theirs = torch.nn.functional.interpolate(torch.tensor(x), **kwargs).numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, equal_nan=True)


# ------------------------------------------------------------------ errors
X = T(np.zeros((1, 1, 4, 4)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=2, scale_factor=2), r"exactly one of size and scale_factor, got size=2 and scale_factor=2"),
    (dict(), r"exactly one of size and scale_factor, got size=None and scale_factor=None"),
    (dict(size=2, mode="nearest", align_corners=False), r"align_corners can only be set with mode='bilinear'"),
    (dict(size=2, mode="nearest-exact", align_corners=True), r"align_corners can only be set"),
    (dict(size=2, mode="bicubic"), r"mode must be one of .* got 'bicubic'"),
    (dict(size=(2, 2, 2)), r"size must have 2 entries for input with spatial size \(4, 4\), got \(2, 2, 2\)"),
    (dict(scale_factor=(2,)), r"scale_factor must have 2 entries"),
    (dict(size=(0, 3)), r"sizes must be positive, got input of shape \(1, 1, 4, 4\) and output size \(0, 3\)"),
    (dict(scale_factor=0.2), r"output size \(0, 0\)"),
    (dict(scale_factor=-2.0, mode="bilinear"), r"output size \(-8, -8\)"),
    (dict(size=(2, 2), recompute_scale_factor=True), r"recompute_scale_factor=True is not meaningful"),
])
def test_interpolate_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.interpolate(X, **kwargs)


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (1, 1, 1, 4, 4)])
def test_interpolate_needs_4d_input(shape):
    with pytest.raises(ValueError, match=rf"input must be 4-D \(N, C, H, W\), got shape {re_shape(shape)}"):
        F.interpolate(T(np.zeros(shape)), size=2)


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_interpolate_other_errors():
    with pytest.raises(TypeError, match=r"size must hold ints"):
        F.interpolate(X, size=(2.5, 2))
    with pytest.raises(NotImplementedError, match=r"antialias"):
        F.interpolate(X, size=2, mode="bilinear", antialias=True)
