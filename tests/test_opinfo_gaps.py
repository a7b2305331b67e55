"""What PyTorch's OpInfo samples found missing (issue 19): F.linear, class-probability cross_entropy,
clamp with Tensor bounds, add/sub alpha, dims of 0-d tensors, pad cropping to empty, empty softmax,
one-element size tuples, BatchNorm1d. Hand-computed values, gradchecks, properties, PyTorch parity."""
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


# ------------------------------------------------------------------ F.linear
def test_linear_by_hand_and_shapes():
    x, w, b = T([[1, 2], [3, 4]]), T([[1, 0], [1, 1], [0, 2]]), T([10, 20, 30])
    np.testing.assert_array_equal(F.linear(x, w, b).numpy(), [[11, 23, 34], [13, 27, 38]])
    assert F.linear(T(np.ones((2, 3, 2))), w).shape == (2, 3, 3)
    assert F.linear(T([1, 2]), w).shape == (3,)
    assert F.linear(T(np.ones((0, 2))), w, b).shape == (0, 3)
    np.testing.assert_array_equal(F.linear(x, T([1, 1]), T(5)).numpy(), [8, 12])  # 1-D weight: a dot product


@pytest.mark.parametrize("shape, bias", [((4, 3), True), ((2, 5, 3), False), ((3,), True)])
def test_linear_gradcheck(rng, shape, bias):
    x = T(rng.standard_normal(shape), True)
    w = T(rng.standard_normal((2, 3)), True)
    b = T(rng.standard_normal(2), True) if bias else None
    gradcheck(lambda *t: F.linear(*t), [x, w] + ([b] if bias else []))


