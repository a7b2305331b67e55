"""cross_entropy, nll_loss and dice_loss: hand-computed values, gradcheck, PyTorch parity, errors."""
import itertools
import math

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad.gradcheck import gradcheck
from tests.helpers import require_torch

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def logits(values, dtype=np.float64, requires_grad=True):
    return mg.Tensor(np.array(values, dtype=dtype), requires_grad=requires_grad)


def labels(values):
    return mg.Tensor(np.array(values, dtype=np.int64))


# ---------------------------------------------------------------- hand-computed values
# Row [0, ln 3] has softmax [1/4, 3/4], so -log p = [ln 4, ln(4/3)]; row [0, 0] has -log p = [ln 2, ln 2].
ROWS = [[0.0, LN3], [0.0, 0.0]]


def test_cross_entropy_mean_by_hand():
    x = logits(ROWS)
    loss = F.cross_entropy(x, labels([1, 0]))
    loss.backward()
    assert loss.item() == pytest.approx((math.log(4 / 3) + LN2) / 2, abs=1e-12)
    # (softmax - onehot) / N
    np.testing.assert_allclose(x.grad.numpy(), [[0.125, -0.125], [-0.25, 0.25]], atol=1e-12)


def test_cross_entropy_sum_and_none_by_hand():
    per_element = F.cross_entropy(logits(ROWS), labels([1, 0]), reduction="none")
    np.testing.assert_allclose(per_element.numpy(), [math.log(4 / 3), LN2], atol=1e-12)
    total = F.cross_entropy(logits(ROWS), labels([0, 0]), reduction="sum")
    assert total.item() == pytest.approx(LN4 + LN2, abs=1e-12)


def test_cross_entropy_weight_divides_by_summed_target_weight():
    x = logits(ROWS)
    loss = F.cross_entropy(x, labels([1, 0]), weight=mg.Tensor(np.array([1.0, 3.0])))
    loss.backward()
    assert loss.item() == pytest.approx((3 * math.log(4 / 3) + 1 * LN2) / 4, abs=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), [[3 * 0.25 / 4, -3 * 0.25 / 4], [-0.5 / 4, 0.5 / 4]], atol=1e-12)


def test_cross_entropy_ignore_index_drops_element_from_sum_and_count():
    x = logits(ROWS)
    loss = F.cross_entropy(x, labels([1, -100]))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(4 / 3), abs=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), [[0.25, -0.25], [0.0, 0.0]], atol=1e-12)
    none = F.cross_entropy(logits(ROWS), labels([1, 7]), ignore_index=7, reduction="none")
    np.testing.assert_allclose(none.numpy(), [math.log(4 / 3), 0.0], atol=1e-12)


def test_cross_entropy_label_smoothing_by_hand():
    x = logits([ROWS[0]])
    loss = F.cross_entropy(x, labels([1]), label_smoothing=0.2)
    loss.backward()
    # (1 - eps) * -log p[t] + eps / C * sum_c -log p[c]
    assert loss.item() == pytest.approx(0.8 * math.log(4 / 3) + 0.1 * (LN4 + math.log(4 / 3)), abs=1e-12)
    # softmax - smoothed onehot, smoothed onehot = [0.1, 0.9]
    np.testing.assert_allclose(x.grad.numpy(), [[0.15, -0.15]], atol=1e-12)


def test_cross_entropy_label_smoothing_with_weights_by_hand():
    # PyTorch: the smoothing term is weighted by every class weight, the mean divides by w[t] only
    x = logits([ROWS[0]])
    loss = F.cross_entropy(x, labels([1]), weight=mg.Tensor(np.array([1.0, 3.0])), label_smoothing=0.2)
    loss.backward()
    expected = (0.8 * 3 * math.log(4 / 3) + 0.1 * (1 * LN4 + 3 * math.log(4 / 3))) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # coef = 0.8 * 3 * onehot + 0.1 * w = [0.1, 2.7], S = 2.8; grad = (S * p - coef) / 3
    np.testing.assert_allclose(x.grad.numpy(), [[(2.8 * 0.25 - 0.1) / 3, (2.8 * 0.75 - 2.7) / 3]], atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weight", [None, [2.0, 0.5]])
def test_cross_entropy_all_ignored_is_nan_with_zero_grad(weight, smoothing):
    x = logits(ROWS)
    w = None if weight is None else mg.Tensor(np.array(weight))
    loss = F.cross_entropy(x, labels([-100, -100]), weight=w, label_smoothing=smoothing)
    loss.backward()
    assert math.isnan(loss.item())
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((2, 2)))
    total = F.cross_entropy(logits(ROWS), labels([-100, -100]), weight=w, label_smoothing=smoothing, reduction="sum")
    assert total.item() == 0.0


