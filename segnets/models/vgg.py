"""The VGG16 trunk shared by FCN and DeconvNet, and the translation of torchvision's VGG16 keys.

The trunk is 13 3x3 convolutions in five stages of 2, 2, 3, 3, 3 (widths w, 2w,
4w, 8w, 8w), each stage ended by a 2x2 stride-2 max-pool. The layers are
attributes ``conv{stage}_{i}`` (and ``bn{stage}_{i}`` with batch norm), the
Caffe names that FCN's and DeconvNet's reference models and their PyTorch
re-implementations use.
"""
import numpy as np

from minigrad import nn
from minigrad import functional as F

VGG16_STAGES = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))  # (width multiplier, number of convs)


def vgg16_names():
    """[['1_1', '1_2'], ['2_1', '2_2'], ['3_1', '3_2', '3_3'], ...]: the conv suffixes per stage."""
    return [[f"{stage}_{i}" for i in range(1, convs + 1)]
            for stage, (_, convs) in enumerate(VGG16_STAGES, start=1)]


def add_vgg16_convs(net, in_channels, width, batch_norm=False, first_padding=1, stage5_dilation=1):
    """Register the 13 convs (and BNs) on ``net``; returns the channel count of the last one.

    ``first_padding`` is conv1_1's padding (100 in FCN's reference models);
    ``stage5_dilation`` the dilation (and padding) of conv5_1 ... conv5_3 (2 in DeepLab).
    """
    channels = in_channels
    for stage, ((mult, _), names) in enumerate(zip(VGG16_STAGES, vgg16_names()), start=1):
        dilation = stage5_dilation if stage == 5 else 1
        for name in names:
            padding = first_padding if name == "1_1" else dilation
            setattr(net, f"conv{name}", nn.Conv2d(channels, width * mult, 3, padding=padding, dilation=dilation))
            if batch_norm:
                setattr(net, f"bn{name}", nn.BatchNorm2d(width * mult))
            channels = width * mult
    return channels


def vgg16_stage(net, x, names, batch_norm=False):
    """conv -> (BN) -> ReLU for each conv of one stage (the pool is the caller's)."""
    for name in names:
        x = getattr(net, f"conv{name}")(x)
        if batch_norm:
            x = getattr(net, f"bn{name}")(x)
        x = F.relu(x)
    return x


def vgg16_bn_encoder_with_switches(net, x):
    """VGG16-BN's five stages, each pool (``net.poolS``) keeping its switches (DeconvNet, SegNet).

    Returns the pool5 output and ``{stage: (indices, size before the pool)}`` for the unpoolings.
    """
    switches = {}
    for stage, names in enumerate(vgg16_names(), start=1):
        x = vgg16_stage(net, x, names, batch_norm=True)
        pooled_size = x.shape[-2:]
        x, indices = getattr(net, f"pool{stage}")(x)
        switches[stage] = (indices, pooled_size)
    return x, switches


# ---------------------------------------------------------------- torchvision's vgg16 / vgg16_bn keys
def is_torchvision_vgg(state_dict):
    return any(key.startswith("features.") for key in state_dict)


def torchvision_vgg16_layers(batch_norm):
    """{'features.N': 'convS_I' or 'bnS_I'}: torchvision's ``features`` Sequential is
    conv, (BN), ReLU per conv and a MaxPool per stage."""
    layers, index = {}, 0
    for names in vgg16_names():
        for name in names:
            layers[f"features.{index}"] = f"conv{name}"
            index += 1
            if batch_norm:
                layers[f"features.{index}"] = f"bn{name}"
                index += 1
            index += 1  # ReLU
        index += 1  # MaxPool2d
    return layers


def translate_torchvision_vgg16(state_dict, target_shapes, net_has_batch_norm):
    """Rename torchvision's vgg16 / vgg16_bn keys to ours.

    * ``features.N.*`` -> ``convS_I.*`` / ``bnS_I.*``; a vgg16_bn dict loaded into a
      net without batch norm (FCN) has each BN folded into its conv, which is exact
      for the eval-mode network;
    * ``classifier.0`` / ``classifier.3`` (the fully connected fc6/fc7) -> our
      convolutional ``fc6`` / ``fc7``, reshaped (FCN's "convolutionalization"), when
      the sizes agree (fc_kernel=7, width=64); otherwise they keep their names;
    * ``classifier.6`` (the 1000 ImageNet classes) has no counterpart and keeps its name.
    Keys that keep their names are reported as unexpected by ``load_state_dict``.
    A ``features`` weight of the wrong size (another width) is a size-mismatch error.
    """
    source_bn = any(key.startswith("features.1.") for key in state_dict)
    features = torchvision_vgg16_layers(source_bn)
    def fits(module, ours):
        weight, shape = state_dict.get(f"{module}.weight"), target_shapes.get(f"{ours}.weight")
        return weight is not None and shape is not None and np.size(weight) == int(np.prod(shape))
    classifier = {module: ours for module, ours in (("classifier.0", "fc6"), ("classifier.3", "fc7"))
                  if fits(module, ours)}
    out = {}
    for key, value in state_dict.items():
        module, _, field = key.rpartition(".")
        value = np.asarray(value)
        name = f"{features[module]}.{field}" if module in features else key
        if module in classifier:
            name = f"{classifier[module]}.{field}"
            value = value.reshape(target_shapes[name])
        out[name] = value
    if source_bn and not net_has_batch_norm:
        _fold_batch_norms(out)
    return out


def _fold_batch_norms(state, eps=1e-5):
    """conv followed by eval-mode BN == one conv with w * s and (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    for names in vgg16_names():
        for name in names:
            conv, bn = f"conv{name}", f"bn{name}"
            if f"{bn}.running_var" not in state or f"{conv}.weight" not in state:
                continue
            scale = state.pop(f"{bn}.weight") / np.sqrt(state.pop(f"{bn}.running_var") + eps)
            shift = state.pop(f"{bn}.bias") - state.pop(f"{bn}.running_mean") * scale
            state.pop(f"{bn}.num_batches_tracked", None)
            bias = state.get(f"{conv}.bias", 0.0)
            state[f"{conv}.weight"] = state[f"{conv}.weight"] * scale.reshape(-1, 1, 1, 1)
            state[f"{conv}.bias"] = bias * scale + shift
