"""Arithmetic and pointwise math, with broadcasting undone in the gradients."""
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


def add(a, b):
    a, b = _operands(a, b)
    return _result(a.data + b.data, (a, b), lambda g: (
        _unbroadcast(g, a.shape) if a.requires_grad else None,
        _unbroadcast(g, b.shape) if b.requires_grad else None))


def sub(a, b):
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
    """Clip to [min, max]; the gradient passes where the value was not clipped."""
    xp = a.xp
    out = xp.clip(a.data, min, max)

    def backward(g):
        keep = xp.ones(a.shape, dtype=bool)
        if min is not None:
            keep &= a.data >= min
        if max is not None:
            keep &= a.data <= max
        return (g * keep,)
    return _result(out, (a,), backward)


def maximum(a, b):
    """Elementwise maximum; a tie sends the gradient to ``a``."""
    a, b = _operands(a, b)
    take_a = a.data >= b.data
    return _result(a.xp.where(take_a, a.data, b.data), (a, b), lambda g: (
        _unbroadcast(g * take_a, a.shape) if a.requires_grad else None,
        _unbroadcast(g * ~take_a, b.shape) if b.requires_grad else None))


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
    out = xp.matmul(a.data, b.data)

    def backward(g):
        ad, bd, gd = a.data, b.data, g
        # promote 1-D operands to matrices so one rule covers every case
        if ad.ndim == 1:
            ad, gd = ad[None, :], gd[..., None, :]
        if bd.ndim == 1:
            bd, gd = bd[:, None], gd[..., :, None]
        ga = _unbroadcast(xp.matmul(gd, xp.swapaxes(bd, -1, -2)), ad.shape).reshape(a.shape) if a.requires_grad else None
        gb = _unbroadcast(xp.matmul(xp.swapaxes(ad, -1, -2), gd), bd.shape).reshape(b.shape) if b.requires_grad else None
        return ga, gb
    return _result(out, (a, b), backward)