def test_cross_entropy_is_stable_for_huge_logits():
    x = logits([[1000.0, 0.0], [-1000.0, 1000.0]])
    loss = F.cross_entropy(x, labels([1, 1]), reduction="none")
    loss.sum().backward()
    np.testing.assert_allclose(loss.numpy(), [1000.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(x.grad.numpy(), [[1.0, -1.0], [0.0, 0.0]], atol=1e-9)


def test_cross_entropy_pixelwise_equals_flattened_rows(rng):
    # (N, C, H, W) with (N, H, W) targets is the same loss as (N*H*W, C) rows
    x = rng.standard_normal((2, 4, 3, 5))
    t = rng.integers(0, 4, (2, 3, 5))
    t[0, 0, :2] = -100
    w = mg.Tensor(rng.random(4) + 0.5)
    image = F.cross_entropy(mg.Tensor(x), mg.Tensor(t), weight=w, label_smoothing=0.1)
    rows = F.cross_entropy(mg.Tensor(x.transpose(0, 2, 3, 1).reshape(-1, 4)), mg.Tensor(t.reshape(-1)),
                           weight=w, label_smoothing=0.1)
    assert image.item() == pytest.approx(rows.item(), abs=1e-12)


def test_cross_entropy_unbatched_input():
    loss = F.cross_entropy(logits(ROWS[0]), labels(1))
    assert loss.shape == () and loss.item() == pytest.approx(math.log(4 / 3), abs=1e-12)
    assert F.cross_entropy(logits(ROWS[0]), 0, reduction="none").item() == pytest.approx(LN4, abs=1e-12)


def test_cross_entropy_equals_nll_of_log_softmax(rng):
    x = rng.standard_normal((3, 5, 2, 2))
    t = mg.Tensor(rng.integers(0, 5, (3, 2, 2)))
    w = mg.Tensor(rng.random(5) + 0.5)
    a, b = mg.Tensor(x, requires_grad=True), mg.Tensor(x, requires_grad=True)
    ce = F.cross_entropy(a, t, weight=w, ignore_index=2)
    nll = F.nll_loss(F.log_softmax(b, dim=1), t, weight=w, ignore_index=2)
    ce.backward()
    nll.backward()
    assert ce.item() == pytest.approx(nll.item(), abs=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-12)


def test_nll_loss_by_hand():
    logp = logits([[-1.0, -2.0], [-3.0, -4.0]])
    loss = F.nll_loss(logp, labels([1, 0]))
    loss.backward()
    assert loss.item() == pytest.approx(2.5)
    np.testing.assert_allclose(logp.grad.numpy(), [[0.0, -0.5], [-0.5, 0.0]])
    assert F.nll_loss(logp, labels([1, 0]), reduction="sum").item() == pytest.approx(5.0)
    np.testing.assert_allclose(F.nll_loss(logp, labels([1, 0]), reduction="none").numpy(), [2.0, 3.0])
    weighted = F.nll_loss(logp, labels([1, 0]), weight=mg.Tensor(np.array([1.0, 3.0])))
    assert weighted.item() == pytest.approx((3 * 2.0 + 1 * 3.0) / 4)
    assert F.nll_loss(logp, labels([1, -100])).item() == pytest.approx(2.0)


def test_dice_loss_by_hand():
    # p = [.5, .5] for target 0. class 0: 1 - 2*.5/(.5 + 1) = 1/3; class 1: 1 - 0/(.5 + 0) = 1
    x = logits([[0.0, 0.0]])
    per_class = F.dice_loss(x, labels([0]), smooth=0.0, reduction="none")
    np.testing.assert_allclose(per_class.numpy(), [1 / 3, 1.0], atol=1e-12)
    assert F.dice_loss(x, labels([0]), smooth=0.0).item() == pytest.approx(2 / 3, abs=1e-12)
    assert F.dice_loss(x, labels([0]), smooth=0.0, reduction="sum").item() == pytest.approx(4 / 3, abs=1e-12)
    # smooth = 1: class 0: 1 - (1 + 1)/(1.5 + 1) = 0.2; class 1: 1 - 1/(0.5 + 1) = 1/3
    np.testing.assert_allclose(F.dice_loss(x, labels([0]), reduction="none").numpy(), [0.2, 1 / 3], atol=1e-12)


def test_dice_loss_ignores_pixels_and_rewards_perfect_predictions():
    x = logits([[0.0, 0.0], [50.0, -50.0]])
    with_ignored = F.dice_loss(x, labels([0, 1]), smooth=0.0, ignore_index=1, reduction="none")
    np.testing.assert_allclose(with_ignored.numpy(), [1 / 3, 1.0], atol=1e-12)
    # a confident, correct (N, C, H, W) prediction has a loss near 0
    target = np.array([[[0, 1], [2, 1]]])
    confident = mg.Tensor(np.moveaxis(np.eye(3)[target], -1, 1) * 40.0)
    assert F.dice_loss(confident, mg.Tensor(target), smooth=0.0).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- gradients by finite differences
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradcheck(rng, reduction):
    x = mg.Tensor(rng.standard_normal((2, 3, 2, 3)), requires_grad=True)
    t = rng.integers(0, 3, (2, 2, 3))
    t[0, 0, 0] = t[1, 1, 2] = 255
    w = mg.Tensor(rng.random(3) + 0.5)
    gradcheck(lambda x: F.cross_entropy(x, mg.Tensor(t), weight=w, ignore_index=255, reduction=reduction,
                                        label_smoothing=0.15), [x])
    rows = mg.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    gradcheck(lambda x: F.cross_entropy(x, labels([2, 0, 1, 1]), reduction=reduction), [rows])


def test_nll_and_dice_gradcheck(rng):
    x = mg.Tensor(rng.standard_normal((2, 4, 3, 2)), requires_grad=True)
    t = rng.integers(0, 4, (2, 3, 2))
    t[1, 0, 1] = 9
    gradcheck(lambda x: F.nll_loss(x, mg.Tensor(t), weight=mg.Tensor(np.arange(1.0, 5.0)), ignore_index=9), [x])
    gradcheck(lambda x: F.dice_loss(x, mg.Tensor(t), ignore_index=9, reduction="none"), [x])
    gradcheck(lambda x: F.dice_loss(x, mg.Tensor(t), ignore_index=9, smooth=0.5), [x])


def test_float32_in_float32_out():
    x = logits(ROWS, dtype=np.float32)
    for loss in (F.cross_entropy(x, labels([1, 0]), weight=mg.Tensor(np.array([1.0, 2.0])), label_smoothing=0.1),
                 F.nll_loss(x, labels([1, 0]), weight=mg.Tensor(np.array([1.0, 2.0]))),
                 F.dice_loss(x, labels([1, 0]))):
        x.grad = None
        loss.backward()
        assert loss.dtype == np.float32 and x.grad.dtype == np.float32
    none = F.cross_entropy(x, labels([1, -100]), reduction="none")
    none.backward(np.ones(2, np.float32))
    assert none.dtype == np.float32 and x.grad.dtype == np.float32


# ---------------------------------------------------------------- PyTorch parity
def _torch_case(rng, shape, weighted, ignore_index):
    classes = shape[1]
    x = rng.standard_normal(shape)
    t = rng.integers(0, classes, (shape[0],) + shape[2:])
    t.reshape(-1)[rng.random(t.size) < 0.25] = ignore_index  # some ignored pixels (a real class when 1)
    w = rng.random(classes) + 0.2 if weighted else None
    return x, t, w


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3, 5)])
def test_cross_entropy_matches_torch(rng, shape):
    torch = require_torch()
    for reduction, weighted, ignore_index, smoothing in itertools.product(
            ["none", "mean", "sum"], [False, True], [-100, 1], [0.0, 0.25]):
        x, t, w = _torch_case(rng, shape, weighted, ignore_index)
        kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
        ours_x = mg.Tensor(x, requires_grad=True)
        ours = F.cross_entropy(ours_x, mg.Tensor(t), weight=None if w is None else mg.Tensor(w), **kwargs)
        theirs_x = torch.tensor(x, requires_grad=True)
        theirs = torch.nn.functional.cross_entropy(theirs_x, torch.tensor(t),
                                                   weight=None if w is None else torch.tensor(w), **kwargs)
        upstream = rng.standard_normal(ours.shape)
        ours.backward(upstream)
        theirs.backward(torch.tensor(upstream))
        case = f"reduction={reduction} weighted={weighted} ignore_index={ignore_index} smoothing={smoothing}"
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=case)
        np.testing.assert_allclose(ours_x.grad.numpy(), theirs_x.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=case)


