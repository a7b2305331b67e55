"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell, CVPR 2015) on a VGG16 trunk.

Layer names follow the reference Caffe models and their plain PyTorch
re-implementation (wkentaro/pytorch-fcn): ``conv1_1`` ... ``conv5_3``, ``fc6``,
``fc7``, ``score_fr``, ``score_pool4``, ``score_pool3``, ``upscore`` (32s),
``upscore2`` + ``upscore16`` (16s), ``upscore2`` + ``upscore_pool4`` + ``upscore8`` (8s).

Geometry. With ``pad100=True`` (the reference) conv1_1 is padded by 100 so that
any input survives fc6's 7x7 kernel, and every map is cropped at the reference
offsets: 19 (32s); 5, 27 (16s); 5, 9, 31 (8s). They come from composing each
layer's coordinate map x_in = stride * x_out + (kernel - 1) / 2 - padding
(Caffe's ``coord_map``); see ``PAD100_OFFSETS``. With ``pad100=False``, conv1_1
and fc6 use 'same' padding and each k = 2f, stride-f upsampler is padded by f/2,
so every map's pixel (0, 0) sits over input pixel (0, 0): all crops are at
offset 0 and only cut the bottom/right overhang that ceil-mode pooling adds.
Either way the output is N x num_classes x H x W for any H, W >= 32 (smaller
too: any size with pad100, >= 17 without, where pool5 must still see 2 rows).

Upsampling (``upsampling="transposed"``, the reference). Transposed convs without bias, initialised to bilinear interpolation
on the channel diagonal. They are Parameters, so ``num_parameters()`` counts them
(the paper's totals do), but with ``learn_upsampling=False`` (the reference) they
have ``requires_grad=False``: build the optimizer from
``[p for p in model.parameters() if p.requires_grad]``. The score layers are
zero-initialised, as in the reference; the trunk and fc6/fc7 get He-normal init
(the papers start from ImageNet VGG16, see ``segnets.load_torch_state_dict``).
``upsampling="bilinear"`` or ``"nearest"`` (needs ``pad100=False``): each upsampler
is instead a resize by its factor followed by a 3x3 conv (padding 1, no bias)
initialised to the identity, so the untrained net interpolates; with
``learn_upsampling=True`` the conv learns (resize-convolution, which cannot paint
the checkerboard a learned transposed conv can: docs/checkerboard.png). The
layers keep their names (``upscore2.conv.weight``).

Where we differ from the reference: Dropout is element-wise (Caffe's), and FCN-8s
has no pool3/pool4 score scaling (that is the "at-once" variant).
"""
from minigrad import functional as F
from minigrad import nn

from .common import SegmentationNet, SizeRule, check_bool, check_int, crop
from .unet import check_upsampling
from .vgg import add_vgg16_convs, vgg16_names, vgg16_stage

# Crop offsets with pad100=True and the 7x7 fc6. For FCN-32s: pool5 pixel f sits over
# input 32 f + 15.5 - 99, fc6 pixel g over pool5 g + 3, and upscore pixel u over fc6
# (u - 31.5) / 32, so upscore pixel u sits over input u - 19: crop at 19.
PAD100_OFFSETS = {"fcn32s": (19,), "fcn16s": (5, 27), "fcn8s": (5, 9, 31)}


class FCN(SegmentationNet):
    """The trunk, fc6/fc7 and score_fr shared by the three variants; subclasses add the skips."""

    has_vgg16_trunk = True  # load_torch_state_dict accepts torchvision's vgg16 / vgg16_bn keys

    def __init__(self, num_classes=21, in_channels=3, width=64, pad100=True, fc_kernel=7,
                 learn_upsampling=False, upsampling="transposed"):
        check_bool("pad100", pad100)
        check_bool("learn_upsampling", learn_upsampling)
        check_int("fc_kernel", fc_kernel)
        check_upsampling(upsampling)
        if pad100 and upsampling != "transposed":
            raise ValueError(f"upsampling={upsampling!r} needs pad100=False: the reference's crop offsets are "
                             "made for its transposed convs")
        if pad100 and fc_kernel != 7:
            raise ValueError(f"fc_kernel={fc_kernel} needs pad100=False: the 100-pixel padding and the crop "
                             "offsets of the reference model are made for the 7x7 fc6")
        if fc_kernel % 2 == 0:
            raise ValueError(f"FCN needs an odd fc_kernel (its 'same' padding must be symmetric to keep "
                             f"the maps aligned), got {fc_kernel}")
        super().__init__(num_classes, in_channels, width, pad100=pad100, fc_kernel=fc_kernel,
                         learn_upsampling=learn_upsampling, upsampling=upsampling)
        self.pad100, self.learn_upsampling, self.upsampling = pad100, learn_upsampling, upsampling
        channels = add_vgg16_convs(self, in_channels, width, first_padding=100 if pad100 else 1)
        for stage in range(1, 6):
            setattr(self, f"pool{stage}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        fc = 64 * width
        self.fc6 = nn.Conv2d(channels, fc, fc_kernel, padding=0 if pad100 else fc_kernel // 2)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = self._score_layer(fc)
        self._he_init()

    def _he_init(self):
        """He-normal weights and zero biases for the trunk and fc6/fc7 (the score layers stay zero).

        The reference starts from ImageNet VGG16; from scratch, 15 ReLU convs without
        batch norm barely move under PyTorch's default init (measured on the shapes
        data, PyTorch twin at width 8, Adam 1e-3: FCN-8s mIoU 0.22 vs 0.33 after 1,500 steps).
        """
        for name, module in self.named_children():
            if isinstance(module, nn.Conv2d) and not name.startswith("score"):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _score_layer(self, channels):
        layer = nn.Conv2d(channels, self.num_classes, 1)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    def _upsampler(self, factor):
        """Bilinear upsampling by ``factor``: kernel 2f, stride f, no bias (padded by f/2 without pad100)."""
        if self.upsampling != "transposed":
            return ResizeConv(self.num_classes, factor, self.upsampling, self.learn_upsampling)
        layer = nn.ConvTranspose2d(self.num_classes, self.num_classes, 2 * factor, stride=factor,
                                   padding=0 if self.pad100 else factor // 2, bias=False)
        nn.init.bilinear_(layer.weight)
        layer.weight.requires_grad_(self.learn_upsampling)
        return layer

    @classmethod
    def size_rule_for(cls, pad100=True, **_):
        if pad100:
            return SizeRule(1, 1, 0, "any size")
        return SizeRule(17, 1, 0, "without pad100 pool5 must see 2 rows: at least 17")

    def offsets(self):
        """The crop offsets, one per skip fusion then the final crop."""
        return PAD100_OFFSETS[self.name] if self.pad100 else (0,) * len(PAD100_OFFSETS[self.name])

    def _trunk(self, x):
        """(pool3, pool4, score_fr) for input ``x``."""
        pools = []
        for stage, names in enumerate(vgg16_names(), start=1):
            x = getattr(self, f"pool{stage}")(vgg16_stage(self, x, names))
            pools.append(x)
        x = self.drop6(F.relu(self.fc6(x)))
        x = self.drop7(F.relu(self.fc7(x)))
        return pools[2], pools[3], self.score_fr(x)


class ResizeConv(nn.Module):
    """Resize by ``factor`` (bilinear with align_corners=False, or nearest), then a 3x3 conv without bias
    (padding 1) initialised to the identity on the channel diagonal; it learns only with ``learn``."""

    def __init__(self, channels, factor, mode, learn):
        super().__init__()
        self.factor, self.mode = factor, mode
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.conv.weight)
        self.conv.weight.data[range(channels), range(channels), 1, 1] = 1.0
        self.conv.weight.requires_grad_(learn)

    def forward(self, x):
        align = False if self.mode == "bilinear" else None
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=align))

    def extra_repr(self):
        return f"factor={self.factor}, mode={self.mode!r}"


def fuse(coarse, skip, offset):
    """coarse + skip, where coarse pixel i sits over skip pixel i + offset; over the part both cover.

    With pad100 the upsampled coarse map is the smaller one and the skip is cropped
    at ``offset`` (the reference's Crop layer); without, ``offset`` is 0 and the
    coarse map's ceil-mode overhang at the bottom/right is cut.
    """
    h = min(coarse.shape[-2], skip.shape[-2] - offset)
    w = min(coarse.shape[-1], skip.shape[-1] - offset)
    return crop(coarse, 0, 0, (h, w)) + crop(skip, offset, offset, (h, w))


class FCN32s(FCN):
    """score_fr upsampled 32x in one step."""

    name = "fcn32s"

    def __init__(self, num_classes=21, in_channels=3, width=64, **options):
        super().__init__(num_classes, in_channels, width, **options)
        self.upscore = self._upsampler(32)

    def forward(self, x):
        size = self.check_input(x)
        _, _, score = self._trunk(x)
        (offset,) = self.offsets()
        return crop(self.upscore(score), offset, offset, size)


class FCN16s(FCN):
    """score_fr upsampled 2x, plus the pool4 scores, upsampled 16x."""

    name = "fcn16s"

    def __init__(self, num_classes=21, in_channels=3, width=64, **options):
        super().__init__(num_classes, in_channels, width, **options)
        self.score_pool4 = self._score_layer(8 * width)
        self.upscore2 = self._upsampler(2)
        self.upscore16 = self._upsampler(16)

    def forward(self, x):
        size = self.check_input(x)
        _, pool4, score = self._trunk(x)
        pool4_offset, offset = self.offsets()
        fused = fuse(self.upscore2(score), self.score_pool4(pool4), pool4_offset)
        return crop(self.upscore16(fused), offset, offset, size)


class FCN8s(FCN):
    """As FCN-16s, then upsampled 2x again, plus the pool3 scores, upsampled 8x."""

    name = "fcn8s"

    def __init__(self, num_classes=21, in_channels=3, width=64, **options):
        super().__init__(num_classes, in_channels, width, **options)
        self.score_pool4 = self._score_layer(8 * width)
        self.score_pool3 = self._score_layer(4 * width)
        self.upscore2 = self._upsampler(2)
        self.upscore_pool4 = self._upsampler(2)
        self.upscore8 = self._upsampler(8)

    def forward(self, x):
        size = self.check_input(x)
        pool3, pool4, score = self._trunk(x)
        pool4_offset, pool3_offset, offset = self.offsets()
        fused = fuse(self.upscore2(score), self.score_pool4(pool4), pool4_offset)
        fused = fuse(self.upscore_pool4(fused), self.score_pool3(pool3), pool3_offset)
        return crop(self.upscore8(fused), offset, offset, size)
