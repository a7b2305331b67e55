"""batch_norm: hand-computed values, gradcheck (training and eval), PyTorch parity over steps, errors."""
import math

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad.gradcheck import gradcheck
from tests.helpers import distinct_values, require_torch


def leaf(array, requires_grad=True):
    return mg.Tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


# ---------------------------------------------------------------- hand-computed values
def test_training_normalises_with_biased_variance_and_updates_running_stats():
    x = leaf([[1.0], [2.0], [3.0], [4.0]])
    running_mean, running_var = mg.Tensor(np.zeros(1)), mg.Tensor(np.ones(1))
    out = F.batch_norm(x, running_mean, running_var, training=True, momentum=0.1, eps=0.0)
    # mean 2.5, biased variance 1.25 normalises; unbiased 5/3 goes into running_var
    np.testing.assert_allclose(out.numpy()[:, 0], (np.array([1, 2, 3, 4]) - 2.5) / math.sqrt(1.25), atol=1e-12)
    assert running_mean.numpy()[0] == pytest.approx(0.9 * 0 + 0.1 * 2.5)
    assert running_var.numpy()[0] == pytest.approx(0.9 * 1 + 0.1 * 5 / 3)


def test_eval_uses_running_stats_weight_and_bias():
    x = leaf([[3.0, 0.0], [5.0, 2.0]])
    out = F.batch_norm(x, mg.Tensor([1.0, 2.0]), mg.Tensor([4.0, 16.0]), weight=leaf([2.0, 1.0]),
                       bias=leaf([0.5, -1.0]), training=False, eps=0.0)
    # (x - mean) / std * weight + bias, per channel
    np.testing.assert_allclose(out.numpy(), [[2 * (3 - 1) / 2 + 0.5, (0 - 2) / 4 - 1],
                                             [2 * (5 - 1) / 2 + 0.5, (2 - 2) / 4 - 1]], atol=1e-12)


def test_training_gradient_by_hand():
    # sum of a normalised batch is constant (0), so its gradient is 0; the bias gradient counts the values
    x = leaf([[1.0, 5.0], [2.0, 7.0], [4.0, 6.0]])
    weight, bias = leaf([1.5, -2.0]), leaf([0.0, 0.0])
    F.batch_norm(x, None, None, weight, bias, training=True).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.zeros((3, 2)), atol=1e-12)
    np.testing.assert_allclose(weight.grad.numpy(), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(bias.grad.numpy(), [3.0, 3.0])


def test_running_stats_are_optional_in_training_and_input_dims_can_be_any():
    x = mg.Tensor(np.arange(24.0).reshape(2, 3, 4))
    out = F.batch_norm(x, None, None, training=True, eps=0.0)
    np.testing.assert_allclose(out.numpy().mean(axis=(0, 2)), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.numpy().var(axis=(0, 2)), 1.0, atol=1e-12)


# ---------------------------------------------------------------- gradients by finite differences
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 3)])
def test_batch_norm_gradcheck(rng, training, shape):
    x = mg.Tensor(distinct_values(rng, shape) * 3, requires_grad=True)
    weight = mg.Tensor(rng.standard_normal(3), requires_grad=True)
    bias = mg.Tensor(rng.standard_normal(3), requires_grad=True)
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5

    def fn(x, weight, bias):
        # fresh running stats each call: the training update must not leak into the finite differences
        return F.batch_norm(x, mg.Tensor(mean), mg.Tensor(var), weight, bias, training=training)
    gradcheck(fn, [x, weight, bias])


def test_only_requested_gradients_are_computed(rng):
    x = mg.Tensor(rng.standard_normal((4, 2, 3)), requires_grad=False)
    weight, bias = mg.Tensor(rng.standard_normal(2), requires_grad=True), mg.Tensor(np.zeros(2))
    F.batch_norm(x, None, None, weight, bias, training=True).sum().backward()
    assert weight.grad is not None and bias.grad is None and x.grad is None
    x.requires_grad_(True)
    gradcheck(lambda x: F.batch_norm(x, None, None, training=True), [x])


