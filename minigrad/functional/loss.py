"""Losses for classification and segmentation: cross_entropy, nll_loss, dice_loss.

``cross_entropy`` and ``nll_loss`` are single fused ops: the forward gathers the
target log-probabilities, the backward writes the closed-form gradient in one
pass, with no graph of small ops in between. Both share ``_pick_targets`` (the
checks and the gather of ``weight[target]``) and ``_reduce`` (PyTorch's
normaliser: ``mean`` divides by the summed weight of the non-ignored targets).

Layout is PyTorch's: input ``(N, C)`` or ``(N, C, d1, d2, ...)`` (class axis 1,
so ``(N, C, H, W)`` logits for segmentation), target ``(N,)`` or ``(N, d1, d2, ...)``
of integer class indices; an unbatched ``(C,)`` input takes a 0-d target.
"""
import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..tensor import Tensor, _result, is_grad_enabled
from .activation import softmax
from .batch_axis import add_batch_axis, remove_batch_axis
from .shape import reshape

_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------- shared checks, gather and reduction
def _check_reduction(name, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_input(name, input):
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if input.dtype.kind != "f":
        raise ValueError(f"{name}: input must be floating point, got dtype {input.dtype} (shape {input.shape})")
    if input.ndim < 2:
        raise ValueError(f"{name}: input must have shape (N, C) or (N, C, d1, ...), got shape {input.shape}")


def _target_array(name, input, target):
    """The target as an int64 array on the input's device, after dtype and shape checks."""
    array = target.data if isinstance(target, Tensor) else input.xp.asarray(target)
    if isinstance(target, Tensor) and target.device != input.device:
        raise ValueError(f"{name}: input is on {input.device} but target is on {target.device}")
    expected = (input.shape[0],) + input.shape[2:]
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name}: target must hold integer class indices (int64), got dtype {array.dtype} "
                         f"with target shape {tuple(array.shape)} for input shape {input.shape} "
                         f"(class-probability targets are not supported)")
    if tuple(array.shape) != expected:
        raise ValueError(f"{name}: target shape {tuple(array.shape)} does not match input shape {input.shape}: "
                         f"expected target shape {expected}")
    return array.astype(np.int64, copy=False)


def _class_weight(name, input, weight):
    """``weight`` as a (C,) array of the input's dtype, or None. It is a constant: no gradient reaches it."""
    if weight is None:
        return None
    classes = input.shape[1]
    if isinstance(weight, Tensor):
        if weight.requires_grad and is_grad_enabled():
            raise NotImplementedError(f"{name}: no gradient is implemented for weight (nor is one in PyTorch); "
                                      f"pass weight.detach()")
        if weight.device != input.device:
            raise ValueError(f"{name}: input is on {input.device} but weight is on {weight.device}")
        array = weight.data
    else:
        array = input.xp.asarray(weight)
    if tuple(array.shape) != (classes,):
        raise ValueError(f"{name}: weight must have shape (C,) = ({classes},) for input shape {input.shape}, "
                         f"got weight shape {tuple(array.shape)}")
    return array.astype(input.dtype, copy=False)


def _pick_targets(name, input, target, class_weight, ignore_index):
    """(index, valid, target_weight), each shaped like the target.

    ``index`` is the target with ignored entries set to class 0 (so it can be
    gathered with), ``valid`` marks the entries not equal to ``ignore_index``
    (all of them when it is None), ``target_weight`` is ``weight[target]``
    (1 without weights) and 0 where ignored.
    """
    xp = input.xp
    classes = input.shape[1]
    valid = xp.ones(target.shape, dtype=bool) if ignore_index is None else target != ignore_index
    index = xp.where(valid, target, 0)
    # two reductions; the elementwise search below only runs to word the error
    if index.size and (int(index.min()) < 0 or int(index.max()) >= classes):
        out_of_range = valid & ((target < 0) | (target >= classes))
        value = int(target[out_of_range].reshape(-1)[0])
        allowed = "" if ignore_index is None else f" or equal ignore_index={ignore_index}"
        raise IndexError(f"{name}: target value {value} is out of range for {classes} classes "
                         f"(input shape {input.shape}, target shape {tuple(target.shape)}); "
                         f"targets must lie in [0, {classes}){allowed}")
    if class_weight is None:
        target_weight = valid.astype(input.dtype)
    else:
        target_weight = class_weight[index] * valid
    return index, valid, target_weight


