"""dropout and dropout2d: statistics, scaling, gradients, seeding, eval identity, errors."""
import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F


def ones(shape, dtype=np.float32, requires_grad=True):
    return mg.Tensor(np.ones(shape, dtype), requires_grad=requires_grad)


def test_fraction_zeroed_is_p_and_expectation_is_preserved():
    mg.manual_seed(0)
    out = F.dropout(ones(200_000), p=0.3).numpy()
    # binomial standard deviations: 0.001 for the fraction, 0.0015 for the mean; allow ~7
    assert abs((out == 0).mean() - 0.3) < 0.007
    assert abs(out.mean() - 1.0) < 0.01
    # kept values are scaled by exactly 1 / (1 - p)
    np.testing.assert_allclose(np.unique(out), [0.0, np.float32(1 / 0.7)])


def test_gradient_is_the_same_mask(rng):
    mg.manual_seed(1)
    x = mg.Tensor(rng.standard_normal((6, 50)) + 3.0, requires_grad=True)  # no zeros in x
    out = F.dropout(x, p=0.4)
    upstream = rng.standard_normal(x.shape)
    out.backward(upstream)
    mask = out.numpy() / x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), upstream * mask, atol=1e-12)
    assert set(np.round(np.unique(mask), 10)) == {0.0, round(1 / 0.6, 10)}


def test_eval_and_p0_are_the_identity_and_p1_gives_zeros():
    x = ones((3, 4))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    assert F.dropout2d(ones((2, 3, 4, 4)), 0.5, training=False).numpy().min() == 1.0
    out = F.dropout(x, 1.0)
    out.sum().backward()
    np.testing.assert_array_equal(out.numpy(), np.zeros((3, 4)))
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((3, 4)))
    np.testing.assert_array_equal(F.dropout2d(ones((2, 3, 2, 2)), 1.0).numpy(), 0.0)


def test_manual_seed_repeats_masks():
    mg.manual_seed(42)
    first = F.dropout(ones((64, 64)), 0.5).numpy()
    second = F.dropout(ones((64, 64)), 0.5).numpy()
    mg.manual_seed(42)
    again = F.dropout(ones((64, 64)), 0.5).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    mg.manual_seed(7)
    channels = F.dropout2d(ones((4, 16, 3, 3)), 0.5).numpy()
    mg.manual_seed(7)
    np.testing.assert_array_equal(channels, F.dropout2d(ones((4, 16, 3, 3)), 0.5).numpy())


def test_dropout2d_zeroes_whole_channels_at_rate_p():
    mg.manual_seed(3)
    x = ones((64, 256, 2, 3), requires_grad=True)
    out = F.dropout2d(x, p=0.25)
    out.sum().backward()
    values = out.numpy().reshape(64, 256, -1)
    # each (n, c) channel is all zeros or all 1 / (1 - p)
    assert np.all(values.min(axis=2) == values.max(axis=2))
    np.testing.assert_allclose(np.unique(values), [0.0, np.float32(1 / 0.75)])
    dropped = (values[:, :, 0] == 0).mean()
    assert abs(dropped - 0.25) < 0.025  # 16384 channels: standard deviation 0.0034
    np.testing.assert_array_equal(x.grad.numpy(), out.numpy())
    # a 3-D input is (N, C, L), as in PyTorch: one draw per (n, c)
    line = F.dropout2d(ones((8, 32, 5)), p=0.5).numpy()
    assert np.all(line.min(axis=2) == line.max(axis=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    mg.manual_seed(0)
    for op in (F.dropout, F.dropout2d):
        x = ones((2, 3, 4, 4), dtype=dtype)
        out = op(x, 0.5)
        out.backward(np.ones(x.shape, dtype))
        assert out.dtype == dtype and x.grad.dtype == dtype


def test_inplace_overwrites_only_without_a_graph():
    mg.manual_seed(0)
    x = ones((100,), requires_grad=False)
    with mg.no_grad():
        out = F.dropout(x, 0.5, inplace=True)
    assert out is x and (x.numpy() == 0).any()
    y = ones((100,), requires_grad=True)
    out = F.dropout(y, 0.5, inplace=True)
    assert out is not y and (y.numpy() == 1).all() and (out.numpy() == 0).any()
    z = ones((2, 8, 3, 3), requires_grad=False)
    with mg.no_grad():
        assert F.dropout2d(z, 0.5, inplace=True) is z and (z.numpy() == 0).any()


@pytest.mark.parametrize("op", [F.dropout, F.dropout2d])
@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_p_outside_0_1_raises(op, p):
    with pytest.raises(ValueError, match=f"dropout probability has to be between 0 and 1, but got {p}"):
        op(ones((2, 3, 4, 4)), p)


def test_dropout2d_needs_3d_or_4d_input():
    with pytest.raises(ValueError, match=r"dropout2d: expected input of shape \(N, C, H, W\).*\(2, 3\)"):
        F.dropout2d(ones((2, 3)), 0.5)
