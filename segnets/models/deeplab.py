"""DeepLab-LargeFOV (Chen et al., ICLR 2015) and DeepLab v2 ASPP-L (Chen et al., TPAMI 2017) on VGG16.

Both keep VGG16's 13 convs but trade its last two poolings for atrous (dilated)
convolution, so the logits come out at output stride 8 instead of 32:

* pool1, pool2, pool3: 3x3 max-pools with stride 2 and padding 1 (ceil mode,
  as Caffe rounds); pool4 and pool5: 3x3, stride 1, padding 1 (they keep the size);
* conv5_1 ... conv5_3: dilation 2 (padding 2), to see what they saw behind pool4;
* LargeFOV: fc6 3x3 with dilation 12 (``fc6_dilation``) and 16*width channels
  (1024 at width 64: the paper's "large field of view" with a thinned fc6), fc7
  1x1 (16*width), ReLU and dropout 0.5 after each, fc8 1x1 to the classes.
  20,505,429 parameters at width 64 with 21 classes.
* v2 ASPP-L: four branches on pool5, each fc6_k 3x3 with dilation ``rates[k]``
  (6, 12, 18, 24) -> fc7_k 1x1 -> fc8_k 1x1 (with ReLU and dropout between), the
  four branches' logits summed. 37,877,652 parameters at width 64 with 21 classes.

The logits (1/8 of the input size) are upsampled bilinearly to the input size
with ``align_corners=True``, as DeepLab's Caffe ``Interp`` layer: logit pixel j
sits over input pixel 8j, which the upsampling keeps exactly for sizes 8k + 1
(DeepLab's 321 and 513); any size >= 1 is accepted.

Layer names follow the authors' Caffe models: ``conv1_1`` ... ``conv5_3``, ``fc6``,
``fc7``, ``fc8`` (Caffe: fc8_voc12), and ``fc6_1`` ... ``fc8_4`` for the ASPP
branches. The trunk takes torchvision's ``vgg16`` weights (``segnets.load_torch_state_dict``;
``vgg16_bn`` is folded into the convs); the paper also initialises fc6/fc7 by
subsampling VGG16's fully connected layers, which we do not do (their keys come
back as unexpected).

Where we differ from the papers: DeepLab trains against labels downsampled by 8
and upsamples only at test time; here the upsampling is part of the net and the
loss is taken at full size (as most re-implementations do). Init from scratch:
He-normal trunk and fc6/fc7, fc8 from N(0, 0.01^2) (the paper's fc8 init), zero biases.
"""
from minigrad import functional as F
from minigrad import nn

from .common import SegmentationNet, SizeRule, check_int
from .vgg import add_vgg16_convs, vgg16_names, vgg16_stage

ASPP_RATES = (6, 12, 18, 24)


class DeepLabVGG16(SegmentationNet):
    """The atrous VGG16 trunk (output stride 8) shared by LargeFOV and ASPP-L; subclasses add the heads."""

    has_vgg16_trunk = True  # load_torch_state_dict accepts torchvision's vgg16 / vgg16_bn keys

    def __init__(self, num_classes, in_channels, width, **options):
        super().__init__(num_classes, in_channels, width, **options)
        self.trunk_channels = add_vgg16_convs(self, in_channels, width, stage5_dilation=2)
        for stage in range(1, 6):
            setattr(self, f"pool{stage}", nn.MaxPool2d(3, stride=2 if stage <= 3 else 1, padding=1, ceil_mode=True))

    def _head(self, suffix, dilation):
        """fc6{suffix} (3x3, ``dilation``), fc7{suffix} (1x1), fc8{suffix} (1x1 to the classes) and their dropouts."""
        fc = 16 * self.width
        setattr(self, f"fc6{suffix}", nn.Conv2d(self.trunk_channels, fc, 3, padding=dilation, dilation=dilation))
        setattr(self, f"drop6{suffix}", nn.Dropout(0.5))
        setattr(self, f"fc7{suffix}", nn.Conv2d(fc, fc, 1))
        setattr(self, f"drop7{suffix}", nn.Dropout(0.5))
        setattr(self, f"fc8{suffix}", nn.Conv2d(fc, self.num_classes, 1))

    def _run_head(self, x, suffix):
        x = getattr(self, f"drop6{suffix}")(F.relu(getattr(self, f"fc6{suffix}")(x)))
        x = getattr(self, f"drop7{suffix}")(F.relu(getattr(self, f"fc7{suffix}")(x)))
        return getattr(self, f"fc8{suffix}")(x)

    def _init_weights(self):
        for name, module in self.named_children():
            if not isinstance(module, nn.Conv2d):
                continue
            if name.startswith("fc8"):
                nn.init.normal_(module.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)

    @classmethod
    def size_rule_for(cls, **_):
        return SizeRule(1, 1, 0, "any size")

    def _trunk(self, x):
        for stage, names in enumerate(vgg16_names(), start=1):
            x = getattr(self, f"pool{stage}")(vgg16_stage(self, x, names))
        return x

    def _upsample(self, logits, size):
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


class DeepLabLargeFOV(DeepLabVGG16):
    name = "deeplabv1_largefov"

    def __init__(self, num_classes=21, in_channels=3, width=64, fc6_dilation=12):
        check_int("fc6_dilation", fc6_dilation)
        super().__init__(num_classes, in_channels, width, fc6_dilation=fc6_dilation)
        self._head("", fc6_dilation)
        self._init_weights()

    def forward(self, x):
        size = self.check_input(x)
        return self._upsample(self._run_head(self._trunk(x), ""), size)


class DeepLabV2VGG16(DeepLabVGG16):
    name = "deeplabv2_vgg16"

    def __init__(self, num_classes=21, in_channels=3, width=64, rates=ASPP_RATES):
        rates = parse_rates(rates)
        super().__init__(num_classes, in_channels, width, rates=list(rates))
        self.rates = rates
        for k, rate in enumerate(rates, start=1):
            self._head(f"_{k}", rate)
        self._init_weights()

    def forward(self, x):
        size = self.check_input(x)
        pool5 = self._trunk(x)
        logits = None
        for k in range(1, len(self.rates) + 1):
            branch = self._run_head(pool5, f"_{k}")
            logits = branch if logits is None else logits + branch
        return self._upsample(logits, size)


def parse_rates(rates):
    """ASPP rates as a tuple of ints >= 1, from a sequence or a '6,12,18,24' string (``--model-opt rates=...``)."""
    if isinstance(rates, str):
        try:
            rates = [int(r) for r in rates.replace(" ", "").split(",") if r]
        except ValueError:
            raise ValueError(f"rates must be comma-separated ints such as '6,12,18,24', got {rates!r}") from None
    elif isinstance(rates, int):
        rates = [rates]
    rates = tuple(rates)
    if not rates:
        raise ValueError("rates must name at least one ASPP branch, got none")
    for rate in rates:
        check_int("each of rates", rate)
    return tuple(int(r) for r in rates)
