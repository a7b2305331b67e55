"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

Contracting path: five levels of two 3x3 convs + ReLU (widths w, 2w, 4w, 8w, 16w),
a 2x2 max-pool between levels. Expanding path, four times: a 2x2 stride-2
transposed conv that halves the channels, concatenation with the encoder map of
that level (centre-cropped to the same size: "copy and crop"; encoder map first),
two 3x3 convs + ReLU. A final 1x1 conv: 23 conv layers in all.

``upsampling``: "transposed" (the paper's 2x2 stride-2 up-conv), or "bilinear" /
"nearest": resize by 2 then a 3x3 conv (padding 1) that halves the channels, as
common re-implementations do and as Odena, Dumoulin & Olah ("Deconvolution and
checkerboard artifacts", Distill 2016) advise: a stride-2 transposed conv whose
kernel is not a multiple of its stride (or whose weights drift apart) paints a
checkerboard, resize-then-conv cannot (docs/checkerboard.png). Layer ``up{level}``
is then an ``UpConv`` with the conv as ``up{level}.conv``; 2.25x the up-convs' weights.

``padding="valid"`` (the paper): unpadded convs, so the output is smaller than
the input (572 -> 388) and the input must be 124 mod 16 and >= 188 (every pool
then sees an even size); other sizes raise a ValueError naming the nearest valid
ones. ``padding="same"``: padded convs, output size = input size, which must be a
multiple of 16. ``batch_norm=True`` (not in the paper) puts a BN between each 3x3
conv and its ReLU; the convs keep their bias either way.

Init, as in the paper: conv weights from N(0, 2/N), N the number of inputs of one
output unit (9 * in_channels for a 3x3 conv, in_channels for the 2x2 stride-2
up-convs, whose windows do not overlap), biases zero.

Layer names: ``enc1`` ... ``enc5`` and ``dec4`` ... ``dec1`` (each ``conv1``, ``bn1``,
``conv2``, ``bn2``), ``pool1`` ... ``pool4``, ``up4`` ... ``up1``, ``final``.
"""
import math

import minigrad
from minigrad import functional as F
from minigrad import nn

from .common import SegmentationNet, SizeRule, center_crop, check_bool

PADDINGS = ("valid", "same")
UPSAMPLINGS = ("transposed", "bilinear", "nearest")


class UpConv(nn.Module):
    """Resize by 2 (``mode`` "bilinear", align_corners=False, or "nearest"), then a 3x3 conv with padding 1."""

    def __init__(self, in_channels, out_channels, mode):
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        align = False if self.mode == "bilinear" else None
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align))

    def extra_repr(self):
        return f"mode={self.mode!r}"


def check_upsampling(upsampling):
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {', '.join(map(repr, UPSAMPLINGS))}, got {upsampling!r}")


class DoubleConv(nn.Module):
    """conv 3x3 -> (BN) -> ReLU -> conv 3x3 -> (BN) -> ReLU."""

    def __init__(self, in_channels, out_channels, padding, batch_norm):
        super().__init__()
        pad = 1 if padding == "same" else 0
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=pad)
        self.bn1 = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=pad)
        self.bn2 = nn.BatchNorm2d(out_channels) if batch_norm else None

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x) if self.bn1 is not None else x)
        x = self.conv2(x)
        return F.relu(self.bn2(x) if self.bn2 is not None else x)


class UNet(SegmentationNet):
    name = "unet"

    def __init__(self, num_classes=2, in_channels=1, width=64, padding="valid", batch_norm=False,
                 upsampling="transposed"):
        if padding not in PADDINGS:
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        check_bool("batch_norm", batch_norm)
        check_upsampling(upsampling)
        super().__init__(num_classes, in_channels, width, padding=padding, batch_norm=batch_norm,
                         upsampling=upsampling)
        self.padding = padding
        channels = in_channels
        for level in range(1, 6):
            setattr(self, f"enc{level}", DoubleConv(channels, width << (level - 1), padding, batch_norm))
            channels = width << (level - 1)
            if level < 5:
                setattr(self, f"pool{level}", nn.MaxPool2d(2, stride=2))
        for level in range(4, 0, -1):
            setattr(self, f"up{level}", nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)
                    if upsampling == "transposed" else UpConv(channels, channels // 2, upsampling))
            setattr(self, f"dec{level}", DoubleConv(channels, channels // 2, padding, batch_norm))
            channels //= 2
        self.final = nn.Conv2d(channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):  # weight (in, out, 2, 2): each output sees `in` inputs
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_channels))
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            else:
                continue
            nn.init.zeros_(module.bias)

    @classmethod
    def size_rule_for(cls, padding="valid", **_):
        if padding == "valid":  # 188 - 184 = 4: the smallest input that leaves an output
            return SizeRule(188, 16, 92, "with padding='valid' every pool must see an even size: 124 mod 16, >= 188")
        return SizeRule(16, 16, 0, "with padding='same' every pool must see an even size: multiples of 16")

    def forward(self, x):
        self.check_input(x)
        skips = []
        for level in range(1, 5):
            x = getattr(self, f"enc{level}")(x)
            skips.append(x)
            x = getattr(self, f"pool{level}")(x)
        x = self.enc5(x)
        for level in range(4, 0, -1):
            x = getattr(self, f"up{level}")(x)
            skip = center_crop(skips[level - 1], x.shape[-2:])
            x = getattr(self, f"dec{level}")(minigrad.cat([skip, x], dim=1))
        return self.final(x)
