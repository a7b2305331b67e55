"""DeepLab v2, v3 and v3+ on a dilated ResNet-101 (Chen et al., TPAMI 2017; arXiv 2017; ECCV 2018).

Each net follows one public PyTorch re-implementation, layer for layer, and has
its parameter count (21 classes, width 64) in tests/test_models.py:

* ``deeplabv2_resnet101`` (kazuto1011/deeplab-pytorch, 44,048,532): the Caffe-style
  ResNet-101 (stride on the blocks' first 1x1 conv, ceil-mode stem pool), layer3
  dilated 2 and layer4 dilated 4 (output stride 8); ASPP = four 3x3 convs from
  2048 channels straight to the classes (dilation 6, 12, 18, 24, with biases,
  weights N(0, 0.01)), summed.
* ``deeplabv3_resnet101`` (torchvision, 58,630,997): layer3 and layer4 dilated
  (torchvision's ``replace_stride_with_dilation=[False, True, True]``, output
  stride 8); DeepLabHead: ASPP(2048, rates 12/24/36, 256 channels: a 1x1 branch,
  three 3x3 dilated branches, an image-pooling branch; each conv + BN + ReLU; a 1x1
  projection of the 1280 concatenated channels with dropout 0.5), a 3x3 conv + BN
  + ReLU and the 1x1 classifier. ``aux_loss=True`` adds torchvision's FCNHead on
  layer3 (3x3 conv to 256, BN, ReLU, dropout 0.1, 1x1 classifier: 60,996,202).
  Key names are torchvision's (``classifier.0.convs.1.0.weight``,
  ``aux_classifier.4.bias``), so its deeplabv3_resnet101 state dict loads as is.
* ``deeplabv3plus_resnet101`` (jfzhang95/pytorch-deeplab-xception, 59,344,309):
  output stride 16 (layer4 dilated 2 with multi-grid (1, 2, 4)) or 8 (layer3
  dilated 2, layer4 4 x (1, 2, 4)); ASPP rates 1/6/12/18 (doubled at output stride
  8) with image pooling, bias-free convs with BN, projection with dropout 0.5; the
  decoder projects layer1 to 48 channels, concatenates them after the upsampled
  ASPP output (304 channels), two 3x3 convs of 256 (dropout 0.5 and 0.1), the 1x1
  classifier. Every resize is bilinear with align_corners=True. ``separable=True``:
  the ASPP's three 3x3 branches and the decoder's two 3x3 convs become atrous
  separable convolutions as in the paper's TensorFlow code (depthwise 3x3 dilated
  conv, BN, ReLU, pointwise 1x1 conv; the branch's own BN + ReLU follow).

``atrous_rates`` (all three nets; ``--model-opt atrous_rates=1,2,3``) sets the dilated 3x3
branches' rates, one branch per rate (the 1x1 and image-pooling branches stay); the
defaults are the references' (v3: 6/12/18 at ``output_stride=16``, the paper's, since
torchvision has no such option). The references' rates are for 321-513 px crops: on a
64x64 crop's 8x8 map a rate >= 8 leaves a 3x3 branch only its centre tap (a 1x1 conv),
so the recipes scale them down. Counts depend on the number of rates, not their values.

Every head's channel counts scale with ``width`` as the backbone does (256 ->
4 * width, 48 -> 3 * width / 4). The logits are resized to the input's size
(bilinear): any input size works.

Auxiliary outputs: ``forward(x)`` returns the logits only, in training and in
evaluation, so evaluate/predict are unchanged. ``forward_with_aux(x)`` returns
``(logits, aux_logits)`` (``aux_logits`` None without an aux head); the training
loss adds ``aux_weight`` (0.5 for DeepLab v3, torchvision's reference training
script) times the aux head's cross-entropy, in training mode only.

Where we differ: kazuto1011's DeepLab v2 returns stride-8 logits (its training
resizes the labels down, and its MSC wrapper adds scales 0.5/0.75); here they are
upsampled bilinearly to the input. Dropout is element-wise, as in all three.
"""
import numpy as np

import minigrad
from minigrad import functional as F
from minigrad import nn

from .common import SegmentationNet, SizeRule, check_bool
from .resnet import ResNet


def parse_atrous_rates(value, name="atrous_rates"):
    """ASPP rates as a tuple of ints >= 1, from a sequence, an int or a '6,12,18' string
    (``--model-opt atrous_rates=6,12,18``); a ValueError naming ``name`` otherwise."""
    example = f"such as {name}=6,12,18"
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        try:
            value = [int(part) for part in parts]
        except ValueError:
            raise ValueError(f"{name} must be comma-separated ints >= 1 {example}, got {value!r}") from None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    try:
        rates = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of ints >= 1 {example}, got {value!r}") from None
    if not rates:
        raise ValueError(f"{name} must name at least one dilated branch {example}, got none")
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < 1:
            raise ValueError(f"{name} must be ints >= 1 {example}, got {rate!r} in {value!r}")
    return tuple(int(rate) for rate in rates)