def test_float32_in_float32_out(rng):
    x = mg.Tensor(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), requires_grad=True)
    weight = mg.Tensor(np.ones(3, np.float32), requires_grad=True)
    bias = mg.Tensor(np.zeros(3, np.float32), requires_grad=True)
    running_mean, running_var = mg.Tensor(np.zeros(3, np.float32)), mg.Tensor(np.ones(3, np.float32))
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training=True)
    (out * out).sum().backward()
    assert out.dtype == x.grad.dtype == weight.grad.dtype == bias.grad.dtype == np.float32
    assert running_mean.dtype == running_var.dtype == np.float32


# ---------------------------------------------------------------- PyTorch parity
@pytest.mark.torch
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_matches_torch_over_steps(rng, shape, dtype):
    torch = require_torch()
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    weight_np, bias_np = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    ours_w, ours_b = mg.Tensor(weight_np, requires_grad=True), mg.Tensor(bias_np, requires_grad=True)
    theirs_w, theirs_b = torch.tensor(weight_np, requires_grad=True), torch.tensor(bias_np, requires_grad=True)
    ours_stats = [mg.Tensor(np.zeros(3, dtype)), mg.Tensor(np.ones(3, dtype))]
    theirs_stats = [torch.from_numpy(np.zeros(3, dtype)), torch.from_numpy(np.ones(3, dtype))]
    for step, training in enumerate([True, True, True, False]):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        upstream = rng.standard_normal(shape).astype(dtype)
        ours_x, theirs_x = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        for t in (ours_w, ours_b, theirs_w, theirs_b):
            t.grad = None
        ours = F.batch_norm(ours_x, *ours_stats, ours_w, ours_b, training=training, momentum=0.3, eps=1e-3)
        theirs = torch.nn.functional.batch_norm(theirs_x, *theirs_stats, theirs_w, theirs_b,
                                                training=training, momentum=0.3, eps=1e-3)
        ours.backward(upstream)
        theirs.backward(torch.tensor(upstream))
        pairs = [(ours, theirs), (ours_x.grad, theirs_x.grad), (ours_w.grad, theirs_w.grad),
                 (ours_b.grad, theirs_b.grad), *zip(ours_stats, theirs_stats)]
        for name, (a, b) in zip(["out", "grad x", "grad weight", "grad bias", "running_mean", "running_var"], pairs):
            np.testing.assert_allclose(a.numpy(), b.detach().numpy(), **tolerance, err_msg=f"step {step}: {name}")


# ---------------------------------------------------------------- errors
def test_channel_mismatch_names_argument_and_shapes():
    x = mg.Tensor(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\).*\(2, 3, 4, 4\).*\(4,\)"):
        F.batch_norm(x, mg.Tensor(np.zeros(4)), mg.Tensor(np.ones(3)))
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\).*\(2,\)"):
        F.batch_norm(x, mg.Tensor(np.zeros(3)), mg.Tensor(np.ones(2)))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*\(1, 3\)"):
        F.batch_norm(x, None, None, weight=mg.Tensor(np.ones((1, 3))), training=True)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\).*\(5,\)"):
        F.batch_norm(x, None, None, bias=mg.Tensor(np.ones(5)), training=True)
    with pytest.raises(ValueError, match=r"\(N, C\).*\(3,\)"):
        F.batch_norm(mg.Tensor(np.zeros(3)), None, None, training=True)


def test_one_value_per_channel_in_training_and_missing_stats_in_eval():
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training.*\(1, 3\)"):
        F.batch_norm(mg.Tensor(np.zeros((1, 3))), None, None, training=True)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training.*\(1, 3, 1, 1\)"):
        F.batch_norm(mg.Tensor(np.zeros((1, 3, 1, 1))), None, None, training=True)
    # one sample is fine in eval, and with spatial positions in training
    F.batch_norm(mg.Tensor(np.zeros((1, 3))), mg.Tensor(np.zeros(3)), mg.Tensor(np.ones(3)))
    F.batch_norm(mg.Tensor(np.zeros((1, 3, 2, 1))), None, None, training=True)
    with pytest.raises(ValueError, match="running_mean and running_var must be given when training=False"):
        F.batch_norm(mg.Tensor(np.zeros((2, 3))), None, None, training=False)
    with pytest.raises(ValueError, match="momentum must be a float"):
        F.batch_norm(mg.Tensor(np.zeros((2, 3))), mg.Tensor(np.zeros(3)), mg.Tensor(np.ones(3)), training=True,
                     momentum=None)
