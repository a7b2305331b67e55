"""PyTorch twins of segnets' ResNet nets (DeepLab v2/v3/v3+, PSPNet), written with torch.nn only.

They follow the reference implementations (torchvision's resnet and deeplabv3,
kazuto1011/deeplab-pytorch, jfzhang95/pytorch-deeplab-xception, hszhao/semseg)
with segnets' key names, so weights copy across by name. ``width`` scales every
channel count as in segnets (64: the references). ``forward(x)`` returns the
logits at the input's size; ``forward_with_aux(x)`` the logits and the aux head's
(or None).
"""
import torch
from torch import nn
from torch.nn import functional as F

LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, dilation, downsample, stride_in_1x1):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes * 4)) if downsample else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """``dilations``: per layer, the dilation of each block; ``strides``: per layer."""

    def __init__(self, depth, in_channels, width, strides, dilations, deep_stem=False, stride_in_1x1=False,
                 ceil_mode=False):
        super().__init__()
        self.deep_stem = deep_stem
        stem = 2 * width if deep_stem else width
        if deep_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, stem, 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(stem)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
        self.ceil_mode = ceil_mode
        inplanes = stem
        for i, (blocks, stride, dils) in enumerate(zip(LAYERS[depth], strides, dilations)):
            planes = width * 2 ** i
            layer = [Bottleneck(inplanes, planes, stride, dils[0], True, stride_in_1x1)]
            layer += [Bottleneck(planes * 4, planes, 1, d, False, stride_in_1x1) for d in dils[1:]]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = planes * 4
        self.out_channels = inplanes

    def stages(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = F.relu(self.bn2(self.conv2(x)))
            x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(x, 3, 2, 1, ceil_mode=self.ceil_mode)
        out = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out.append(x)
        return out


def _up(x, size, align_corners):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class _Net(nn.Module):
    aux_name = None

    def forward(self, x):
        return self.logits(self.backbone.stages(x), x.shape[-2:])

    def forward_with_aux(self, x):
        stages = self.backbone.stages(x)
        head = getattr(self, self.aux_name, None) if self.aux_name else None
        aux = None if head is None else _up(head(stages[2]), x.shape[-2:], self.align_corners)
        return self.logits(stages, x.shape[-2:]), aux


class DeepLabV2(_Net):
    """kazuto1011: Caffe ResNet-101 (stride in 1x1, ceil-mode pool), layer3/4 dilated 2/4; four summed 3x3 convs."""

    align_corners = False

    def __init__(self, num_classes, in_channels=3, width=64, atrous_rates=(6, 12, 18, 24)):
        super().__init__()
        self.rates = tuple(atrous_rates)
        dil = [[1] * 3, [1] * 4, [2] * 23, [4] * 3]
        self.backbone = ResNet(101, in_channels, width, (1, 2, 1, 1), dil, stride_in_1x1=True, ceil_mode=True)
        self.aspp = nn.Module()
        for i, rate in enumerate(self.rates):
            self.aspp.add_module(f"c{i}", nn.Conv2d(32 * width, num_classes, 3, padding=rate, dilation=rate))

    def logits(self, stages, size):
        x = stages[-1]
        return _up(sum(getattr(self.aspp, f"c{i}")(x) for i in range(len(self.rates))), size, False)


def _cbr(cin, cout, k=1, dilation=1):
    return [nn.Conv2d(cin, cout, k, padding=dilation if k == 3 else 0, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class Pooling(nn.Sequential):
    def __init__(self, cin, cout, align_corners):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_cbr(cin, cout))
        self.align_corners = align_corners

    def forward(self, x):
        return _up(super().forward(x), x.shape[-2:], self.align_corners)


class TorchvisionASPP(nn.Module):
    def __init__(self, cin, rates, cout):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(*_cbr(cin, cout))]
                                   + [nn.Sequential(*_cbr(cin, cout, 3, r)) for r in rates]
                                   + [Pooling(cin, cout, False)])
        self.project = nn.Sequential(*_cbr((len(rates) + 2) * cout, cout), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([c(x) for c in self.convs], dim=1))


def _fcn_head(cin, num_classes, dropout2d=False):
    return nn.Sequential(*_cbr(cin, cin // 4, 3), nn.Dropout2d(0.1) if dropout2d else nn.Dropout(0.1),
                         nn.Conv2d(cin // 4, num_classes, 1))


class DeepLabV3(_Net):
    """torchvision's deeplabv3_resnet101: OS 8 (or 16: torchvision's resnet with replace_stride_with_dilation
    [False, False, True]), first block of a dilated layer at the previous dilation."""

    align_corners = False
    aux_name = "aux_classifier"

    def __init__(self, num_classes, in_channels=3, width=64, aux_loss=False, output_stride=8, atrous_rates=None):
        super().__init__()
        if output_stride == 8:
            strides, dil = (1, 2, 1, 1), [[1] * 3, [1] * 4, [1] + [2] * 22, [2] + [4] * 2]
        else:
            strides, dil = (1, 2, 2, 1), [[1] * 3, [1] * 4, [1] * 23, [1] + [2] * 2]
        if atrous_rates is None:
            atrous_rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.backbone = ResNet(101, in_channels, width, strides, dil)
        c, h = 32 * width, 4 * width
        self.classifier = nn.Sequential(TorchvisionASPP(c, tuple(atrous_rates), h), *_cbr(h, h, 3),
                                        nn.Conv2d(h, num_classes, 1))
        self.aux_classifier = _fcn_head(c // 2, num_classes) if aux_loss else None

    def logits(self, stages, size):
        return _up(self.classifier(stages[-1]), size, False)


class Separable(nn.Module):
    def __init__(self, cin, cout, dilation):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False)
        self.bn = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(F.relu(self.bn(self.depthwise(x))))


def _conv3(cin, cout, dilation, separable):
    if separable:
        return Separable(cin, cout, dilation)
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False)


class Branch(nn.Module):
    def __init__(self, cin, cout, rate, separable):
        super().__init__()
        self.atrous_conv = nn.Conv2d(cin, cout, 1, bias=False) if rate is None else _conv3(cin, cout, rate, separable)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.atrous_conv(x)))


