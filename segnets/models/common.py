"""What every segmentation net shares: its config, input checks, crops and ``summary``."""
from collections import namedtuple

import numpy as np

import minigrad
from minigrad import nn


class SizeRule(namedtuple("SizeRule", "first step margin why")):
    """Valid input sizes are ``first + k * step`` (k >= 0), per axis; the output is
    ``margin`` pixels smaller on every side (U-Net with unpadded convs); ``why`` says
    where the rule comes from."""

    def accepts(self, n):
        return n >= self.first and (n - self.first) % self.step == 0

    def nearest(self, n):
        """The valid sizes just below and just above ``n`` (only ``first`` when ``n`` <= ``first``)."""
        return nearest_valid(n, self.first, self.step)


class SegmentationNet(nn.Module):
    """Base class: ``forward(x)`` maps (N, in_channels, H, W) images to (N, num_classes, H', W') logits,
    H' = H - 2 * margin of ``size_rule()`` (H itself but for U-Net with padding='valid').

    ``config`` is everything ``segnets.build_model(**config)`` needs to rebuild the
    net (name, num_classes, in_channels, width and every option), so a checkpoint
    can store it as JSON.
    """

    name = None

    def __init__(self, num_classes, in_channels, width, **options):
        super().__init__()
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        check_int("width", width)
        self.num_classes, self.in_channels, self.width = num_classes, in_channels, width
        self.config = {"name": self.name, "num_classes": num_classes, "in_channels": in_channels,
                       "width": width, **options}

    def size_rule(self):
        """The input sizes this net accepts, as a ``SizeRule``."""
        return self.size_rule_for(**self.config)

    @classmethod
    def size_rule_for(cls, **config):
        """The ``SizeRule`` of the net that ``config`` (``model.config``) describes, without building it."""
        raise NotImplementedError

    def check_input(self, x):
        """(H, W) of ``x``, or a ValueError naming the expected shape or the nearest valid sizes."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name}: input must have shape (N, {self.in_channels}, H, W), got {x.shape}")
        size = x.shape[2], x.shape[3]
        rule = self.size_rule()
        bad = [(axis, n) for axis, n in zip(("height", "width"), size) if not rule.accepts(n)]
        if bad:
            hints = "; ".join(f"{axis} {n}: nearest valid {' or '.join(map(str, rule.nearest(n)))}"
                              for axis, n in bad)
            raise ValueError(f"{self.name}: input size {size[0]}x{size[1]} is not valid ({rule.why}); {hints}")
        return size

    def summary(self, input_size, batch_size=1, print_fn=print):
        """Print (and return) each layer's output shape for an input of ``input_size``, and the totals."""
        return summary(self, input_size, batch_size, print_fn)

    def extra_repr(self):
        return ", ".join(f"{key}={value!r}" for key, value in self.config.items() if key != "name")


# ---------------------------------------------------------------- crops and size checks
def crop(x, top, left, size):
    """``x[..., top:top+h, left:left+w]``, or a ValueError if ``x`` is too small (no copy when nothing is cut)."""
    h, w = size
    if top < 0 or left < 0 or top + h > x.shape[-2] or left + w > x.shape[-1]:
        raise ValueError(f"cannot crop {h}x{w} at offset ({top}, {left}) from a map of shape {x.shape}")
    if (top, left, h, w) == (0, 0) + tuple(x.shape[-2:]):
        return x
    return x[..., top:top + h, left:left + w]


def center_crop(x, size):
    """The central ``size`` window of ``x`` (..., H, W) (the extra pixel of an odd margin goes bottom/right).

    Also crops the masks to the logits of a net that shrinks its input (U-Net 'valid');
    ``x`` itself when nothing is cut, a ValueError when ``size`` is larger than ``x``.
    """
    h, w = size
    if h > x.shape[-2] or w > x.shape[-1]:
        raise ValueError(f"center_crop: a {h}x{w} window is larger than the {x.shape[-2]}x{x.shape[-1]} map")
    return crop(x, (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2, size)


def nearest_valid(n, first, step):
    """The valid sizes ``first + k * step`` just below and just above ``n`` (one if ``n`` < ``first``)."""
    if n <= first:
        return [first]
    below = first + (n - first) // step * step
    return [below, below + step]


def check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


# ---------------------------------------------------------------- summary
def summary(model, input_size, batch_size=1, print_fn=print):
    """Run one forward pass (eval mode, no graph) and list every leaf layer's output shape.

    ``input_size`` is (H, W) or an int. Returns the printed text. The totals count
    every parameter, then the trainable ones (FCN's fixed bilinear kernels are
    parameters that do not require grad). The pass is real: on a full-size net
    and a large input it takes as long as a forward does.
    """
    h, w = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else input_size
    x = minigrad.Tensor(np.zeros((batch_size, model.in_channels, h, w), dtype=np.float32))
    x = x.to(_device_of(model), _dtype_of(model))
    rows = []
    leaves = [(name, m) for name, m in model.named_modules() if name and not m._modules]
    for name, module in leaves:
        module.forward = _recording(name, module, rows)
    was_training = model.training
    try:
        model.eval()
        with minigrad.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
        for _, module in leaves:
            del module.forward
    lines = [f"{type(model).__name__} ({model.config['name']}), input {tuple(x.shape)}",
             f"{'layer':<20} {'type':<16} {'output shape':<28} {'params':>14}"]
    lines += [f"{name:<20} {kind:<16} {shape:<28} {params:>14,}" for name, kind, shape, params in rows]
    lines += [f"output {tuple(out.shape)}",
              f"total parameters: {model.num_parameters():,} "
              f"(trainable {model.num_parameters(only_trainable=True):,})"]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


def _recording(name, module, rows):
    forward = type(module).forward.__get__(module)

    def record(*args, **kwargs):
        out = forward(*args, **kwargs)
        shape = str(out[0].shape) + " + indices" if isinstance(out, tuple) else str(out.shape)
        params = sum(p.numel() for p in module.parameters())
        rows.append((name, type(module).__name__, shape, params))
        return out
    return record


def _device_of(model):
    return next(iter(model.parameters())).device


def _dtype_of(model):
    return next(iter(model.parameters())).dtype