@pytest.mark.torch
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.4])
def test_cross_entropy_all_ignored_matches_torch(weighted, smoothing):
    torch = require_torch()
    x = np.array([[0.3, -1.2, 2.0], [0.0, 0.5, -0.5]])
    w = np.array([0.5, 2.0, 1.0]) if weighted else None
    ours_x, theirs_x = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours = F.cross_entropy(ours_x, labels([-100, -100]), weight=None if w is None else mg.Tensor(w),
                           label_smoothing=smoothing)
    theirs = torch.nn.functional.cross_entropy(theirs_x, torch.tensor([-100, -100]),
                                               weight=None if w is None else torch.tensor(w), label_smoothing=smoothing)
    ours.backward()
    theirs.backward()
    assert math.isnan(ours.item()) and math.isnan(theirs.item())
    np.testing.assert_array_equal(ours_x.grad.numpy(), theirs_x.grad.numpy())


@pytest.mark.torch
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nll_loss_matches_torch(rng, reduction):
    torch = require_torch()
    x, t, w = _torch_case(rng, (3, 5, 4, 2), True, -100)
    ours_x, theirs_x = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours = F.nll_loss(ours_x, mg.Tensor(t), weight=mg.Tensor(w), reduction=reduction)
    theirs = torch.nn.functional.nll_loss(theirs_x, torch.tensor(t), weight=torch.tensor(w), reduction=reduction)
    upstream = rng.standard_normal(ours.shape)
    ours.backward(upstream)
    theirs.backward(torch.tensor(upstream))
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours_x.grad.numpy(), theirs_x.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.torch
def test_dice_loss_matches_its_definition_written_in_torch(rng):
    torch = require_torch()
    x = rng.standard_normal((2, 3, 4, 4))
    t = rng.integers(0, 3, (2, 4, 4))
    t[0, :2] = 255
    ours_x, theirs_x = mg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours = F.dice_loss(ours_x, mg.Tensor(t), ignore_index=255, smooth=1.0)
    valid = torch.tensor(t != 255)[:, None]
    p = torch.softmax(theirs_x, 1) * valid
    onehot = torch.nn.functional.one_hot(torch.tensor(np.where(t == 255, 0, t)), 3).permute(0, 3, 1, 2) * valid
    theirs = (1 - (2 * (p * onehot).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)).mean()
    ours.backward()
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-12)
    np.testing.assert_allclose(ours_x.grad.numpy(), theirs_x.grad.numpy(), atol=1e-12)