def _one_hot(index, classes, dtype):
    """(N, C, d...) one-hot of an (N, d...) index array, by broadcasting compare."""
    xp = get_array_module(index)
    class_ids = xp.arange(classes).reshape((1, classes) + (1,) * (index.ndim - 1))
    return (index[:, None] == class_ids).astype(dtype)


def _reduce(loss, target_weight, reduction):
    """(output array, normaliser): PyTorch's reductions of a per-element loss.

    ``mean`` divides by the summed target weight (the count of non-ignored
    targets without weights); all ignored gives 0/0 = NaN, as in PyTorch.
    """
    xp = get_array_module(loss)
    if reduction == "none":
        return loss, None
    total = loss.sum()
    if reduction == "sum":
        return xp.asarray(total), None
    normaliser = target_weight.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return xp.asarray(total / normaliser), normaliser


def _upstream_per_element(g, normaliser, valid):
    """The incoming gradient as one factor per target element, 0 where ignored.

    Masking (rather than relying on a zero weight) keeps an all-ignored ``mean``
    (normaliser 0, g/0 = NaN) at a zero gradient, as in PyTorch.
    """
    xp = get_array_module(valid)
    if normaliser is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            g = g / normaliser
    return xp.where(valid, g, 0).astype(g.dtype, copy=False)


def _unbatched(name, input, target):
    """(C,) input with a 0-d target -> (1, C) and (1,); and whether a batch axis was added (``add_batch_axis``)."""
    if isinstance(input, Tensor) and input.ndim == 1:
        target = target if isinstance(target, Tensor) else Tensor._wrap(input.xp.asarray(target))
        if target.ndim != 0:
            raise ValueError(f"{name}: an unbatched input of shape {input.shape} needs a 0-d target, "
                             f"got target shape {target.shape}")
        input, added = add_batch_axis(name, input, 2, layout="(N, C)")
        return input, Tensor._wrap(target.data.reshape(1)), added
    return input, target, False


def _squeezed(out, reduction, added):
    """``out`` without the batch axis ``_unbatched`` added (only a per-element loss has one)."""
    return remove_batch_axis(out, added and reduction == "none")


