"""ResNet-50 and ResNet-101 (He et al., CVPR 2016) as dilated segmentation backbones.

Bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4, BN after every conv, the
shortcut a 1x1 conv + BN where the shape changes), layers [3, 4, 6, 3] (50) or
[3, 4, 23, 3] (101) of ``width``, 2w, 4w, 8w planes (64 in the paper: 2048
output channels). No average pool and no ``fc``: the nets read the stages.

Options, each named after the code it follows:

* ``replace_stride_with_dilation`` (torchvision): for layer2, layer3, layer4, True
  keeps the layer at the resolution of the one before and dilates its 3x3 convs
  instead (output stride 32, 16 with ``[False, False, True]``, 8 with
  ``[False, True, True]``).
* ``uniform_dilation``: False (torchvision) gives the first block of a dilated
  layer the dilation of the layer before; True (hszhao/semseg,
  kazuto1011/deeplab-pytorch, jfzhang95/pytorch-deeplab-xception) the layer's own.
* ``multi_grid``: per-block multipliers of layer4's dilation (DeepLab v3's
  multi-grid; jfzhang95 uses (1, 2, 4) at output stride 16). Needs as many
  entries as layer4 has blocks.
* ``deep_stem``: three 3x3 convs (w, w, 2w; the first with stride 2) instead of the
  single 7x7 stride-2 conv (hszhao/semseg's PSPNet); layer1 then reads 2w channels.
* ``stride_in_1x1``: the stride sits on the block's first 1x1 conv (the original
  Caffe models, kazuto1011's DeepLab v2) instead of on the 3x3 (torchvision).
* ``ceil_mode``: the stem's 3x3 stride-2 max-pool rounds up (Caffe, kazuto1011).
* ``zero_init_residual``: each block's last BN starts with scale 0, so every block
  starts as the identity (Goyal et al. 2017; torchvision's option).

Init: He-normal conv weights (fan_out, as torchvision), BN scale 1 and shift 0.
None of these options changes the parameter count but ``deep_stem``.

Names are torchvision's (``conv1``, ``bn1``, ``layer3.5.conv2``,
``layer1.0.downsample.0``/``.1``; the deep stem adds ``conv2``/``bn2``,
``conv3``/``bn3``), so its resnet50/resnet101 state dicts load by name
(see ``translate_torchvision_resnet``).
"""
from minigrad import functional as F
from minigrad import nn

from .common import check_bool

LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=False, stride_in_1x1=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride if stride_in_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1 if stride_in_1x1 else stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """The stem and layer1..layer4; ``forward`` returns layer4's map, ``stages`` all four."""

    def __init__(self, depth=101, in_channels=3, width=64, replace_stride_with_dilation=(False, False, False),
                 uniform_dilation=False, multi_grid=None, deep_stem=False, stride_in_1x1=False, ceil_mode=False,
                 zero_init_residual=False):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(LAYERS)}, got {depth!r}")
        replace = tuple(replace_stride_with_dilation)
        if len(replace) != 3 or not all(isinstance(r, bool) for r in replace):
            raise ValueError("replace_stride_with_dilation must be 3 booleans (layer2, layer3, layer4), "
                             f"got {replace_stride_with_dilation!r}")
        for name, value in (("uniform_dilation", uniform_dilation), ("deep_stem", deep_stem),
                            ("stride_in_1x1", stride_in_1x1), ("ceil_mode", ceil_mode),
                            ("zero_init_residual", zero_init_residual)):
            check_bool(name, value)
        layers = LAYERS[depth]
        grid = tuple(multi_grid) if multi_grid is not None else (1,) * layers[3]
        if len(grid) != layers[3]:
            raise ValueError(f"multi_grid needs one multiplier per layer4 block ({layers[3]}), got {multi_grid!r}")
        self.deep_stem = deep_stem
        stem = 2 * width if deep_stem else width
        if deep_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, stem, 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(stem)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil_mode)
        inplanes, dilation, self.output_stride = stem, 1, 4
        for index, blocks in enumerate(layers):
            planes, stride, previous = width << index, 1 if index == 0 else 2, dilation
            if index > 0 and replace[index - 1]:
                dilation, stride = dilation * stride, 1
            self.output_stride *= stride
            multipliers = grid if index == 3 else (1,) * blocks
            dilations = [dilation * m for m in multipliers]
            if not uniform_dilation:
                dilations[0] = previous * multipliers[0]
            layer = nn.Sequential()
            for block in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride if block == 0 else 1, dilations[block],
                                        downsample=block == 0, stride_in_1x1=stride_in_1x1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", layer)
        self.out_channels = inplanes
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual):
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, Bottleneck) and zero_init_residual:
                nn.init.zeros_(module.bn3.weight)

    def stem(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = F.relu(self.bn2(self.conv2(x)))
            x = F.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)

    def stages(self, x):
        """[layer1, layer2, layer3, layer4] outputs for input ``x``."""
        out = []
        x = self.stem(x)
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            out.append(x)
        return out

    def forward(self, x):
        return self.stages(x)[-1]


def resnet50(**options):
    return ResNet(50, **options)


def resnet101(**options):
    return ResNet(101, **options)


# ---------------------------------------------------------------- torchvision's resnet50 / resnet101 keys
def is_torchvision_resnet(state_dict):
    return "conv1.weight" in state_dict and any(key.startswith("layer1.0.") for key in state_dict)


def translate_torchvision_resnet(state_dict, deep_stem, prefix="backbone."):
    """Prefix torchvision's resnet keys (``conv1.weight``, ``layer2.0.bn1.running_mean``, ...) with ``prefix``.

    ``fc.*`` (the 1000 ImageNet classes) keeps its name, and so do the three weights
    whose shape the deep stem changes (``conv1.weight``, 7x7 there; ``layer1.0.conv1``
    and ``layer1.0.downsample.0``, which read 2w channels here): ``load_state_dict``
    reports them as unexpected and the net's own layers as missing. Any other key of
    the wrong shape (another ``width``) is a size-mismatch error.
    """
    kept = {"conv1.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight"} if deep_stem else set()
    return {key if key.startswith("fc.") or key in kept else prefix + key: value
            for key, value in state_dict.items()}
