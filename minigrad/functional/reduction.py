"""Reductions: sum, mean, max/min with indices, argmax."""
import builtins

from ..tensor import Tensor, _result


def _axes(dim, ndim):
    """The axes ``dim`` names; a 0-d tensor takes dim 0 or -1 and reduces nothing, as in PyTorch."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -builtins.max(ndim, 1) <= d < builtins.max(ndim, 1):
            raise IndexError(f"dim={d} is out of range for a tensor with {ndim} dimensions")
    if ndim == 0:
        return ()
    return tuple(d % ndim for d in dims)


def _expand_back(g, shape, axes, keepdim):
    """Re-insert reduced axes so ``g`` broadcasts against the input."""
    if not keepdim:
        for a in sorted(axes):
            g = g.reshape(g.shape[:a] + (1,) + g.shape[a:])
    return g


def sum(input, dim=None, keepdim=False):
    xp = input.xp
    axes = _axes(dim, input.ndim)
    out = input.data.sum(axis=axes, keepdims=keepdim)
    return _result(out, (input,), lambda g: (
        xp.broadcast_to(_expand_back(g, input.shape, axes, keepdim), input.shape),))


def mean(input, dim=None, keepdim=False):
    xp = input.xp
    axes = _axes(dim, input.ndim)
    count = 1
    for a in axes:
        count *= input.shape[a]
    out = input.data.mean(axis=axes, keepdims=keepdim)
    return _result(out, (input,), lambda g: (
        xp.broadcast_to(_expand_back(g, input.shape, axes, keepdim) / count, input.shape),))


def _extreme(input, dim, keepdim, pick):
    """max/min over ``dim``: (values, indices); the gradient goes to the first extreme element."""
    xp = input.xp
    if dim is None:
        flat = input.data.reshape(-1)
        index = int(pick(flat))
        values = flat[index]

        def backward_all(g):
            grad = xp.zeros(flat.shape, dtype=input.dtype)
            grad[index] = g
            return (grad.reshape(input.shape),)
        return _result(values, (input,), backward_all)

    if input.ndim == 0:  # dim 0 or -1 of a 0-d tensor: its one element, at index 0 (PyTorch)
        _axes(dim, 0)
        return _result(input.data.copy(), (input,), lambda g: (g,)), Tensor._wrap(xp.zeros((), "int64"))
    (axis,) = _axes(dim, input.ndim)
    indices = xp.expand_dims(pick(input.data, axis=axis), axis)
    values = xp.take_along_axis(input.data, indices, axis=axis)

    def backward(g):
        # a one-hot mask along the axis (not put_along_axis, which older CuPy lacks)
        positions = xp.arange(input.shape[axis]).reshape((-1,) + (1,) * (input.ndim - axis - 1))
        return ((positions == indices) * (g if keepdim else xp.expand_dims(g, axis)),)
    if not keepdim:
        values = values.squeeze(axis)
    out_indices = indices if keepdim else indices.squeeze(axis)
    return _result(values, (input,), backward), Tensor._wrap(out_indices.astype("int64", copy=False))


def max(input, dim=None, keepdim=False):
    """Like ``torch.max``: the largest value, ``(values, indices)`` along ``dim``, or with a Tensor
    in place of ``dim`` the elementwise ``maximum``."""
    if isinstance(dim, Tensor):
        from .elementwise import maximum
        return maximum(input, dim)
    return _extreme(input, dim, keepdim, lambda a, axis=None: a.argmax(axis=axis))


def min(input, dim=None, keepdim=False):
    """Like ``torch.min``; with a Tensor in place of ``dim`` the elementwise ``minimum``."""
    if isinstance(dim, Tensor):
        from .elementwise import minimum
        return minimum(input, dim)
    return _extreme(input, dim, keepdim, lambda a, axis=None: a.argmin(axis=axis))


def argmax(input, dim=None, keepdim=False):
    """Index of the largest value (flat when ``dim`` is None); int64, no gradient."""
    if dim is None:
        return Tensor._wrap(input.xp.asarray(input.data.argmax(), dtype="int64"))
    if input.ndim == 0:
        _axes(dim, 0)
        return Tensor._wrap(input.xp.zeros((), "int64"))
    (axis,) = _axes(dim, input.ndim)
    out = input.data.argmax(axis=axis).astype("int64", copy=False)
    return Tensor._wrap(input.xp.expand_dims(out, axis) if keepdim else out)