# ---------------------------------------------------------------- errors
def test_target_out_of_range_names_value_and_shapes():
    with pytest.raises(IndexError, match=r"target value 5 .* 3 classes .*\(2, 3\).*\(2,\)"):
        F.cross_entropy(logits(np.zeros((2, 3))), labels([0, 5]))
    with pytest.raises(IndexError, match=r"target value -1 .*ignore_index=-100"):
        F.nll_loss(logits(np.zeros((2, 3))), labels([-1, 0]))
    with pytest.raises(IndexError, match=r"target value 255"):
        F.dice_loss(logits(np.zeros((1, 3, 2, 2))), labels([[[0, 1], [2, 255]]]))


def test_target_dtype_and_shape_errors_name_both_shapes():
    x = logits(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"integer class indices.*float.*\(2, 4, 4\).*\(2, 3, 4, 4\)"):
        F.cross_entropy(x, mg.Tensor(np.zeros((2, 4, 4))))
    with pytest.raises(ValueError, match=r"target shape \(2, 4\) does not match input shape \(2, 3, 4, 4\).*\(2, 4, 4\)"):
        F.cross_entropy(x, labels(np.zeros((2, 4), np.int64)))
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match input shape \(2, 3\)"):
        F.nll_loss(logits(np.zeros((2, 3))), labels([0, 1, 2]))
    with pytest.raises(ValueError, match=r"0-d target.*\(2,\)"):
        F.cross_entropy(logits([0.0, 1.0]), labels([0, 1]))


def test_weight_reduction_and_smoothing_errors():
    x = logits(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\).*\(2, 3\).*\(4,\)"):
        F.cross_entropy(x, labels([0, 1]), weight=mg.Tensor(np.ones(4)))
    with pytest.raises(NotImplementedError, match="weight"):
        F.cross_entropy(x, labels([0, 1]), weight=mg.Tensor(np.ones(3), requires_grad=True))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(x, labels([0, 1]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, labels([0, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"num_classes=4 .*\(2, 3\)"):
        F.dice_loss(x, labels([0, 1]), num_classes=4)
    with pytest.raises(ValueError, match="floating point"):
        F.cross_entropy(labels([[0, 1]]), labels([0]))
