"""The segmentation nets and their one entry point, ``build_model``.

>>> model = build_model("fcn8s", num_classes=21)           # the paper's FCN-8s
>>> tiny = build_model("unet", 2, width=4, padding="same")  # any option of the net's class
>>> same = build_model(**tiny.config)                       # what a checkpoint stores
"""
import inspect

from .common import SegmentationNet, SizeRule, summary
from .deconvnet import DeconvNet
from .deeplab import DeepLabLargeFOV, DeepLabV2VGG16
from .deeplabv3 import DeepLabV2, DeepLabV3, DeepLabV3Plus
from .fcn import FCN8s, FCN16s, FCN32s
from .pspnet import PSPNet50, PSPNet101
from .segnet import SegNet
from .unet import UNet
from .weights import load_torch_state_dict

_CLASSES = {"fcn32s": FCN32s, "fcn16s": FCN16s, "fcn8s": FCN8s, "deconvnet": DeconvNet, "unet": UNet,
            "deeplabv1_largefov": DeepLabLargeFOV, "deeplabv2_vgg16": DeepLabV2VGG16, "segnet": SegNet,
            "deeplabv2_resnet101": DeepLabV2, "deeplabv3_resnet101": DeepLabV3,
            "deeplabv3plus_resnet101": DeepLabV3Plus, "pspnet50": PSPNet50, "pspnet101": PSPNet101}
MODELS = list(_CLASSES)


def options_of(name):
    """The option names (keyword arguments beyond num_classes, in_channels, width) of net ``name``."""
    cls = model_class(name)
    classes = [c for c in cls.__mro__ if "__init__" in vars(c) and issubclass(c, SegmentationNet)]
    names = []
    for c in classes:
        for param in inspect.signature(c.__init__).parameters.values():
            if param.kind is param.KEYWORD_ONLY or param.default is not param.empty:
                if param.name not in ("num_classes", "in_channels", "width") and param.name not in names:
                    names.append(param.name)
    return names


def build_model(name, num_classes, in_channels=3, width=64, **options):
    """A new ``minigrad.nn.Module``: net ``name`` (one of ``MODELS``) predicting ``num_classes`` classes.

    ``width`` is the channel count of the first stage (64 in the papers); every
    stage scales with it (FCN's and DeconvNet's fc6/fc7 have 64 * width). The
    defaults of ``options`` give the papers' networks:
    fcn32s/fcn16s/fcn8s: pad100=True, fc_kernel=7, learn_upsampling=False;
    deconvnet: fc_kernel=7; unet: padding="valid", batch_norm=False;
    deeplabv1_largefov: fc6_dilation=12; deeplabv2_vgg16: rates=(6, 12, 18, 24); segnet: none.
    On ResNet (the reference implementations'): deeplabv2_resnet101: atrous_rates=(6, 12, 18, 24);
    deeplabv3_resnet101, pspnet50, pspnet101: aux_loss=False (True adds the training-only aux head);
    deeplabv3_resnet101: output_stride=8, atrous_rates=(12, 24, 36) ((6, 12, 18) at output_stride=16);
    deeplabv3plus_resnet101: output_stride=16, separable=False, atrous_rates=(6, 12, 18) ((12, 24, 36) at 8).
    The model's ``config`` holds all of these, so ``build_model(**model.config)`` rebuilds it.
    """
    cls = model_class(name)
    unknown = sorted(set(options) - set(options_of(name)))
    if unknown:
        raise TypeError(f"{name} has no option {', '.join(map(repr, unknown))}; "
                        f"its options are {', '.join(options_of(name))}")
    return cls(num_classes=num_classes, in_channels=in_channels, width=width, **options)


def model_class(name):
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return _CLASSES[name]


__all__ = ["MODELS", "build_model", "model_class", "options_of", "load_torch_state_dict", "summary", "SegmentationNet", "SizeRule",
           "FCN32s", "FCN16s", "FCN8s", "DeconvNet", "UNet",
           "DeepLabLargeFOV", "DeepLabV2VGG16", "SegNet",
           "DeepLabV2", "DeepLabV3", "DeepLabV3Plus", "PSPNet50", "PSPNet101"]
