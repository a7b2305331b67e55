"""linear: ``y = x W^T + b`` over the last dim, forward and backward side by side."""
import numpy as np

from ..tensor import _result
from .elementwise import _matmul  # the backend's threaded product where there is one


def linear(input, weight, bias=None):
    """Like ``torch.nn.functional.linear``: input (*, in), weight (out, in) or (in,), bias (out,) or ().

    The product is one 2-D matrix product over all leading dims flattened; the
    weight gradient is ``g^T x`` over the same flattening, the bias gradient the sum of ``g``.
    """
    if weight.ndim not in (1, 2):
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features) or 1-D, got shape {weight.shape}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input of shape {input.shape} needs a last dim equal to in_features="
                         f"{weight.shape[-1]} (weight shape {weight.shape})")
    lead, features = input.shape[:-1], weight.shape[-1]
    w = weight.data if weight.ndim == 2 else weight.data[None, :]
    x = input.data.reshape(int(np.prod(lead, dtype=np.int64)), features)
    out = _matmul(x, w.T)
    if bias is not None:
        if bias.ndim > 1 or bias.numel() not in (1, w.shape[0]):
            raise ValueError(f"linear: bias must have shape ({w.shape[0]},) for weight of shape {weight.shape}, "
                             f"got {bias.shape}")
        out = out + bias.data
    out_shape = lead + ((w.shape[0],) if weight.ndim == 2 else ())

    def backward(g):
        g = g.reshape(x.shape[0], w.shape[0])
        gx = _matmul(g, w).reshape(input.shape) if input.requires_grad else None
        gw = _matmul(g.T, x).reshape(weight.shape) if weight.requires_grad else None
        gb = None
        if bias is not None and bias.requires_grad:
            gb = g.sum(axis=0).reshape(bias.shape) if bias.ndim else g.sum().reshape(())
        return gx, gw, gb
    parents = (input, weight) if bias is None else (input, weight, bias)
    return _result(out.reshape(out_shape), parents, lambda g: backward(g)[:len(parents)])
