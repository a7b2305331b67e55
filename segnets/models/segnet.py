"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017): a VGG16 encoder and a decoder driven by its switches.

Encoder: the 13 VGG16 convs, each followed by batch norm and ReLU, and five 2x2
stride-2 max-pools that keep their switches (the argmax positions). No fully
connected layers: that is what separates it from DeconvNet (whose fc6/fc7 hold
90% of its 252M parameters) and brings it to 29.5M.

Decoder: five stages, deepest first. Each unpools with *its own* encoder stage's
switches (``max_unpool2d``: every value goes back to where its maximum came
from, the rest of the map is zero) and then densifies the sparse map with 3x3
convs (padding 1) that mirror the stage's encoder convs, each followed by batch
norm and ReLU, except the last conv (conv1_1_D), which maps to the classes and
feeds the softmax. 13 decoder convs; 29,455,125 trainable parameters at width 64
with 21 classes (29,439,253 in convs with biases, 15,872 in batch norm).

Layer names follow the authors' Caffe model (segnet_train.prototxt): encoder
``conv1_1``/``bn1_1`` ... ``conv5_3``/``bn5_3`` (Caffe: conv1_1_bn), decoder
``conv5_3_D``/``bn5_3_D`` ... ``conv1_2_D``/``bn1_2_D``, ``conv1_1_D`` (Caffe names
the BNs conv5_3_D_bn), pools ``pool1`` ... ``pool5`` and ``unpool5`` ... ``unpool1``
(Caffe: upsample5 ...). The encoder takes torchvision's ``vgg16_bn`` weights, as
the paper starts from ImageNet VGG16 (``segnets.load_torch_state_dict``).

Input sizes: H and W multiples of 32, so that every pool halves its map exactly
(the Caffe model's upsample layers are told the odd sizes instead; here a border
row that a floor-mode pool dropped would come back from unpooling as zeros).
Init: He-normal convs (the paper's choice) with zero biases; BN weight 1, bias 0.
"""
from minigrad import functional as F
from minigrad import nn

from .common import SegmentationNet, SizeRule
from .vgg import add_vgg16_convs, vgg16_bn_encoder_with_switches

# Per decoder stage (deepest first): its number and the width multiplier of each conv's output,
# conv{stage}_{count}_D first. None: the classes (conv1_1_D).
DECODER = ((5, (8, 8, 8)), (4, (8, 8, 4)), (3, (4, 4, 2)), (2, (2, 1)), (1, (1, None)))


def decoder_names(stage, count):
    """['5_3', '5_2', '5_1'] for stage 5 with 3 convs: the decoder runs each stage's convs backwards."""
    return [f"{stage}_{i}" for i in range(count, 0, -1)]


class SegNet(SegmentationNet):
    name = "segnet"
    has_vgg16_trunk = True  # load_torch_state_dict accepts torchvision's vgg16 / vgg16_bn keys

    def __init__(self, num_classes=21, in_channels=3, width=64):
        super().__init__(num_classes, in_channels, width)
        channels = add_vgg16_convs(self, in_channels, width, batch_norm=True)
        for stage in range(1, 6):
            setattr(self, f"pool{stage}", nn.MaxPool2d(2, stride=2, return_indices=True))
        for stage, mults in DECODER:
            setattr(self, f"unpool{stage}", nn.MaxUnpool2d(2, stride=2))
            for name, mult in zip(decoder_names(stage, len(mults)), mults):
                out = num_classes if mult is None else width * mult
                setattr(self, f"conv{name}_D", nn.Conv2d(channels, out, 3, padding=1))
                if mult is not None:
                    setattr(self, f"bn{name}_D", nn.BatchNorm2d(out))
                channels = out
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    @classmethod
    def size_rule_for(cls, **_):
        return SizeRule(32, 32, 0, "every pool must halve its map: multiples of 32")

    def forward(self, x):
        self.check_input(x)
        x, switches = vgg16_bn_encoder_with_switches(self, x)
        for stage, mults in DECODER:
            indices, pooled_size = switches[stage]
            x = getattr(self, f"unpool{stage}")(x, indices, output_size=pooled_size)
            for name, mult in zip(decoder_names(stage, len(mults)), mults):
                x = getattr(self, f"conv{name}_D")(x)
                if mult is not None:
                    x = F.relu(getattr(self, f"bn{name}_D")(x))
        return x