def check_output_stride(output_stride):
    if isinstance(output_stride, bool) or output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")


class _AuxNet(SegmentationNet):
    """A net on a ResNet backbone whose training may add an auxiliary head's loss."""

    has_resnet_backbone = True  # load_torch_state_dict accepts torchvision's resnet keys
    aux_weight = 0.0
    aux_attribute = None  # the aux head's attribute name, where the net has one

    @property
    def has_aux(self):
        return self.aux_attribute is not None and getattr(self, self.aux_attribute) is not None

    @classmethod
    def size_rule_for(cls, **_):
        return SizeRule(1, 1, 0, "any size: the logits are resized to the input")

    def forward(self, x):
        size = self.check_input(x)
        return self._logits(self.backbone.stages(x), size)

    def forward_with_aux(self, x):
        """(logits, aux_logits or None), both at the input's size."""
        size = self.check_input(x)
        stages = self.backbone.stages(x)
        aux = self._aux_logits(stages, size) if self.has_aux else None
        return self._logits(stages, size), aux


def _resize(x, size, align_corners):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


# ---------------------------------------------------------------- DeepLab v2
class DeepLabV2(_AuxNet):
    name = "deeplabv2_resnet101"
    RATES = (6, 12, 18, 24)

    def __init__(self, num_classes=21, in_channels=3, width=64, atrous_rates=RATES):
        rates = parse_atrous_rates(atrous_rates)
        super().__init__(num_classes, in_channels, width, atrous_rates=list(rates))
        self.atrous_rates = rates
        self.backbone = ResNet(101, in_channels, width, replace_stride_with_dilation=(False, True, True),
                               uniform_dilation=True, stride_in_1x1=True, ceil_mode=True)
        self.aspp = nn.Module()
        for index, rate in enumerate(rates):
            conv = nn.Conv2d(self.backbone.out_channels, num_classes, 3, padding=rate, dilation=rate)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
            setattr(self.aspp, f"c{index}", conv)

    def _logits(self, stages, size):
        x = stages[-1]
        out = None
        for index in range(len(self.atrous_rates)):
            branch = getattr(self.aspp, f"c{index}")(x)
            out = branch if out is None else out + branch
        return _resize(out, size, align_corners=False)


# ---------------------------------------------------------------- DeepLab v3 (torchvision's modules)
class ASPPPooling(nn.Sequential):
    """Image pooling: global average, 1x1 conv + BN + ReLU, broadcast back to the map's size."""

    def __init__(self, in_channels, out_channels, align_corners=False):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())
        self.align_corners = align_corners

    def forward(self, x):
        return _resize(super().forward(x), x.shape[-2:], self.align_corners)


class ASPP(nn.Module):
    """torchvision's ASPP: 1x1, three dilated 3x3s and image pooling, concatenated and projected (dropout 0.5)."""

    def __init__(self, in_channels, rates, out_channels=256):
        super().__init__()
        branches = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU())]
        for rate in rates:
            branches.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU()))
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(minigrad.cat([branch(x) for branch in self.convs], dim=1))


def deeplab_head(in_channels, num_classes, channels, rates=(12, 24, 36)):
    """torchvision's DeepLabHead: ASPP, 3x3 conv + BN + ReLU, 1x1 classifier."""
    return nn.Sequential(ASPP(in_channels, rates, channels),
                         nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, num_classes, 1))


