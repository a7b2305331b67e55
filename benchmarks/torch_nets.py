"""Minimal PyTorch twins of the segnets nets, parameterised by width like segnets.

Layer names follow segnets' models (conv1_1, bn1_1, fc6, score_fr, upscore2,
deconv5_1, enc1.conv1, up4, dec4, final, ...), so weights copy across by name.
Architectures (``width`` = channels of the first block, 64 in the papers):

* FCN-32s/16s/8s: VGG16 convs (ReLU, 2x2 max-pool with ceil_mode), fc6 as a
  ``fc_kernel`` conv and fc7 as a 1x1 conv (64*width channels, dropout 0.5), 1x1
  score layers, fixed bilinear transposed-conv upsampling (no bias; learnable with
  ``learn_upsampling``), skip fusion with Caffe's crop offsets when ``pad100``
  (conv1_1 padding 100) and with top-left crops otherwise.
* DeconvNet: VGG16 convs with BatchNorm, pools that keep their switches, fc6/fc7
  with BatchNorm, a ``fc_kernel`` deconv-fc6, then mirrored 3x3 transposed convs
  with BatchNorm after max_unpool2d with the switches, and a 1x1 score.
* U-Net: five levels of two 3x3 convs (``padding`` "valid" or "same", optional
  BatchNorm), 2x2/2 up-convs, centre-cropped skip concatenation, 1x1 score.
* DeepLab-LargeFOV / v2 ASPP-L and SegNet: see their classes.
"""
import torch
from torch import nn
from torch.nn import functional as F

VGG16_STAGES = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))  # (width multiplier, convs) per stage


def _vgg16(module, in_channels, width, first_padding, batch_norm):
    """Add conv{s}_{i} (and bn{s}_{i}) to ``module``; returns the names per stage and the last width."""
    stages, channels = [], in_channels
    for s, (mult, count) in enumerate(VGG16_STAGES, start=1):
        stages.append([f"{s}_{i}" for i in range(1, count + 1)])
        for i in range(1, count + 1):
            padding = first_padding if (s, i) == (1, 1) else 1
            module.add_module(f"conv{s}_{i}", nn.Conv2d(channels, width * mult, 3, padding=padding))
            if batch_norm:
                module.add_module(f"bn{s}_{i}", nn.BatchNorm2d(width * mult))
            channels = width * mult
    return stages, channels


def bilinear_weight(channels, kernel):
    """FCN's upsample_filt on the diagonal: channel c upsamples channel c only."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    profile = 1 - (torch.arange(kernel, dtype=torch.float64) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel, dtype=torch.float64)
    weight[range(channels), range(channels)] = profile[:, None] * profile[None, :]
    return weight.float()


class ResizeConv(nn.Module):
    """FCN's upsampling="bilinear"/"nearest": resize by ``factor``, then a 3x3 conv (no bias) set to the identity."""

    def __init__(self, channels, factor, mode, learn):
        super().__init__()
        self.factor, self.mode = factor, mode
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[range(channels), range(channels), 1, 1] = 1.0
        self.conv.weight.requires_grad_(learn)

    def forward(self, x):
        align = False if self.mode == "bilinear" else None
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=align))


def _upsampler(channels, factor, padded, learn, upsampling="transposed"):
    """A 2f x 2f, stride f transposed conv initialised bilinear; padding f/2 gives exactly f times the size."""
    if upsampling != "transposed":
        return ResizeConv(channels, factor, upsampling, learn)
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor,
                               padding=factor // 2 if padded else 0, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_weight(channels, 2 * factor))
    layer.weight.requires_grad_(learn)
    return layer


def _crop(x, offset, size):
    return x[..., offset:offset + size[0], offset:offset + size[1]]


