"""Weight import from PyTorch-style state dicts (no torch needed here).

Key naming: a model's keys are its ``state_dict()`` keys, which are those of a
plain PyTorch re-implementation with the same attribute names (benchmarks/torch_nets.py
is one): e.g. ``conv1_1.weight``, ``score_fr.bias``, ``upscore.weight`` for FCN
(wkentaro/pytorch-fcn's names), ``bn1_1.running_mean``, ``fc6_deconv.weight``,
``debn5_1.weight``, ``seg_score.bias`` for DeconvNet, ``enc1.conv1.weight``,
``up4.weight``, ``final.bias`` for U-Net. Layouts are PyTorch's: conv weights
(out, in, kh, kw), transposed-conv weights (in, out, kh, kw).

ImageNet VGG16 for FCN and DeconvNet: torchvision's ``vgg16`` / ``vgg16_bn``
state dicts are recognised by their ``features.N`` keys and renamed (see
``vgg.translate_torchvision_vgg16``). They cover only the trunk (and fc6/fc7 when
the shapes allow), so load them with ``strict=False`` and read the returned
missing keys::

    sd = {k: v.numpy() for k, v in torch.load("vgg16-397923af.pth").items()}
    missing, unexpected = segnets.load_torch_state_dict(model, sd, strict=False)

ImageNet ResNet-50/101 for DeepLab v2/v3/v3+ and PSPNet: torchvision's
``resnet50`` / ``resnet101`` state dicts (``conv1.weight``, ``layer1.0.conv1.weight``,
..., ``fc.*``) are recognised and prefixed with ``backbone.`` (see
``resnet.translate_torchvision_resnet``); ``fc.*`` comes back as unexpected, and
the heads as missing. A torchvision ``deeplabv3_resnet101`` state dict has our
DeepLab v3's key names and loads as it is.
"""
import numpy as np

from minigrad import Tensor

from .resnet import is_torchvision_resnet, translate_torchvision_resnet
from .vgg import is_torchvision_vgg, translate_torchvision_vgg16


def load_torch_state_dict(model, state_dict, strict=True):
    """Copy a {name: array} state dict into ``model`` in place; returns (missing_keys, unexpected_keys).

    Values may be NumPy arrays, minigrad Tensors or anything ``np.asarray`` accepts
    (CPU torch tensors included); each is cast to the target's dtype and device.
    As ``Module.load_state_dict``: shape mismatches always raise; missing and
    unexpected keys raise when ``strict``; nothing is copied if anything is wrong.
    """
    state = {key: value.numpy() if isinstance(value, Tensor) else np.asarray(value)
             for key, value in state_dict.items()}
    if getattr(model, "has_vgg16_trunk", False) and is_torchvision_vgg(state):
        targets = {key: tuple(t.shape) for key, t in model.state_dict().items()}
        has_bn = any(key.startswith("bn1_1.") for key in targets)
        state = translate_torchvision_vgg16(state, targets, has_bn)
    elif getattr(model, "has_resnet_backbone", False) and is_torchvision_resnet(state):
        state = translate_torchvision_resnet(state, deep_stem=model.backbone.deep_stem)
    return model.load_state_dict(state, strict=strict)
