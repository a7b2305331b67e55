"""Activations and the softmax family."""
from .. import kernels
from ..tensor import _result


def relu(input, inplace=False):
    """max(x, 0); the gradient at 0 is 0, as in PyTorch. ``inplace`` is accepted and ignored.

    The backward reads the sign from the output (kept anyway: the next op's input)
    instead of keeping a mask of the input.
    """
    fast = kernels.get("relu", input.data)
    out = fast(input.data) if fast is not None else input.xp.maximum(input.data, 0)
    grad = kernels.get("relu_grad", out)  # one pass, no boolean temporary
    if grad is not None:
        return _result(out, (input,), lambda g: (grad(g, out),))
    return _result(out, (input,), lambda g: (g * (out > 0),))


def leaky_relu(input, negative_slope=0.01, inplace=False):
    positive = input.data > 0
    scale = input.xp.where(positive, 1, negative_slope).astype(input.dtype)
    return _result(input.data * scale, (input,), lambda g: (g * scale,))


def sigmoid(input):
    xp = input.xp
    # split by sign so exp never overflows
    e = xp.exp(-xp.abs(input.data))
    out = xp.where(input.data >= 0, 1 / (1 + e), e / (1 + e)).astype(input.dtype, copy=False)
    return _result(out, (input,), lambda g: (g * out * (1 - out),))


def tanh(input):
    out = input.xp.tanh(input.data)
    return _result(out, (input,), lambda g: (g * (1 - out * out),))


def log_softmax(input, dim=None, dtype=None):
    """log(softmax(x)) computed stably: x - max - log(sum(exp(x - max)))."""
    dim = _softmax_dim(input, dim)
    xp = input.xp
    x = input.data if dtype is None else input.data.astype(dtype)
    shifted = x - _max_or_zero(x, dim)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=dim, keepdims=True),)
    return _result(out, (input,), backward)


def _max_or_zero(x, dim):
    """The max along ``dim`` (kept) for the stable shift; a zero-size input has none and needs none."""
    return x.max(axis=dim, keepdims=True) if x.size else 0


def softmax(input, dim=None, dtype=None):
    dim = _softmax_dim(input, dim)
    xp = input.xp
    x = input.data if dtype is None else input.data.astype(dtype)
    e = xp.exp(x - _max_or_zero(x, dim))
    out = e / e.sum(axis=dim, keepdims=True)

    def backward(g):
        return (out * (g - (g * out).sum(axis=dim, keepdims=True)),)
    return _result(out, (input,), backward)


def _softmax_dim(input, dim):
    if dim is None:  # PyTorch's legacy rule for an implicit dim
        dim = 0 if input.ndim in (0, 1, 3) else 1
    if not -input.ndim <= dim < max(input.ndim, 1):
        raise IndexError(f"dim={dim} is out of range for input of shape {input.shape}")
    return dim