# ---------------------------------------------------------------- cross_entropy and nll_loss
def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """PyTorch's ``F.cross_entropy`` for integer class targets, fused: log-softmax, gather and reduction.

    Per target element with class ``t``, weight ``w`` (ones without weights) and
    ``eps = label_smoothing`` (PyTorch's formula, weights in the smoothing term too)::

        loss = (1 - eps) * w[t] * -logp[t] + eps / C * sum_c w[c] * -logp[c]

    ignored elements contribute 0; ``mean`` divides the sum by ``sum(w[t])``
    over non-ignored elements (NaN with a zero gradient if all are ignored).
    The gradient w.r.t. the logits is, per element, ``S * softmax - coef`` with
    ``coef[c] = (1 - eps) * w[t] * onehot[c] + eps / C * w[c]`` and ``S = sum_c coef[c]``
    (without weights: ``softmax - onehot_smoothed``), times the upstream
    gradient over the normaliser.

    A floating ``target`` of the input's shape holds class probabilities (soft
    labels, mixup, distillation), as in PyTorch >= 1.10: see ``_cross_entropy_probabilities``.

    Differences from PyTorch: any integer target dtype is accepted; ``weight``
    must not require grad (no gradient is implemented for it, as in PyTorch).
    """
    name = "cross_entropy"
    _check_reduction(name, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if isinstance(target, Tensor) and target.dtype.kind == "f":
        return _cross_entropy_probabilities(input, target, weight, ignore_index, reduction, label_smoothing)
    input, target, squeeze = _unbatched(name, input, target)
    _check_input(name, input)
    target = _target_array(name, input, target)
    class_weight = _class_weight(name, input, weight)
    index, valid, target_weight = _pick_targets(name, input, target, class_weight, ignore_index)

    if kernels.get("cross_entropy_forward", input.data) is not None:  # the fast path: two fused kernels
        out = _cross_entropy_kernels(input, index, valid, target_weight, class_weight, label_smoothing, reduction)
        return _squeezed(out, reduction, squeeze)

    classes, smoothing = input.shape[1], label_smoothing
    xp, x = input.xp, input.data
    # Softmax kept as exp(x - max) and its per-element sum: the backward scales it in one pass.
    exp_shifted, exp_sum, log_sum_exp = _shifted_softmax(x)
    target_at = _flat_class_positions(index, classes)  # where x[n, target, ...] sits in x.ravel()
    loss = target_weight * (log_sum_exp - xp.ascontiguousarray(x).ravel()[target_at])
    # the smoothing term's per-class weights (ones without weights)
    class_w = xp.ones(classes, x.dtype) if class_weight is None else class_weight
    if smoothing > 0:  # sum_c w[c] * -logp[c] = lse * sum(w) - sum_c w[c] * x[c]
        weighted_logits = xp.einsum("nc...,c->n...", x, class_w)
        smooth = (log_sum_exp * class_w.sum() - weighted_logits) * valid
        loss = (1 - smoothing) * loss + (smoothing / classes) * smooth
    out, normaliser = _reduce(loss, target_weight, reduction)

    def backward(g):
        factor = _upstream_per_element(g, normaliser, valid)
        total_weight = (1 - smoothing) * target_weight
        if smoothing > 0:
            total_weight = total_weight + smoothing * class_w.mean()
        # S * softmax * upstream factor
        grad = exp_shifted * (factor * total_weight / exp_sum[:, 0])[:, None]
        grad.ravel()[target_at] -= factor * (1 - smoothing) * target_weight  # the one-hot part of coef
        if smoothing > 0:
            grad -= factor[:, None] * (smoothing / classes) * class_w.reshape((1, classes) + (1,) * (x.ndim - 2))
        return (grad,)
    return _squeezed(_result(out, (input,), backward), reduction, squeeze)


def _shifted_softmax(x):
    """(exp(x - max), its sum over the classes (axis 1, kept), log-sum-exp) of logits (N, C, ...)."""
    xp = get_array_module(x)
    top = x.max(axis=1, keepdims=True)
    exp_shifted = xp.exp(x - top)
    exp_sum = exp_shifted.sum(axis=1, keepdims=True)
    return exp_shifted, exp_sum, (top + xp.log(exp_sum))[:, 0]


def _cross_entropy_probabilities(input, target, weight, ignore_index, reduction, smoothing):
    """``cross_entropy`` with class-probability targets, PyTorch's definition (generic code, both devices).

    With ``q = (1 - eps) * target + eps / C`` (``eps = label_smoothing``) and class
    weights ``w`` (ones without), the per-element loss is ``-sum_c w[c] q[c] logp[c]``;
    ``mean`` divides the sum by the number of elements ``N * d1 * ...`` (not by the
    weights, unlike class-index targets). Gradients: ``softmax * sum_c(w q) - w q``
    for the logits, ``-(1 - eps) * w * logp`` for the target, times the upstream factor.
    """
    name = "cross_entropy"
    if ignore_index is not None and ignore_index >= 0:
        raise ValueError(f"{name}: ignore_index={ignore_index} is not supported with class-probability "
                         f"(floating point) targets, as in PyTorch")
    squeeze = isinstance(input, Tensor) and input.ndim == 1
    if squeeze:
        input = reshape(input, (1,) + input.shape)
        target = reshape(target, (1,) + target.shape) if target.ndim == 1 else target
    _check_input(name, input)
    if target.device != input.device:
        raise ValueError(f"{name}: input is on {input.device} but target is on {target.device}")
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"{name}: target must hold integer class indices or, as floats, class probabilities "
                         f"of the input's shape; got a {target.dtype} target of shape {target.shape} for input "
                         f"shape {input.shape}")
    xp, classes = input.xp, input.shape[1]
    class_weight = _class_weight(name, input, weight)
    w = (xp.ones(classes, input.dtype) if class_weight is None else class_weight)
    w = w.reshape((1, classes) + (1,) * (input.ndim - 2))
    x, t = input.data, target.data.astype(input.dtype, copy=False)
    shifted = x - (x.max(axis=1, keepdims=True) if x.size else 0)
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    wq = w * ((1 - smoothing) * t + smoothing / classes)
    loss = -(wq * logp).sum(axis=1)
    count = loss.size
    if reduction == "none":
        out = loss
    else:
        out = xp.asarray(loss.sum())
        if reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                out = out / out.dtype.type(count)

    def backward(g):
        if reduction == "mean":
            g = g / max(count, 1)  # no elements: an empty gradient
        g = g[:, None] if reduction == "none" else g
        gx = g * (xp.exp(logp) * wq.sum(axis=1, keepdims=True) - wq) if input.requires_grad else None
        gt = g * (-(1 - smoothing) * w * logp) if target.requires_grad else None
        return gx, gt
    return _squeezed(_result(out, (input, target), backward), reduction, squeeze)


