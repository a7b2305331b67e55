"""The one helper pair for ops that also take an unbatched input, as PyTorch's do.

``add_batch_axis`` returns the input with a leading batch axis and ``added``: True when
the input was unbatched and the axis was added. ``remove_batch_axis(result, added)``
takes it off the result again. conv2d, the pooling ops and the losses all use these two.
"""
from ..tensor import Tensor
from . import shape as _shape


def add_batch_axis(op, input, batched_ndim, layout="(N, C, H, W)"):
    """(input with a batch axis, added): an input of ``batched_ndim - 1`` dims gets a batch axis of 1.

    ``layout`` names the batched layout in the error for any other number of dims.
    """
    if not isinstance(input, Tensor):
        raise ValueError(f"{op}: input must be a Tensor, got {type(input).__name__}")
    if input.ndim == batched_ndim:
        return input, False
    if input.ndim == batched_ndim - 1:
        return _shape.unsqueeze(input, 0), True
    unbatched = "(" + layout[1:].split(",", 1)[1].strip() if "," in layout else "()"
    raise ValueError(f"{op}: input must be {batched_ndim - 1}-D {unbatched} or {batched_ndim}-D {layout}, "
                     f"got shape {tuple(input.shape)}")


def remove_batch_axis(tensor, added):
    """``tensor`` without the batch axis that ``add_batch_axis`` added (unchanged when ``added`` is False)."""
    return _shape.squeeze(tensor, 0) if added else tensor
