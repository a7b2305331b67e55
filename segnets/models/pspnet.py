"""PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet-50/101, as hszhao/semseg builds it.

* Backbone: ResNet with the deep stem (three 3x3 convs: w, w, 2w), layer3 dilated
  2 and layer4 dilated 4 in every block (output stride 8), stride on the 3x3 convs.
* Pyramid pooling on layer4 (32w = 2048 channels): for each bin size 1, 2, 3, 6,
  adaptive average pooling to bin x bin, a 1x1 conv to 8w (512) + BN + ReLU,
  bilinear upsampling back (align_corners=True); concatenated after layer4's map
  (4096 channels).
* ``cls``: 3x3 conv to 8w + BN + ReLU, channel dropout 0.1 (Dropout2d), 1x1
  classifier; the logits are resized to the input (bilinear, align_corners=True).
* ``aux_loss=True``: the auxiliary head on layer3 (3x3 conv 1024 -> 256 + BN + ReLU,
  Dropout2d 0.1, 1x1 classifier), trained with weight ``aux_weight`` = 0.4 and
  unused at evaluation (see ``deeplabv3`` for the ``forward_with_aux`` contract).

Parameters at width 64, 21 classes: pspnet50 46,716,373 (49,081,578 with the aux
head), pspnet101 65,708,501 (68,073,706).

Where we differ: semseg asserts input sizes 8k + 1 (so that align_corners=True
puts logit pixel j exactly over input pixel 8j, as its 473 and 713 crops do); we
accept any size and resize to it. Its heads keep PyTorch's default init; ours too.
"""
import minigrad
from minigrad import functional as F
from minigrad import nn

from .common import check_bool
from .deeplabv3 import _AuxNet, _resize, fcn_head
from .resnet import ResNet

BINS = (1, 2, 3, 6)


class PPM(nn.Module):
    """The pyramid pooling module: ``features.{i}`` = AdaptiveAvgPool2d(bin), 1x1 conv, BN, ReLU."""

    def __init__(self, in_channels, reduction, bins=BINS):
        super().__init__()
        self.features = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, reduction, 1, bias=False),
                           nn.BatchNorm2d(reduction), nn.ReLU()) for b in bins])

    def forward(self, x):
        size = x.shape[-2:]
        return minigrad.cat([x] + [_resize(f(x), size, align_corners=True) for f in self.features], dim=1)


class PSPNet(_AuxNet):
    depth = None
    aux_weight = 0.4
    aux_attribute = "aux"

    def __init__(self, num_classes=21, in_channels=3, width=64, aux_loss=False):
        check_bool("aux_loss", aux_loss)
        super().__init__(num_classes, in_channels, width, aux_loss=aux_loss)
        self.backbone = ResNet(self.depth, in_channels, width, replace_stride_with_dilation=(False, True, True),
                               uniform_dilation=True, deep_stem=True)
        channels = self.backbone.out_channels
        self.ppm = PPM(channels, channels // 4)
        self.cls = nn.Sequential(nn.Conv2d(2 * channels, channels // 4, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(channels // 4), nn.ReLU(), nn.Dropout2d(0.1),
                                 nn.Conv2d(channels // 4, num_classes, 1))
        self.aux = fcn_head(channels // 2, num_classes, dropout2d=True) if aux_loss else None

    def _logits(self, stages, size):
        return _resize(self.cls(self.ppm(stages[-1])), size, align_corners=True)

    def _aux_logits(self, stages, size):
        return _resize(self.aux(stages[2]), size, align_corners=True)


class PSPNet50(PSPNet):
    name = "pspnet50"
    depth = 50


class PSPNet101(PSPNet):
    name = "pspnet101"
    depth = 101
