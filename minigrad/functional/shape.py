"""Shape ops: views, indexing, concatenation and padding. Gradients route values back."""
from .. import kernels
from ..tensor import Tensor, _result


def reshape(input, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    try:
        out = input.data.reshape(shape)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {input.shape} ({input.numel()} elements) into {shape}") from None
    return _result(out, (input,), lambda g: (g.reshape(input.shape),))


def flatten(input, start_dim=0, end_dim=-1):
    if input.ndim == 0:
        return reshape(input, (1,))
    start, end = start_dim % input.ndim, end_dim % input.ndim
    merged = 1
    for n in input.shape[start:end + 1]:
        merged *= n
    return reshape(input, input.shape[:start] + (merged,) + input.shape[end + 1:])


def permute(input, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if sorted(d % input.ndim for d in dims) != list(range(input.ndim)):
        raise ValueError(f"permute: dims {dims} are not a permutation of the {input.ndim} dims of shape {input.shape}")
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d % input.ndim] = i
    return _result(input.data.transpose(dims), (input,), lambda g: (g.transpose(inverse),))


def transpose(input, dim0, dim1):
    if input.ndim == 0:  # dims 0 and -1 of a 0-d tensor: nothing to swap (PyTorch)
        _dim(dim0, 0), _dim(dim1, 0)
        return reshape(input, ())
    dims = list(range(input.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(input, dims)


def squeeze(input, dim=None):
    if dim is None:
        shape = tuple(n for n in input.shape if n != 1)
    else:  # one dim or several (PyTorch >= 2.0); a 0-d tensor takes dim 0 or -1
        dims = {_dim(d, input.ndim) for d in ((dim,) if isinstance(dim, int) else dim)}
        shape = tuple(n for i, n in enumerate(input.shape) if not (i in dims and n == 1))
    return reshape(input, shape)


def _dim(dim, ndim):
    """``dim`` as an axis in [0, ndim) (0 for a 0-d tensor), IndexError naming it when out of range."""
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"dim={dim} is out of range for a tensor with {ndim} dimensions")
    return dim % max(ndim, 1)


def unsqueeze(input, dim):
    d = dim % (input.ndim + 1)
    return reshape(input, input.shape[:d] + (1,) + input.shape[d:])


def expand(input, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    from .elementwise import _unbroadcast
    lead = len(shape) - input.ndim
    shape = tuple(input.shape[i - lead] if n == -1 else n for i, n in enumerate(shape))
    return _result(input.xp.broadcast_to(input.data, shape), (input,), lambda g: (_unbroadcast(g, input.shape),))


def _plain_index(index):
    """Turn Tensors inside an index into arrays; say whether the index is advanced."""
    items = index if isinstance(index, tuple) else (index,)
    items = tuple(i.data if isinstance(i, Tensor) else i for i in items)
    advanced = any(hasattr(i, "shape") and getattr(i, "ndim", 0) > 0 or isinstance(i, list) for i in items)
    return (items if isinstance(index, tuple) else items[0]), advanced


def getitem(input, index):
    """``input[index]`` with NumPy semantics; repeated advanced indices accumulate gradients."""
    xp = input.xp
    index, advanced = _plain_index(index)
    out = input.data[index]

    def backward(g):
        grad = xp.zeros(input.shape, dtype=g.dtype)
        if advanced:
            _scatter_add(xp, grad, index, g)
        else:
            grad[index] = g
        return (grad,)
    return _result(out, (input,), backward)


def _scatter_add(xp, target, index, values):
    if xp.__name__ == "numpy":
        xp.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)


def cat(tensors, dim=0):
    """Concatenate along ``dim``; every other dim must match."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    first = tensors[0]
    axis = dim % first.ndim
    for t in tensors[1:]:
        if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ValueError(f"cat: shapes {[x.shape for x in tensors]} differ outside dim {dim}")
        if t.device != first.device:
            raise ValueError(f"cat: tensors are on different devices ({first.device}, {t.device})")
    xp = first.xp
    bounds = [0]
    for t in tensors:
        bounds.append(bounds[-1] + t.shape[axis])
    if axis == 0 or first.shape[0] < 2:
        out = xp.concatenate([t.data for t in tensors], axis=axis)
    else:   # (U-Net's skip connections) the samples' copies on every core where the CPU kernels run
        shape = first.shape[:axis] + (bounds[-1],) + first.shape[axis + 1:]
        out = xp.empty(shape, dtype=xp.result_type(*[t.data for t in tensors]))
        inner = (slice(None),) * (axis - 1)

        def copy(samples):
            if len(samples):
                part = slice(samples[0], samples[-1] + 1)
                for t, lo, hi in zip(tensors, bounds[:-1], bounds[1:]):
                    out[(part,) + inner + (slice(lo, hi),)] = t.data[part]
        kernels.spread(copy, range(first.shape[0]), like=out, cost=8 * out.size)   # ~8 multiply-adds' time per element

    def backward(g):
        slicer = [slice(None)] * g.ndim
        grads = []
        for t, lo, hi in zip(tensors, bounds[:-1], bounds[1:]):
            slicer[axis] = slice(lo, hi)
            grads.append(g[tuple(slicer)] if t.requires_grad else None)
        return tuple(grads)
    return _result(out, tensors, backward)


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors need the same shape, got {[t.shape for t in tensors]}")
    return cat([unsqueeze(t, dim) for t in tensors], dim=dim)


def pad(input, pad, mode="constant", value=0.0):
    """Like ``torch.nn.functional.pad``: ``pad`` pairs (before, after) from the last dim backwards.

    Negative amounts crop (down to an empty dim, not past it). Only ``mode="constant"`` is implemented.
    """
    if mode != "constant":
        raise NotImplementedError(f"pad: mode={mode!r} is not implemented; only 'constant' is")
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: needs an even number of entries, at most 2 per dim of shape {input.shape}, got {tuple(pad)}")
    xp = input.xp
    widths = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        widths[input.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    # negative widths crop first, positive ones pad afterwards
    crop = tuple(slice(-min(b, 0), n + min(a, 0)) for (b, a), n in zip(widths, input.shape))
    grow = [(max(b, 0), max(a, 0)) for b, a in widths]
    if any(n + b + a < 0 for (b, a), n in zip(widths, input.shape)):
        raise ValueError(f"pad: {tuple(pad)} crops more than all of shape {input.shape}")
    cropped = input.data[crop]  # a dim cropped to exactly zero gives an empty result, as in PyTorch
    out = xp.pad(cropped, grow, mode="constant", constant_values=value)
    inner = tuple(slice(b, b + n) for (b, _), n in zip(grow, cropped.shape))

    def backward(g):
        grad = xp.zeros(input.shape, dtype=g.dtype)
        grad[crop] = g[inner]
        return (grad,)
    return _result(out, (input,), backward)