class FCN(nn.Module):
    SKIPS = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}  # how many pool-level skips are fused

    def __init__(self, variant, num_classes, in_channels=3, width=64, pad100=True, fc_kernel=7,
                 learn_upsampling=False, upsampling="transposed"):
        super().__init__()
        self.variant, self.pad100, self.k = variant, pad100, fc_kernel
        self.stages, channels = _vgg16(self, in_channels, width, 100 if pad100 else 1, batch_norm=False)
        fc, padded = 64 * width, not pad100
        self.fc6 = nn.Conv2d(channels, fc, fc_kernel, padding=0 if pad100 else (fc_kernel - 1) // 2)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        skips = self.SKIPS[variant]
        if skips == 0:
            self.upscore = _upsampler(num_classes, 32, padded, learn_upsampling, upsampling)
            return
        self.score_pool4 = nn.Conv2d(8 * width, num_classes, 1)
        self.upscore2 = _upsampler(num_classes, 2, padded, learn_upsampling, upsampling)
        if skips == 1:
            self.upscore16 = _upsampler(num_classes, 16, padded, learn_upsampling, upsampling)
            return
        self.score_pool3 = nn.Conv2d(4 * width, num_classes, 1)
        self.upscore_pool4 = _upsampler(num_classes, 2, padded, learn_upsampling, upsampling)
        self.upscore8 = _upsampler(num_classes, 8, padded, learn_upsampling, upsampling)

    def _offsets(self):
        """Caffe's crop offsets for the pad100 geometry (fc6 of kernel k, no padding)."""
        k = self.k
        return {"fcn32s": (131 - 16 * k,), "fcn16s": (k - 2, 139 - 16 * k),
                "fcn8s": (k - 2, 2 * k - 5, 143 - 16 * k)}[self.variant] if self.pad100 else (0, 0, 0)

    def _fuse(self, up, score, offset):
        if self.pad100:
            return up + _crop(score, offset, up.shape[-2:])
        return _crop(up, 0, score.shape[-2:]) + score

    def forward(self, x):
        size = x.shape[-2:]
        pools = []
        for names in self.stages:
            for name in names:
                x = F.relu(getattr(self, f"conv{name}")(x))
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            pools.append(x)
        x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        x = self.score_fr(x)
        offsets = self._offsets()
        if self.variant == "fcn32s":
            return _crop(self.upscore(x), offsets[0], size)
        x = self._fuse(self.upscore2(x), self.score_pool4(pools[3]), offsets[0])
        if self.variant == "fcn16s":
            return _crop(self.upscore16(x), offsets[1], size)
        x = self._fuse(self.upscore_pool4(x), self.score_pool3(pools[2]), offsets[1])
        return _crop(self.upscore8(x), offsets[2], size)


class DeconvNet(nn.Module):
    DECODER = ((5, (8, 8, 8)), (4, (8, 8, 4)), (3, (4, 4, 2)), (2, (2, 1)), (1, (1, 1)))  # width multipliers

    def __init__(self, num_classes, in_channels=3, width=64, fc_kernel=7):
        super().__init__()
        self.stages, channels = _vgg16(self, in_channels, width, 1, batch_norm=True)
        fc = 64 * width
        self.fc6, self.bnfc6 = nn.Conv2d(channels, fc, fc_kernel), nn.BatchNorm2d(fc)
        self.fc7, self.bnfc7 = nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc)
        self.fc6_deconv, self.fc6_deconv_bn = nn.ConvTranspose2d(fc, channels, fc_kernel), nn.BatchNorm2d(channels)
        self.decoder = []
        for stage, mults in self.DECODER:
            self.decoder.append((stage, [f"{stage}_{i}" for i in range(1, len(mults) + 1)]))
            for i, mult in enumerate(mults, start=1):
                self.add_module(f"deconv{stage}_{i}", nn.ConvTranspose2d(channels, width * mult, 3, padding=1))
                self.add_module(f"debn{stage}_{i}", nn.BatchNorm2d(width * mult))
                channels = width * mult
        self.seg_score = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        switches = []
        for names in self.stages:
            for name in names:
                x = F.relu(getattr(self, f"bn{name}")(getattr(self, f"conv{name}")(x)))
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
            switches.append((indices, size))
        x = F.relu(self.bnfc6(self.fc6(x)))
        x = F.relu(self.bnfc7(self.fc7(x)))
        x = F.relu(self.fc6_deconv_bn(self.fc6_deconv(x)))
        for stage, names in self.decoder:
            indices, size = switches[stage - 1]
            x = F.max_unpool2d(x, indices, 2, 2, output_size=size)
            for name in names:
                x = F.relu(getattr(self, f"debn{name}")(getattr(self, f"deconv{name}")(x)))
        return self.seg_score(x)


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, padding, batch_norm):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=padding)
        self.batch_norm = batch_norm
        if batch_norm:
            self.bn1, self.bn2 = nn.BatchNorm2d(out_channels), nn.BatchNorm2d(out_channels)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x) if self.batch_norm else x)
        x = self.conv2(x)
        return F.relu(self.bn2(x) if self.batch_norm else x)


class UpConv(nn.Module):
    """Resize by 2 (bilinear, align_corners=False, or nearest), then a 3x3 conv with padding 1."""

    def __init__(self, in_channels, out_channels, mode):
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        align = False if self.mode == "bilinear" else None
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align))