class DeepLabV3Plus(_Net):
    """jfzhang95: OS 16 (layer4 dilation 2 x (1, 2, 4)) or 8; ASPP 1x1 + 3x3 at 6/12/18 (doubled at OS 8, or
    ``atrous_rates``); layer1 decoder; align_corners=True."""

    align_corners = True

    def __init__(self, num_classes, in_channels=3, width=64, output_stride=16, separable=False, atrous_rates=None):
        super().__init__()
        if output_stride == 16:
            strides, dil, rates = (1, 2, 2, 1), [[1] * 3, [1] * 4, [1] * 23, [2, 4, 8]], (6, 12, 18)
        else:
            strides, dil, rates = (1, 2, 1, 1), [[1] * 3, [1] * 4, [2] * 23, [4, 8, 16]], (12, 24, 36)
        rates = (None,) + tuple(rates if atrous_rates is None else atrous_rates)  # None: the 1x1 branch
        self.branches = len(rates)
        self.backbone = ResNet(101, in_channels, width, strides, dil)
        c, h, low = 32 * width, 4 * width, max(1, 3 * width // 4)
        self.aspp = nn.Module()
        for i, r in enumerate(rates, start=1):
            self.aspp.add_module(f"aspp{i}", Branch(c, h, r, separable))
        self.aspp.global_avg_pool = Pooling(c, h, True)
        self.aspp.conv1, self.aspp.bn1 = nn.Conv2d((len(rates) + 1) * h, h, 1, bias=False), nn.BatchNorm2d(h)
        self.aspp.dropout = nn.Dropout(0.5)
        self.decoder = nn.Module()
        self.decoder.conv1, self.decoder.bn1 = nn.Conv2d(4 * width, low, 1, bias=False), nn.BatchNorm2d(low)
        self.decoder.last_conv = nn.Sequential(
            _conv3(h + low, h, 1, separable), nn.BatchNorm2d(h), nn.ReLU(), nn.Dropout(0.5),
            _conv3(h, h, 1, separable), nn.BatchNorm2d(h), nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(h, num_classes, 1))

    def logits(self, stages, size):
        a = self.aspp
        x = stages[-1]
        x = torch.cat([getattr(a, f"aspp{i}")(x) for i in range(1, self.branches + 1)] + [a.global_avg_pool(x)], dim=1)
        x = a.dropout(F.relu(a.bn1(a.conv1(x))))
        d = self.decoder
        low = F.relu(d.bn1(d.conv1(stages[0])))
        x = d.last_conv(torch.cat([_up(x, low.shape[-2:], True), low], dim=1))
        return _up(x, size, True)


class PSPNet(_Net):
    """hszhao/semseg: deep stem, OS 8 (all blocks of layer3/4 dilated 2/4), PPM bins 1/2/3/6, align_corners=True."""

    align_corners = True
    aux_name = "aux"

    def __init__(self, depth, num_classes, in_channels=3, width=64, aux_loss=False):
        super().__init__()
        blocks = LAYERS[depth]
        dil = [[1] * blocks[0], [1] * blocks[1], [2] * blocks[2], [4] * blocks[3]]
        self.backbone = ResNet(depth, in_channels, width, (1, 2, 1, 1), dil, deep_stem=True)
        c = 32 * width
        self.ppm = nn.Module()
        self.ppm.features = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(b), *_cbr(c, c // 4))
                                           for b in (1, 2, 3, 6)])
        self.cls = nn.Sequential(*_cbr(2 * c, c // 4, 3), nn.Dropout2d(0.1), nn.Conv2d(c // 4, num_classes, 1))
        self.aux = _fcn_head(c // 2, num_classes, dropout2d=True) if aux_loss else None

    def logits(self, stages, size):
        x = stages[-1]
        x = torch.cat([x] + [_up(f(x), x.shape[-2:], True) for f in self.ppm.features], dim=1)
        return _up(self.cls(x), size, True)


def build(name, num_classes, in_channels=3, width=64, **options):
    if name == "deeplabv2_resnet101":
        return DeepLabV2(num_classes, in_channels, width, **options)
    if name == "deeplabv3_resnet101":
        return DeepLabV3(num_classes, in_channels, width, **options)
    if name == "deeplabv3plus_resnet101":
        return DeepLabV3Plus(num_classes, in_channels, width, **options)
    if name in ("pspnet50", "pspnet101"):
        return PSPNet(int(name[6:]), num_classes, in_channels, width, **options)
    raise ValueError(f"unknown net {name!r}")


NETS = ("deeplabv2_resnet101", "deeplabv3_resnet101", "deeplabv3plus_resnet101", "pspnet50", "pspnet101")
