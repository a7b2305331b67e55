"""Conv2d and ConvTranspose2d: parameters and default init around ``F.conv2d`` / ``F.conv_transpose2d``."""
import math

import numpy as np

from .. import functional as F
from ..functional.im2col import conv_transpose_output_size, pair
from . import init
from .module import Module, Parameter


class _ConvNd(Module):
    """What both convolutions share: geometry checks, the parameters and their init."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 transposed, output_padding, groups, bias):
        super().__init__()
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups != 0:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.output_padding = pair(output_padding, "output_padding")
        self.transposed = transposed
        # PyTorch's layouts: conv (out, in/groups, kh, kw), transposed conv (in, out/groups, kh, kw)
        shape = ((in_channels, out_channels // groups) if transposed
                 else (out_channels, in_channels // groups)) + self.kernel_size
        self.weight = Parameter(np.empty(shape, dtype=np.float32))
        self.bias = Parameter(np.empty(out_channels, dtype=np.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """PyTorch's default: kaiming_uniform(a=sqrt(5)) weight, U(+-1/sqrt(fan_in)) bias."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """2-D convolution of (N, C_in, H, W) input with a (C_out, C_in/groups, kh, kw) weight.

    ``padding`` may be an int, a pair, ``'valid'`` (no padding) or ``'same'``
    (output size = input size; stride must be 1). When 'same' needs an odd total
    padding the extra row/column goes at the bottom/right, as in PyTorch.
    Only zero padding (PyTorch's ``padding_mode='zeros'``) is implemented.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
            if padding == "same" and pair(stride) != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         False, 0, groups, bias)

    def forward(self, input):
        # F.conv2d resolves 'same'/'valid' itself (odd 'same' totals pad one more at the bottom/right)
        return F.conv2d(input, self.weight, self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation, groups=self.groups)


class ConvTranspose2d(_ConvNd):
    """Transposed convolution (the input-gradient of Conv2d) with a (C_in, C_out/groups, kh, kw) weight.

    ``forward(input, output_size=None)``: ``output_size`` (H, W), or the full
    (N, C, H, W), picks the ``output_padding`` that reaches it, as in PyTorch.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         True, output_padding, groups, bias)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than either stride "
                             f"{self.stride} or dilation {self.dilation}")

    def _output_padding(self, input, output_size):
        if output_size is None:
            return self.output_padding
        output_size = tuple(int(s) for s in output_size)[-2:]
        if len(output_size) != 2:
            raise ValueError(f"output_size must have 2 or 4 elements (got {len(output_size)})")
        padding = []
        for axis, wanted in enumerate(output_size):
            smallest = conv_transpose_output_size(input.shape[2 + axis], self.kernel_size[axis], self.stride[axis],
                                                  self.padding[axis], 0, self.dilation[axis])
            largest = smallest + self.stride[axis] - 1
            if not smallest <= wanted <= largest:
                raise ValueError(f"requested an output size of {output_size}, but valid sizes for input of "
                                 f"shape {input.shape} along dim {2 + axis} range from {smallest} to {largest}")
            padding.append(wanted - smallest)
        return tuple(padding)

    def forward(self, input, output_size=None):
        return F.conv_transpose2d(input, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                  output_padding=self._output_padding(input, output_size), groups=self.groups,
                                  dilation=self.dilation)
