"""Plain PyTorch re-implementations of the segnets models, for parity tests.

Each twin has the same layer names as its minigrad model, so
``twin.state_dict()`` (as NumPy arrays) loads into the minigrad model with
``segnets.load_torch_state_dict`` and the two compute the same function.
Imported only after ``require_torch()``; never from minigrad/ or segnets/.
"""
import torch
from torch import nn
from torch.nn import functional as F

VGG16_STAGES = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))  # (width multiplier, convs) per stage


def vgg16_trunk(module, in_channels, width, first_padding=1, batch_norm=False):
    """conv{s}_{i} (+ bn{s}_{i}) attributes; returns [(stage, [names])] and the last channel count."""
    stages, channels = [], in_channels
    for stage, (mult, convs) in enumerate(VGG16_STAGES, start=1):
        names = []
        for i in range(1, convs + 1):
            padding = first_padding if (stage, i) == (1, 1) else 1
            setattr(module, f"conv{stage}_{i}", nn.Conv2d(channels, width * mult, 3, padding=padding))
            if batch_norm:
                setattr(module, f"bn{stage}_{i}", nn.BatchNorm2d(width * mult))
            names.append(f"{stage}_{i}")
            channels = width * mult
        stages.append(names)
    return stages, channels


def bilinear_kernel(channels, size):
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, size, size, dtype=torch.float64)
    weight[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return weight


def fixed_upsampler(channels, factor, padded):
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor,
                               padding=factor // 2 if padded else 0, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    layer.weight.requires_grad_(False)
    return layer


class FCN(nn.Module):
    def __init__(self, variant, num_classes, in_channels=3, width=64, pad100=True, fc_kernel=7):
        super().__init__()
        self.variant, self.pad100, self.fc_kernel = variant, pad100, fc_kernel
        self.stages, channels = vgg16_trunk(self, in_channels, width, first_padding=100 if pad100 else 1)
        fc = 64 * width
        self.fc6 = nn.Conv2d(channels, fc, fc_kernel, padding=0 if pad100 else (fc_kernel - 1) // 2)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if variant == "fcn32s":
            self.upscore = fixed_upsampler(num_classes, 32, not pad100)
            return
        self.score_pool4 = nn.Conv2d(8 * width, num_classes, 1)
        self.upscore2 = fixed_upsampler(num_classes, 2, not pad100)
        if variant == "fcn16s":
            self.upscore16 = fixed_upsampler(num_classes, 16, not pad100)
            return
        self.score_pool3 = nn.Conv2d(4 * width, num_classes, 1)
        self.upscore_pool4 = fixed_upsampler(num_classes, 2, not pad100)
        self.upscore8 = fixed_upsampler(num_classes, 8, not pad100)

    def forward(self, x):
        h, w = x.shape[-2:]
        pools = []
        for names in self.stages:
            for name in names:
                x = F.relu(getattr(self, f"conv{name}")(x))
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            pools.append(x)
        x = F.dropout(F.relu(self.fc6(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        x = self.score_fr(x)
        offsets = {"fcn32s": (19,), "fcn16s": (5, 27), "fcn8s": (5, 9, 31)}[self.variant]
        if not self.pad100:
            offsets = (0,) * len(offsets)
        if self.variant == "fcn32s":
            return crop(self.upscore(x), offsets[0], (h, w))
        x = fuse(self.upscore2(x), self.score_pool4(pools[3]), offsets[0])
        if self.variant == "fcn16s":
            return crop(self.upscore16(x), offsets[1], (h, w))
        x = fuse(self.upscore_pool4(x), self.score_pool3(pools[2]), offsets[1])
        return crop(self.upscore8(x), offsets[2], (h, w))


def fuse(coarse, skip, offset):
    h = min(coarse.shape[-2], skip.shape[-2] - offset)
    w = min(coarse.shape[-1], skip.shape[-1] - offset)
    return coarse[..., :h, :w] + skip[..., offset:offset + h, offset:offset + w]


def crop(x, offset, size):
    return x[..., offset:offset + size[0], offset:offset + size[1]]


class DeconvNet(nn.Module):
    DECODER = ((5, (8, 8, 8)), (4, (8, 8, 4)), (3, (4, 4, 2)), (2, (2, 1)), (1, (1, 1)))

    def __init__(self, num_classes, in_channels=3, width=64, fc_kernel=7):
        super().__init__()
        self.stages, channels = vgg16_trunk(self, in_channels, width, batch_norm=True)
        fc = 64 * width
        self.fc6, self.bnfc6 = nn.Conv2d(channels, fc, fc_kernel), nn.BatchNorm2d(fc)
        self.fc7, self.bnfc7 = nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc)
        self.fc6_deconv = nn.ConvTranspose2d(fc, channels, fc_kernel)
        self.fc6_deconv_bn = nn.BatchNorm2d(channels)
        self.decoder = []
        for stage, mults in self.DECODER:
            names = []
            for i, mult in enumerate(mults, start=1):
                setattr(self, f"deconv{stage}_{i}", nn.ConvTranspose2d(channels, width * mult, 3, padding=1))
                setattr(self, f"debn{stage}_{i}", nn.BatchNorm2d(width * mult))
                names.append(f"{stage}_{i}")
                channels = width * mult
            self.decoder.append((stage, names))
        self.seg_score = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        switches = {}
        for stage, names in enumerate(self.stages, start=1):
            for name in names:
                x = F.relu(getattr(self, f"bn{name}")(getattr(self, f"conv{name}")(x)))
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
            switches[stage] = (indices, size)
        x = F.relu(self.bnfc6(self.fc6(x)))
        x = F.relu(self.bnfc7(self.fc7(x)))
        x = F.relu(self.fc6_deconv_bn(self.fc6_deconv(x)))
        for stage, names in self.decoder:
            indices, size = switches[stage]
            x = F.max_unpool2d(x, indices, 2, 2, output_size=size)
            for name in names:
                x = F.relu(getattr(self, f"debn{name}")(getattr(self, f"deconv{name}")(x)))
        return self.seg_score(x)


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, padding, batch_norm):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=padding)
        if batch_norm:
            self.bn1, self.bn2 = nn.BatchNorm2d(out_channels), nn.BatchNorm2d(out_channels)
        self.batch_norm = batch_norm

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x) if self.batch_norm else x)
        x = self.conv2(x)
        return F.relu(self.bn2(x) if self.batch_norm else x)


class UNet(nn.Module):
    def __init__(self, num_classes, in_channels=1, width=64, padding="valid", batch_norm=False):
        super().__init__()
        pad = 0 if padding == "valid" else 1
        channels = in_channels
        for level in range(1, 6):
            setattr(self, f"enc{level}", DoubleConv(channels, width * 2 ** (level - 1), pad, batch_norm))
            channels = width * 2 ** (level - 1)
        for level in range(4, 0, -1):
            setattr(self, f"up{level}", nn.ConvTranspose2d(channels, channels // 2, 2, stride=2))
            setattr(self, f"dec{level}", DoubleConv(channels, channels // 2, pad, batch_norm))
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
            top = (skip.shape[-2] - x.shape[-2]) // 2
            left = (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., top:top + x.shape[-2], left:left + x.shape[-1]]
            x = getattr(self, f"dec{level}")(torch.cat([skip, x], dim=1))
        return self.final(x)