@given(lead=st.lists(st.integers(0, 3), max_size=2), features=st.integers(1, 4), out=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
def test_linear_is_x_times_w_transposed_plus_b(lead, features, out, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(lead) + (features,))
    w, b = rng.standard_normal((out, features)), rng.standard_normal(out)
    np.testing.assert_allclose(F.linear(T(x), T(w), T(b)).numpy(), x @ w.T + b, rtol=1e-12, atol=1e-12)
    layer = nn.Linear(features, out)
    layer.weight.data[...], layer.bias.data[...] = w, b
    np.testing.assert_allclose(layer(mg.Tensor(x.astype(np.float32))).numpy(),
                               F.linear(T(x), T(w), T(b)).numpy(), rtol=1e-5, atol=1e-5)


def test_linear_errors():
    with pytest.raises(ValueError, match=r"last dim equal to in_features=2"):
        F.linear(T(np.ones((3, 4))), T(np.ones((5, 2))))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        F.linear(T(np.ones((3, 2))), T(np.ones((5, 2))), T(np.ones(4)))
    with pytest.raises(ValueError, match=r"weight must be 2-D"):
        F.linear(T(np.ones((3, 2))), T(np.ones((1, 5, 2))))


# ------------------------------------------------------------------ cross_entropy with class probabilities
def _log_softmax(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_probability_targets_by_hand():
    x = np.array([[0.0, np.log(3.0)]])  # softmax (1/4, 3/4)
    q = np.array([[0.5, 0.5]])
    expected = -(0.5 * np.log(0.25) + 0.5 * np.log(0.75))
    np.testing.assert_allclose(F.cross_entropy(T(x), T(q)).item(), expected)
    # weights multiply each class term; mean still divides by the number of elements, not the weights
    np.testing.assert_allclose(F.cross_entropy(T(x), T(q), weight=T([2.0, 0.0])).item(), -np.log(0.25))
    # label smoothing mixes the target with the uniform distribution: q' = 0.9 * q + 0.1 / 2
    np.testing.assert_allclose(F.cross_entropy(T(x), T([[1.0, 0.0]]), label_smoothing=0.2).item(),
                               -(0.9 * np.log(0.25) + 0.1 * np.log(0.75)))
    # unbatched (C,) input with a (C,) target
    np.testing.assert_allclose(F.cross_entropy(T(x[0]), T(q[0])).item(), expected)


@pytest.mark.parametrize("kwargs", [{}, {"reduction": "none"}, {"reduction": "sum", "label_smoothing": 0.3},
                                    {"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.1}])
def test_probability_targets_gradcheck_input_and_target(rng, kwargs):
    kwargs = {k: (T(v) if k == "weight" else v) for k, v in kwargs.items()}
    x = T(rng.standard_normal((2, 3, 2, 2)), True)
    q = T(rng.random((2, 3, 2, 2)), True)
    gradcheck(lambda a, b: F.cross_entropy(a, b, **kwargs), [x, q])


@given(n=st.integers(1, 4), classes=st.integers(2, 5), spatial=st.lists(st.integers(1, 3), max_size=2),
       smoothing=st.sampled_from([0.0, 0.25]), weighted=st.booleans(), reduction=st.sampled_from(["sum", "none"]),
       seed=st.integers(0, 2 ** 16))
def test_one_hot_probabilities_equal_class_indices(n, classes, spatial, smoothing, weighted, reduction, seed):
    """A one-hot probability target is its class index: same loss (sum/none) and same logit gradient."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, classes) + tuple(spatial))
    index = rng.integers(0, classes, (n,) + tuple(spatial))
    one_hot = np.moveaxis(np.eye(classes)[index], -1, 1)
    weight = T(rng.uniform(0.5, 2, classes)) if weighted else None
    g = rng.standard_normal(index.shape) if reduction == "none" else 1.0
    results = []
    for target in (mg.Tensor(index), T(one_hot)):
        logits = T(x, True)
        out = F.cross_entropy(logits, target, weight=weight, reduction=reduction, label_smoothing=smoothing)
        F.sum(F.mul(out, T(g))).backward()
        results.append((out.numpy(), logits.grad.numpy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_probability_targets_mean_divides_by_elements():
    rng = np.random.default_rng(1)
    x, q = rng.standard_normal((3, 4, 5)), rng.random((3, 4, 5))
    expected = -(q * _log_softmax(x)).sum() / 15
    np.testing.assert_allclose(F.cross_entropy(T(x), T(q)).item(), expected, rtol=1e-12)
    assert nn.CrossEntropyLoss()(T(x), T(q)).item() == pytest.approx(expected, rel=1e-12)


def test_probability_target_errors():
    x = T(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ignore_index=1 is not supported with class-probability"):
        F.cross_entropy(x, T(np.zeros((2, 3))), ignore_index=1)
    with pytest.raises(ValueError, match=r"integer class indices or, as floats, class probabilities.*\(2, 4\)"):
        F.cross_entropy(x, T(np.zeros((2, 4))))


@pytest.mark.torch
@pytest.mark.parametrize("kwargs", [{"reduction": "mean"}, {"reduction": "none", "label_smoothing": 0.2},
                                    {"weight": [0.2, 1.0, 3.0], "label_smoothing": 0.4, "reduction": "mean"}])
def test_probability_targets_parity(rng, kwargs):
    torch = require_torch()
    x, q = rng.standard_normal((4, 3, 5)), rng.dirichlet(np.ones(3), (4, 5)).transpose(0, 2, 1)
    ours_x, ours_q = T(x, True), T(q, True)
    theirs_x, theirs_q = torch.tensor(x, requires_grad=True), torch.tensor(q, requires_grad=True)
    a = F.cross_entropy(ours_x, ours_q, **{k: (T(v) if k == "weight" else v) for k, v in kwargs.items()})
    b = torch.nn.functional.cross_entropy(theirs_x, theirs_q,
                                          **{k: (torch.tensor(np.array(v)) if k == "weight" else v)
                                             for k, v in kwargs.items()})
    np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12)
    g = rng.standard_normal(b.shape)
    F.sum(F.mul(a, T(g))).backward()
    (b * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(ours_x.grad.numpy(), theirs_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours_q.grad.numpy(), theirs_q.grad.numpy(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ clamp with Tensor bounds, add/sub alpha
def test_clamp_tensor_bounds_by_hand():
    x = T([0.0, 1.0, 2.0, 3.0, 1.5], True)
    lo, hi = T([1.0, 1.0, 1.0, 1.0, 2.0], True), T([2.0, 2.0, 2.0, 2.0, 1.0], True)
    out = F.clamp(x, lo, hi)
    np.testing.assert_array_equal(out.numpy(), [1, 1, 2, 2, 1])  # min > max gives max, as in PyTorch
    F.sum(F.mul(out, T([1, 2, 3, 4, 5]))).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 2, 3, 0, 0])
    np.testing.assert_array_equal(lo.grad.numpy(), [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(hi.grad.numpy(), [0, 0, 0, 4, 5])
    with pytest.raises(ValueError, match="at least one of min and max"):
        F.clamp(x)


@given(seed=st.integers(0, 2 ** 16), which=st.sampled_from(["both", "min", "max", "broadcast"]))
def test_clamp_tensor_bounds_gradcheck(seed, which):
    values = distinct_values(np.random.default_rng(seed), (3, 12))  # no ties: away from the kinks
    x, lo, hi = (T(v, True) for v in values)
    if which == "both":
        gradcheck(lambda a, low, high: F.clamp(a, low, high), [x, lo, hi])
    elif which == "min":
        gradcheck(lambda a, low: F.clamp(a, min=low), [x, lo])
    elif which == "max":
        gradcheck(lambda a, high: F.clamp(a, max=high), [x, hi])
    else:  # bounds that broadcast against the input get their gradients summed back
        y, low = T(values.reshape(9, 4)[:3], True), T(values.reshape(9, 4)[3:4], True)
        gradcheck(lambda a, b, c: F.clamp(a, b, c), [y, low, T(values.reshape(9, 4)[4:5] + 0.5, True)])


def test_add_and_sub_alpha(rng):
    a, b = T(rng.standard_normal((2, 3)), True), T(rng.standard_normal(3), True)
    np.testing.assert_allclose(F.add(a, b, alpha=2).numpy(), a.numpy() + 2 * b.numpy())
    np.testing.assert_allclose(F.sub(a, b, alpha=-0.5).numpy(), a.numpy() + 0.5 * b.numpy())
    np.testing.assert_allclose(F.add(a, 3, alpha=2).numpy(), a.numpy() + 6)
    gradcheck(lambda x, y: F.sub(x, y, alpha=3.5), [a, b])


# ------------------------------------------------------------------ 0-d tensors, empty results
def test_dims_of_a_zero_d_tensor_are_0_and_minus_1():
    x = T(2.5, True)
    for dim in (0, -1):
        assert F.sum(x, dim=dim).shape == () and F.mean(x, dim, keepdim=True).shape == ()
        values, indices = F.max(x, dim)
        assert values.item() == 2.5 and indices.item() == 0 and indices.dtype == np.int64
        assert F.argmax(x, dim).item() == 0
        assert F.transpose(x, dim, 0).shape == () and F.squeeze(x, dim).shape == ()
    F.min(x, 0)[0].backward()
    assert x.grad.item() == 1.0
    with pytest.raises(IndexError, match="dim=1 is out of range"):
        F.sum(x, dim=1)


def test_squeeze_several_dims():
    assert F.squeeze(T(np.zeros((1, 2, 1, 1))), (0, 2)).shape == (2, 1)


def test_matmul_of_two_vectors_and_its_gradient(rng):
    a, b = T(rng.standard_normal(4), True), T(rng.standard_normal(4), True)
    out = F.matmul(a, b)
    assert out.shape == ()
    out.backward()
    np.testing.assert_allclose(a.grad.numpy(), b.numpy())
    gradcheck(F.matmul, [a, b])


def test_pad_cropping_a_dim_to_zero_gives_an_empty_tensor(rng):
    x = T(rng.standard_normal((5, 3)), True)
    out = F.pad(x, (-1, -2, 1, 1), value=1.0)
    assert out.shape == (7, 0)
    F.sum(out).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((5, 3)))
    assert F.pad(T(np.zeros((0, 3))), (1, 1, 1, 1)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"crops more than all of shape \(5, 3\)"):
        F.pad(x, (-2, -2))


def test_softmax_of_empty_tensors():
    for fn in (F.softmax, F.log_softmax):
        x = T(np.zeros((5, 0, 0)), True)
        out = fn(x, -1)
        assert out.shape == (5, 0, 0)
        F.sum(out).backward()
        assert x.grad.shape == (5, 0, 0)


# ------------------------------------------------------------------ one-element size tuples
def test_one_element_tuples_expand_like_pytorch(rng):
    x = T(rng.standard_normal((1, 2, 7, 7)))
    np.testing.assert_array_equal(F.avg_pool2d(x, (3,), (2,), (1,)).numpy(), F.avg_pool2d(x, 3, 2, 1).numpy())
    np.testing.assert_array_equal(F.max_pool2d(x, [2], stride=(1,)).numpy(), F.max_pool2d(x, 2, 1).numpy())
    assert F.im2col.pair((4,)) == (4, 4)
    with pytest.raises(ValueError, match=r"stride must be an int or a pair"):
        F.im2col.pair((1, 2, 3), "stride")


# ------------------------------------------------------------------ BatchNorm1d
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
def test_batchnorm1d_normalises_over_batch_and_length(rng, shape):
    layer = nn.BatchNorm1d(3)
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1
    out = layer(mg.Tensor(x)).numpy()
    axes = (0,) if len(shape) == 2 else (0, 2)
    np.testing.assert_allclose(out.mean(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=axes), 1, rtol=1e-3)
    count = x.size // 3
    np.testing.assert_allclose(layer.running_var.numpy(), 0.9 + 0.1 * x.var(axis=axes) * count / (count - 1),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"BatchNorm1d: expected 2D or 3D input \(got 4D"):
        layer(mg.Tensor(np.zeros((1, 3, 2, 2), np.float32)))


def test_batch_norm_gradcheck_on_n_c_and_n_c_l(rng):
    for shape in ((5, 3), (3, 3, 4)):
        x = T(rng.standard_normal(shape), True)
        w, b = T(rng.uniform(0.5, 2, 3), True), T(rng.standard_normal(3), True)
        gradcheck(lambda *t: F.batch_norm(t[0], None, None, t[1], t[2], training=True), [x, w, b])


@pytest.mark.torch
def test_batchnorm1d_parity(rng):
    torch = require_torch()
    ours, theirs = nn.BatchNorm1d(4, momentum=0.3), torch.nn.BatchNorm1d(4, momentum=0.3)
    for shape in ((8, 4), (3, 4, 6)):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ours(mg.Tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ minimum, and max/min of two tensors
@given(seed=st.integers(0, 2 ** 16))
def test_minimum_and_binary_max_min(seed):
    values = distinct_values(np.random.default_rng(seed), (2, 3, 4))
    a, b = T(values[0], True), T(values[1][:1], True)  # b broadcasts over a's rows
    np.testing.assert_array_equal(F.minimum(a, b).numpy(), np.minimum(values[0], values[1][:1]))
    np.testing.assert_array_equal(F.min(a, b).numpy(), F.minimum(a, b).numpy())
    np.testing.assert_array_equal(F.max(a, b).numpy(), np.maximum(values[0], values[1][:1]))
    gradcheck(F.minimum, [a, b])
    gradcheck(F.min, [a, b])
    gradcheck(F.max, [a, b])


@pytest.mark.parametrize("op, a_grad, b_grad", [(F.minimum, [0.5, 1], [0.5, 0]), (F.maximum, [0.5, 0], [0.5, 1])])
def test_a_tie_splits_the_gradient_in_half_like_pytorch(op, a_grad, b_grad):
    a, b = T([1.0, 2.0], True), T([1.0, 3.0], True)
    F.sum(op(a, b)).backward()
    np.testing.assert_array_equal(a.grad.numpy(), a_grad)
    np.testing.assert_array_equal(b.grad.numpy(), b_grad)


@pytest.mark.torch
def test_maximum_minimum_with_ties_parity():
    torch = require_torch()
    x = np.array([[1.0, 2.0, 3.0], [0.0, 2.0, -1.0]])
    y = np.array([1.0, 5.0, -1.0])  # ties in both rows, broadcast over them
    for name in ("maximum", "minimum"):
        ours = [T(x, True), T(y, True)]
        theirs = [torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)]
        a, b = getattr(F, name)(*ours), getattr(torch, name)(*theirs)
        np.testing.assert_array_equal(a.numpy(), b.detach().numpy())
        g = np.arange(6.0).reshape(2, 3)
        F.sum(F.mul(a, T(g))).backward()
        (b * torch.tensor(g)).sum().backward()
        for m, t in zip(ours, theirs):
            np.testing.assert_array_equal(m.grad.numpy(), t.grad.numpy())
