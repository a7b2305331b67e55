"""Arithmetic and pointwise math, with broadcasting undone in the gradients."""
import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..tensor import Tensor, _result, as_tensor


def _unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _operands(a, b):
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    b = as_tensor(b, like=a)
    if a.device != b.device:
        raise ValueError(f"operands are on different devices: {a.device} (shape {a.shape}) and {b.device} (shape {b.shape})")
    return a, b


def add(a, b, alpha=1):
    """``a + alpha * b``, as ``torch.add``."""
    if alpha != 1:
        b = mul(b, alpha) if isinstance(b, Tensor) else b * alpha
    a, b = _operands(a, b)
    return _result(a.data + b.data, (a, b), lambda g: (
        _unbroadcast(g, a.shape) if a.requires_grad else None,
        _unbroadcast(g, b.shape) if b.requires_grad else None))


def sub(a, b, alpha=1):
    """``a - alpha * b``, as ``torch.sub``."""
    if alpha != 1:
        b = mul(b, alpha) if isinstance(b, Tensor) else b * alpha
    a, b = _operands(a, b)
    return _result(a.data - b.data, (a, b), lambda g: (
        _unbroadcast(g, a.shape) if a.requires_grad else None,
        _unbroadcast(-g, b.shape) if b.requires_grad else None))


def mul(a, b):
    a, b = _operands(a, b)
    return _result(a.data * b.data, (a, b), lambda g: (
        _unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
        _unbroadcast(g * a.data, b.shape) if b.requires_grad else None))


def div(a, b):
    a, b = _operands(a, b)
    return _result(a.data / b.data, (a, b), lambda g: (
        _unbroadcast(g / b.data, a.shape) if a.requires_grad else None,
        _unbroadcast(-g * a.data / (b.data * b.data), b.shape) if b.requires_grad else None))


def pow(a, b):
    """a ** b; the gradient for b needs a > 0 where it is used, as in PyTorch."""
    a, b = _operands(a, b)
    out = a.data ** b.data

    def backward(g):
        xp = a.xp
        ga = _unbroadcast(g * b.data * a.data ** (b.data - 1), a.shape) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            log_a = xp.log(xp.where(a.data > 0, a.data, 1))
            gb = _unbroadcast(g * out * log_a, b.shape)
        return ga, gb
    return _result(out, (a, b), backward)


def neg(a):
    return _result(-a.data, (a,), lambda g: (-g,))


def abs(a):
    xp = a.xp
    return _result(xp.abs(a.data), (a,), lambda g: (g * xp.sign(a.data),))


def exp(a):
    out = a.xp.exp(a.data)
    return _result(out, (a,), lambda g: (g * out,))


def log(a):
    return _result(a.xp.log(a.data), (a,), lambda g: (g / a.data,))


def sqrt(a):
    out = a.xp.sqrt(a.data)
    return _result(out, (a,), lambda g: (g / (2 * out),))


def clamp(a, min=None, max=None):
    """``minimum(maximum(a, min), max)``; ``min`` and ``max`` are numbers or Tensors that broadcast.

    Gradients follow PyTorch's rule: ``a`` gets it where ``min <= a <= max``, a Tensor
    ``min`` where ``a < min`` (and ``min < max`` when both are given), a Tensor ``max``
    where ``a > max`` or ``max < min`` (so where ``min > max`` the result is ``max``).
    """
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    xp = a.xp
    bounds = [b for b in (min, max) if isinstance(b, Tensor)]
    lo = min.data if isinstance(min, Tensor) else min
    hi = max.data if isinstance(max, Tensor) else max
    out = a.data
    if lo is not None:
        out = xp.maximum(out, lo)
    if hi is not None:
        out = xp.minimum(out, hi)
    out = out.astype(xp.result_type(a.data, *[b.data for b in bounds]), copy=False)

    def backward(g):
        keep = xp.ones(out.shape, dtype=bool)
        if lo is not None:
            keep &= a.data >= lo
        if hi is not None:
            keep &= a.data <= hi
        grads = [_unbroadcast(g * keep, a.shape) if a.requires_grad else None]
        if isinstance(min, Tensor):
            below = (a.data < lo) & (True if hi is None else lo < hi)
            grads.append(_unbroadcast(g * below, min.shape) if min.requires_grad else None)
        if isinstance(max, Tensor):
            above = (a.data > hi) | (False if lo is None else hi < lo)
            grads.append(_unbroadcast(g * above, max.shape) if max.requires_grad else None)
        return tuple(grads)
    return _result(out, (a, *bounds), backward)


def maximum(a, b):
    """Elementwise maximum; a tie splits the gradient in half between ``a`` and ``b``, as in PyTorch."""
    a, b = _operands(a, b)
    return _select(a, b, a.data > b.data, a.xp.maximum(a.data, b.data))


def minimum(a, b):
    """Elementwise minimum; a tie splits the gradient in half between ``a`` and ``b``, as in PyTorch."""
    a, b = _operands(a, b)
    return _select(a, b, a.data < b.data, a.xp.minimum(a.data, b.data))


def _select(a, b, take_a, out):
    """Gradient routing for ``out`` (NaN-propagating): to ``a`` where ``take_a``, else to ``b``, half each on a tie."""
    xp = a.xp
    share_a = (take_a + 0.5 * (a.data == b.data)).astype(xp.result_type(a.data, b.data), copy=False)
    return _result(out, (a, b), lambda g: (
        _unbroadcast(g * share_a, a.shape) if a.requires_grad else None,
        _unbroadcast(g * (1 - share_a), b.shape) if b.requires_grad else None))


def where(condition, a, b):
    """``a`` where ``condition`` else ``b``; no gradient to the condition."""
    a, b = _operands(a, b)
    cond = condition.data if isinstance(condition, Tensor) else a.xp.asarray(condition)
    return _result(a.xp.where(cond, a.data, b.data), (a, b), lambda g: (
        _unbroadcast(g * cond, a.shape) if a.requires_grad else None,
        _unbroadcast(g * ~cond, b.shape) if b.requires_grad else None))


def matmul(a, b):
    """Matrix product with NumPy's rules for 1-D and batched operands."""
    a, b = _operands(a, b)
    xp = a.xp
    out = xp.asarray(_matmul(a.data, b.data))  # 1-D @ 1-D: a 0-d array, not a scalar

    def backward(g):
        # promote 1-D operands to matrices, and g to their product's shape, so one rule covers every case
        ad = a.data[None, :] if a.ndim == 1 else a.data
        bd = b.data[:, None] if b.ndim == 1 else b.data
        gd = g.reshape(np.broadcast_shapes(ad.shape[:-2], bd.shape[:-2]) + (ad.shape[-2], bd.shape[-1]))
        ga = _unbroadcast(_matmul(gd, xp.swapaxes(bd, -1, -2)), ad.shape).reshape(a.shape) if a.requires_grad else None
        gb = _unbroadcast(_matmul(xp.swapaxes(ad, -1, -2), gd), bd.shape).reshape(b.shape) if b.requires_grad else None
        return ga, gb
    return _result(out, (a, b), backward)


def _matmul(x, y):
    """``xp.matmul``, or the backend's threaded product (``kernels.batched_matmul``: the CPU pool) where one exists."""
    fast = kernels.get("batched_matmul", x) if x.ndim >= 2 and y.ndim >= 2 and x.dtype == y.dtype else None
    return fast(x, y) if fast is not None else get_array_module(x).matmul(x, y)
