"""Inverted dropout: kept values are scaled by 1/(1-p) in training, so eval is the identity.

Masks are drawn from ``minigrad.random.generator(input.device)``, so
``minigrad.manual_seed`` makes them repeat. The mask has the input's dtype
(float32 stays float32).
"""
import numpy as np

from ..random import generator
from ..tensor import _result, is_grad_enabled


def _check_p(name, p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: dropout probability has to be between 0 and 1, but got {p}")


def _keep_mask(input, shape, p):
    """1/(1-p) where kept, 0 where dropped, of ``shape`` (broadcastable to the input) and the input's dtype."""
    xp = input.xp
    if p == 1:
        return xp.zeros(shape, dtype=input.dtype)
    uniform = generator(input.device).random(shape, dtype=np.float32)
    return (uniform >= p).astype(input.dtype) * (1 / (1 - p))


def _apply_mask(input, mask, inplace):
    """``input * mask``; in place only when no graph is being recorded.

    With grad mode on we always copy: the engine has no version counters, so an
    earlier op whose backward reads this array would silently see the overwrite.
    """
    if inplace and not is_grad_enabled():
        input.data *= mask
        return input
    return _result(input.data * mask, (input,), lambda g: (g * mask,))


def dropout(input, p=0.5, training=True, inplace=False):
    """Zero each element with probability ``p``, scale the rest by 1/(1-p) (``F.dropout``).

    ``training=False`` or ``p=0`` returns the input itself; ``p=1`` gives zeros.
    ``inplace=True`` overwrites the input only under ``no_grad`` (see ``_apply_mask``).
    """
    _check_p("dropout", p)
    if not training or p == 0:
        return input
    return _apply_mask(input, _keep_mask(input, input.shape, p), inplace)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels with probability ``p`` (``F.dropout2d``), for (N, C, H, W) input.

    As in PyTorch, a 3-D input is read as (N, C, L): one draw per (n, c) either way.
    """
    _check_p("dropout2d", p)
    if input.ndim not in (3, 4):
        raise ValueError(f"dropout2d: expected input of shape (N, C, H, W) (or (N, C, L)), got shape {input.shape}")
    if not training or p == 0:
        return input
    mask_shape = input.shape[:2] + (1,) * (input.ndim - 2)
    return _apply_mask(input, _keep_mask(input, mask_shape, p), inplace)