def fcn_head(in_channels, num_classes, dropout2d=False):
    """torchvision's FCNHead (and hszhao/semseg's aux head, whose dropout is channel-wise):
    3x3 conv to in/4 + BN + ReLU, dropout 0.1, 1x1 classifier."""
    inter = max(1, in_channels // 4)
    return nn.Sequential(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(), nn.Dropout2d(0.1) if dropout2d else nn.Dropout(0.1),
                         nn.Conv2d(inter, num_classes, 1))


class DeepLabV3(_AuxNet):
    name = "deeplabv3_resnet101"
    aux_weight = 0.5
    aux_attribute = "aux_classifier"

    def __init__(self, num_classes=21, in_channels=3, width=64, aux_loss=False, output_stride=8,
                 atrous_rates=None):
        check_bool("aux_loss", aux_loss)
        check_output_stride(output_stride)
        rates = parse_atrous_rates(((12, 24, 36) if output_stride == 8 else (6, 12, 18))
                                   if atrous_rates is None else atrous_rates)
        super().__init__(num_classes, in_channels, width, aux_loss=aux_loss, output_stride=output_stride,
                         atrous_rates=list(rates))
        replace = (False, True, True) if output_stride == 8 else (False, False, True)
        self.backbone = ResNet(101, in_channels, width, replace_stride_with_dilation=replace)
        self.classifier = deeplab_head(self.backbone.out_channels, num_classes, 4 * width, rates)
        self.aux_classifier = fcn_head(self.backbone.out_channels // 2, num_classes) if aux_loss else None

    def _logits(self, stages, size):
        return _resize(self.classifier(stages[-1]), size, align_corners=False)

    def _aux_logits(self, stages, size):
        return _resize(self.aux_classifier(stages[2]), size, align_corners=False)


# ---------------------------------------------------------------- DeepLab v3+ (jfzhang95's modules)
class SeparableConv2d(nn.Module):
    """Atrous separable conv: depthwise 3x3 (dilated, no bias), BN, ReLU, pointwise 1x1 (no bias).
    The BN + ReLU after the pointwise conv are the caller's (the layer it replaces had them)."""

    def __init__(self, in_channels, out_channels, dilation=1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                                   groups=in_channels, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.pointwise(F.relu(self.bn(self.depthwise(x))))


def _conv3x3(in_channels, out_channels, dilation, separable):
    if separable:
        return SeparableConv2d(in_channels, out_channels, dilation)
    return nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)


class ASPPBranch(nn.Module):
    """jfzhang95's _ASPPModule: atrous_conv, bn, ReLU. ``rate=None``: the 1x1 branch (jfzhang95's rate 1);
    any int: a 3x3 conv of that dilation (rate 1 included)."""

    def __init__(self, in_channels, out_channels, rate, separable):
        super().__init__()
        self.atrous_conv = (nn.Conv2d(in_channels, out_channels, 1, bias=False) if rate is None
                            else _conv3x3(in_channels, out_channels, rate, separable))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.atrous_conv(x)))


class ASPPPlus(nn.Module):
    """jfzhang95's ASPP: aspp1 (1x1), aspp2-4 (3x3 at the three ``rates``; one per rate), global_avg_pool,
    conv1 + bn1 + ReLU, dropout 0.5."""

    def __init__(self, in_channels, rates, out_channels, separable):
        super().__init__()
        self.num_branches = len(rates) + 1
        for index, rate in enumerate((None,) + tuple(rates), start=1):
            setattr(self, f"aspp{index}", ASPPBranch(in_channels, out_channels, rate, separable))
        self.global_avg_pool = ASPPPooling(in_channels, out_channels, align_corners=True)
        self.conv1 = nn.Conv2d((self.num_branches + 1) * out_channels, out_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        branches = [getattr(self, f"aspp{index}")(x) for index in range(1, self.num_branches + 1)]
        branches.append(self.global_avg_pool(x))
        return self.dropout(F.relu(self.bn1(self.conv1(minigrad.cat(branches, dim=1)))))


class Decoder(nn.Module):
    """jfzhang95's Decoder: layer1 -> 1x1 conv + BN + ReLU (48), concatenated after the upsampled ASPP output."""

    def __init__(self, low_channels, aspp_channels, reduced, num_classes, separable):
        super().__init__()
        self.conv1 = nn.Conv2d(low_channels, reduced, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(reduced)
        channels = aspp_channels
        self.last_conv = nn.Sequential(
            _conv3x3(channels + reduced, channels, 1, separable), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Dropout(0.5),
            _conv3x3(channels, channels, 1, separable), nn.BatchNorm2d(channels), nn.ReLU(), nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1))

    def forward(self, x, low):
        low = F.relu(self.bn1(self.conv1(low)))
        x = _resize(x, low.shape[-2:], align_corners=True)
        return self.last_conv(minigrad.cat([x, low], dim=1))


class DeepLabV3Plus(_AuxNet):
    name = "deeplabv3plus_resnet101"

    def __init__(self, num_classes=21, in_channels=3, width=64, output_stride=16, separable=False,
                 atrous_rates=None):
        check_output_stride(output_stride)
        check_bool("separable", separable)
        rates = parse_atrous_rates(((6, 12, 18) if output_stride == 16 else (12, 24, 36))
                                   if atrous_rates is None else atrous_rates)
        super().__init__(num_classes, in_channels, width, output_stride=output_stride, separable=separable,
                         atrous_rates=list(rates))
        replace = (False, False, True) if output_stride == 16 else (False, True, True)
        self.backbone = ResNet(101, in_channels, width, replace_stride_with_dilation=replace,
                               uniform_dilation=True, multi_grid=(1, 2, 4))
        channels = 4 * width
        self.aspp = ASPPPlus(self.backbone.out_channels, rates, channels, separable)
        self.decoder = Decoder(self.backbone.out_channels // 8, channels, max(1, 3 * width // 4), num_classes,
                               separable)
        for name, module in self.named_modules():  # jfzhang95's _init_weight for the ASPP and the decoder
            if isinstance(module, nn.Conv2d) and not name.startswith("backbone."):
                nn.init.kaiming_normal_(module.weight)

    def _logits(self, stages, size):
        return _resize(self.decoder(self.aspp(stages[-1]), stages[0]), size, align_corners=True)