def _flat_class_positions(index, classes):
    """For (N, d...) class indices, the flat position of element [n, index, d...] in a contiguous (N, C, d...) array."""
    xp = get_array_module(index)
    n = index.shape[0]
    per_sample = index.size // max(n, 1)
    positions = index.reshape(n, per_sample) * per_sample
    positions += xp.arange(0, n * classes * per_sample, classes * per_sample, dtype=np.int64)[:, None]
    positions += xp.arange(per_sample, dtype=np.int64)
    return positions.reshape(index.shape)


def _cross_entropy_kernels(input, index, valid, target_weight, class_weight, smoothing, reduction):
    """Fast path of ``cross_entropy`` (``minigrad.kernels``): the same formulas as one forward and one backward kernel."""
    loss, lse = kernels.get("cross_entropy_forward", input.data)(input.data, index, valid, class_weight, smoothing)
    out, normaliser = _reduce(loss, target_weight, reduction)

    def backward(g):
        factor = _upstream_per_element(g, normaliser, valid)
        backward_kernel = kernels.get("cross_entropy_backward", input.data)
        return (backward_kernel(input.data, index, class_weight, lse, factor, smoothing),)
    return _result(out, (input,), backward)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """PyTorch's ``F.nll_loss``: ``-weight[t] * input[t]`` per element, on log-probabilities.

    Same target rules, weights and normaliser as ``cross_entropy`` (which is
    ``nll_loss(log_softmax(x, 1), t)``); the gradient is ``-w[t] * onehot`` times the
    upstream gradient over the normaliser.
    """
    name = "nll_loss"
    _check_reduction(name, reduction)
    input, target, squeeze = _unbatched(name, input, target)
    _check_input(name, input)
    target = _target_array(name, input, target)
    class_weight = _class_weight(name, input, weight)
    index, valid, target_weight = _pick_targets(name, input, target, class_weight, ignore_index)

    loss = -target_weight * input.xp.take_along_axis(input.data, index[:, None], axis=1)[:, 0]
    out, normaliser = _reduce(loss, target_weight, reduction)

    def backward(g):
        factor = _upstream_per_element(g, normaliser, valid) * target_weight
        return (-factor[:, None] * _one_hot(index, input.shape[1], input.dtype),)
    return _squeezed(_result(out, (input,), backward), reduction, squeeze)


# ---------------------------------------------------------------- dice
def dice_loss(input, target, num_classes=None, smooth=1.0, ignore_index=None, reduction="mean"):
    """Soft multi-class Dice loss of ``softmax(input, dim=1)`` against one-hot targets (not in PyTorch).

    With ``p = softmax(input, 1)`` and ``t = one_hot(target)``, both (N, C, d...),
    and each sum over the batch and every spatial position whose target is not
    ``ignore_index``, the loss of class ``c`` is::

        loss[c] = 1 - (2 * sum(p[:, c] * t[:, c]) + smooth) / (sum(p[:, c]) + sum(t[:, c]) + smooth)

    ``reduction='none'`` returns the (C,) per-class losses, ``'mean'`` their mean
    over classes, ``'sum'`` their sum. ``smooth`` keeps a class absent from both
    target and prediction near loss 0 and the ratio finite. ``num_classes``, when
    given, must equal ``input.shape[1]`` (a check only). The backward goes
    through the graph of softmax, products and sums.

    Example: logits [[0, 0]] (p = [.5, .5]), target [0], smooth 0: class 0 scores
    1 - 2*.5/(.5 + 1) = 1/3, class 1 scores 1 - 0/(.5 + 0) = 1, so the mean is 2/3.
    """
    name = "dice_loss"
    _check_reduction(name, reduction)
    _check_input(name, input)
    classes = input.shape[1]
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"{name}: num_classes={num_classes} does not match input shape {input.shape} "
                         f"(C={classes} at dim 1)")
    target = _target_array(name, input, target)
    index, valid, _ = _pick_targets(name, input, target, None, ignore_index)

    mask = valid[:, None].astype(input.dtype)
    one_hot = _one_hot(index, classes, input.dtype) * mask
    axes = (0,) + tuple(range(2, input.ndim))
    probs = softmax(input, dim=1) * Tensor._wrap(mask)
    intersection = (probs * Tensor._wrap(one_hot)).sum(dim=axes)
    cardinality = probs.sum(dim=axes) + Tensor._wrap(one_hot.sum(axis=axes))
    per_class = 1 - (2 * intersection + smooth) / (cardinality + smooth)
    if reduction == "none":
        return per_class
    return per_class.mean() if reduction == "mean" else per_class.sum()
