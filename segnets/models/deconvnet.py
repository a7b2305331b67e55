"""DeconvNet (Noh, Hong & Han, ICCV 2015): a VGG16 encoder and its mirror-image decoder.

Encoder: the 13 VGG16 convs, each followed by batch norm and ReLU, and five 2x2
max-pools that keep their switches; fc6 (a ``fc_kernel`` x ``fc_kernel`` conv to
64*width channels, 1x1 at a 224x224 input with the paper's 7), fc7 (1x1).
Decoder: fc6_deconv (the transposed fc6, back to 8*width channels), then per stage
an unpooling with *that stage's* switches and the size of the map that stage
pooled, and 3x3 transposed convs (padding 1) that mirror the stage's convs; a 1x1
score layer. Every conv and transposed conv but the score layer has a bias and is
followed by BN + ReLU (251,772,245 weights and biases + 2 per BN channel at width
64 and 21 classes: the paper's "252M").

Layer names follow the authors' Caffe model: ``conv1_1``/``bn1_1`` ... ``fc6``/``bnfc6``,
``fc7``/``bnfc7``, ``fc6_deconv``/``fc6_deconv_bn`` (Caffe: fc6-deconv), ``deconv5_1``/
``debn5_1`` ... ``deconv1_2``/``debn1_2``, ``seg_score`` (Caffe: seg-score).

Input sizes: H and W must be multiples of 32 (so every pool halves its map
exactly: a border row that a floor-mode pool dropped would come back from
unpooling as zeros) with H/32, W/32 >= fc_kernel (so fc6 fits in pool5's map:
224 for the paper's 7; ``fc_kernel=2`` allows 64). Other sizes raise
a ValueError naming the nearest valid ones. Where we differ from the paper: the
init is PyTorch's default (the paper starts the encoder from ImageNet VGG16, see
``segnets.load_torch_state_dict``, and draws the decoder from zero-mean Gaussians).
"""
from minigrad import functional as F
from minigrad import nn

from .common import SegmentationNet, SizeRule, check_int
from .vgg import add_vgg16_convs, vgg16_bn_encoder_with_switches

# Per decoder stage (deepest first): its number and the width multiplier of each transposed conv.
DECODER = ((5, (8, 8, 8)), (4, (8, 8, 4)), (3, (4, 4, 2)), (2, (2, 1)), (1, (1, 1)))


class DeconvNet(SegmentationNet):
    name = "deconvnet"
    has_vgg16_trunk = True  # load_torch_state_dict accepts torchvision's vgg16 / vgg16_bn keys

    def __init__(self, num_classes=21, in_channels=3, width=64, fc_kernel=7):
        check_int("fc_kernel", fc_kernel)
        super().__init__(num_classes, in_channels, width, fc_kernel=fc_kernel)
        self.fc_kernel = fc_kernel
        channels = add_vgg16_convs(self, in_channels, width, batch_norm=True)
        for stage in range(1, 6):
            setattr(self, f"pool{stage}", nn.MaxPool2d(2, stride=2, return_indices=True))
        fc = 64 * width
        self.fc6, self.bnfc6 = nn.Conv2d(channels, fc, fc_kernel), nn.BatchNorm2d(fc)
        self.fc7, self.bnfc7 = nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc)
        self.fc6_deconv = nn.ConvTranspose2d(fc, channels, fc_kernel)
        self.fc6_deconv_bn = nn.BatchNorm2d(channels)
        for stage, mults in DECODER:
            setattr(self, f"unpool{stage}", nn.MaxUnpool2d(2, stride=2))
            for i, mult in enumerate(mults, start=1):
                setattr(self, f"deconv{stage}_{i}", nn.ConvTranspose2d(channels, width * mult, 3, padding=1))
                setattr(self, f"debn{stage}_{i}", nn.BatchNorm2d(width * mult))
                channels = width * mult
        self.seg_score = nn.Conv2d(channels, num_classes, 1)

    @classmethod
    def size_rule_for(cls, fc_kernel=7, **_):
        first = 32 * fc_kernel
        return SizeRule(first, 32, 0, f"multiples of 32, at least 32 * fc_kernel = {first}")

    def forward(self, x):
        self.check_input(x)
        x, switches = vgg16_bn_encoder_with_switches(self, x)
        x = F.relu(self.bnfc6(self.fc6(x)))
        x = F.relu(self.bnfc7(self.fc7(x)))
        x = F.relu(self.fc6_deconv_bn(self.fc6_deconv(x)))
        for stage, mults in DECODER:
            indices, pooled_size = switches[stage]
            x = getattr(self, f"unpool{stage}")(x, indices, output_size=pooled_size)
            for i in range(1, len(mults) + 1):
                x = F.relu(getattr(self, f"debn{stage}_{i}")(getattr(self, f"deconv{stage}_{i}")(x)))
        return self.seg_score(x)