class UNet(nn.Module):
    def __init__(self, num_classes, in_channels=3, width=64, padding="valid", batch_norm=False,
                 upsampling="transposed"):
        super().__init__()
        pad = {"valid": 0, "same": 1}[padding]
        channels = in_channels
        for level in range(1, 6):
            self.add_module(f"enc{level}", DoubleConv(channels, width * 2 ** (level - 1), pad, batch_norm))
            channels = width * 2 ** (level - 1)
        for level in range(4, 0, -1):
            self.add_module(f"up{level}", nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)
                            if upsampling == "transposed" else UpConv(channels, channels // 2, upsampling))
            self.add_module(f"dec{level}", DoubleConv(channels, channels // 2, pad, batch_norm))
            channels //= 2
        self.final = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        skips = []
        for level in range(1, 5):
            x = getattr(self, f"enc{level}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.enc5(x)
        for level in range(4, 0, -1):
            x = getattr(self, f"up{level}")(x)
            skip = skips[level - 1]
            top, left = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., top:top + x.shape[-2], left:left + x.shape[-1]]
            x = getattr(self, f"dec{level}")(torch.cat([skip, x], dim=1))
        return self.final(x)


class DeepLab(nn.Module):
    """DeepLab-LargeFOV (one head, ``rates=(12,)``) or v2 ASPP-L (``rates=(6, 12, 18, 24)``, heads summed)
    on the atrous VGG16: pool1-3 3x3/2 pad 1, pool4-5 3x3/1 pad 1 (ceil mode), conv5 dilation 2;
    each head fc6 3x3 (dilation r, 16*width) -> fc7 1x1 -> fc8 1x1 with ReLU and dropout;
    logits upsampled bilinearly (align_corners=True) to the input size."""

    def __init__(self, num_classes, in_channels=3, width=64, rates=(12,), aspp=False):
        super().__init__()
        self.stages, channels = _vgg16(self, in_channels, width, 1, batch_norm=False)
        for name in self.stages[4]:
            conv = getattr(self, f"conv{name}")
            conv.dilation, conv.padding = (2, 2), (2, 2)
        self.suffixes = [f"_{k}" for k in range(1, len(rates) + 1)] if aspp else [""]
        fc = 16 * width
        for suffix, rate in zip(self.suffixes, rates):
            self.add_module(f"fc6{suffix}", nn.Conv2d(channels, fc, 3, padding=rate, dilation=rate))
            self.add_module(f"fc7{suffix}", nn.Conv2d(fc, fc, 1))
            self.add_module(f"fc8{suffix}", nn.Conv2d(fc, num_classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        for stage, names in enumerate(self.stages, start=1):
            for name in names:
                x = F.relu(getattr(self, f"conv{name}")(x))
            x = F.max_pool2d(x, 3, 2 if stage <= 3 else 1, 1, ceil_mode=True)
        out = 0
        for suffix in self.suffixes:
            y = F.dropout(F.relu(getattr(self, f"fc6{suffix}")(x)), 0.5, self.training)
            y = F.dropout(F.relu(getattr(self, f"fc7{suffix}")(y)), 0.5, self.training)
            out = out + getattr(self, f"fc8{suffix}")(y)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=True)


class SegNet(nn.Module):
    """VGG16 convs with BatchNorm and switch-keeping 2x2 pools; per stage max_unpool2d with that stage's
    switches, then the mirrored 3x3 convs (conv5_3_D ... conv1_1_D), BatchNorm + ReLU after all but the last."""
    DECODER = ((5, (8, 8, 8)), (4, (8, 8, 4)), (3, (4, 4, 2)), (2, (2, 1)), (1, (1, None)))

    def __init__(self, num_classes, in_channels=3, width=64):
        super().__init__()
        self.stages, channels = _vgg16(self, in_channels, width, 1, batch_norm=True)
        self.decoder = []
        for stage, mults in self.DECODER:
            names = [f"{stage}_{i}" for i in range(len(mults), 0, -1)]
            self.decoder.append((stage, list(zip(names, mults))))
            for name, mult in zip(names, mults):
                out = num_classes if mult is None else width * mult
                self.add_module(f"conv{name}_D", nn.Conv2d(channels, out, 3, padding=1))
                if mult is not None:
                    self.add_module(f"bn{name}_D", nn.BatchNorm2d(out))
                channels = out

    def forward(self, x):
        switches = []
        for names in self.stages:
            for name in names:
                x = F.relu(getattr(self, f"bn{name}")(getattr(self, f"conv{name}")(x)))
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
            switches.append((indices, size))
        for stage, layers in self.decoder:
            indices, size = switches[stage - 1]
            x = F.max_unpool2d(x, indices, 2, 2, output_size=size)
            for name, mult in layers:
                x = getattr(self, f"conv{name}_D")(x)
                if mult is not None:
                    x = F.relu(getattr(self, f"bn{name}_D")(x))
        return x


def build(name, num_classes, in_channels=3, width=64, **options):
    """The twin of ``segnets.build_model(name, num_classes, in_channels, width, **options)``."""
    if name in FCN.SKIPS:
        return FCN(name, num_classes, in_channels, width, **options)
    if name == "deconvnet":
        return DeconvNet(num_classes, in_channels, width, **options)
    if name == "unet":
        return UNet(num_classes, in_channels, width, **options)
    if name == "deeplabv1_largefov":
        return DeepLab(num_classes, in_channels, width, rates=(options.pop("fc6_dilation", 12),), **options)
    if name == "deeplabv2_vgg16":
        rates = options.pop("rates", (6, 12, 18, 24))
        rates = [int(r) for r in rates.split(",")] if isinstance(rates, str) else rates
        return DeepLab(num_classes, in_channels, width, rates=tuple(rates), aspp=True, **options)
    if name == "segnet":
        return SegNet(num_classes, in_channels, width, **options)
    from . import torch_resnets  # DeepLab v2/v3/v3+ and PSPNet on ResNet
    if name in torch_resnets.NETS:
        return torch_resnets.build(name, num_classes, in_channels, width, **options)
    raise ValueError(f"unknown net {name!r}: expected one of fcn32s, fcn16s, fcn8s, deconvnet, unet, "
                     "deeplabv1_largefov, deeplabv2_vgg16, segnet")
