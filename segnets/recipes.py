"""Default training recipes, one per net.

Each recipe trains on the default data (the embedded ``shapes`` set: 800 train /
100 val images of 64x64) in about ten minutes on a 2-core CPU (one epoch, with
evaluation, on a quiet 2-core machine: FCNs 7.5-12 s, DeconvNet 17-19 s, U-Net
14-16 s; single-threaded BLAS was the faster end). On a machine shared with other work, run with
``OPENBLAS_NUM_THREADS=1``: two BLAS threads that wait for a busy core made a
U-Net epoch 17x slower there (368 s against 21 s single-threaded). Every value can be
overridden by the matching ``segnets.train`` flag; model options merge with
``--model-opt`` (the flag wins key by key).

Why they differ from the papers: the papers fine-tune from ImageNet VGG16 on
500x500 VOC images on a GPU with SGD; here every net starts from scratch on 64x64
images on a CPU.
* width 8 (the papers' 64 / 8): enough for six classes of shapes, and it leaves
  time for 30-45 epochs; more epochs helped more than more channels.
* Adam instead of SGD: from scratch, the FCNs (13 VGG convs, no batch norm)
  hardly move under SGD in this budget; Adam's per-weight step sizes get them going
  (FCN-8s on its PyTorch twin: val mIoU 0.22 after 30 epochs at lr 1e-3, 0.52
  after 45 at 3e-3). The full recipes reached val mIoU 0.21 / 0.48 / 0.57 (FCN-32s /
  16s / 8s, 55 epochs), 0.16 (DeconvNet, 30) and 0.70 (U-Net, 36): the README's table.
* DeconvNet keeps the paper's SGD (lr 0.01, momentum 0.9), at a constant rate: it is
  about 30 layers deep without a shortcut, and from scratch every Adam setting tried
  (lr 3e-4..1e-2, fc_kernel 1 or 2, width 16, median-frequency weights) and SGD at
  0.1 stayed at the background-only solution (mIoU 0.131) for 12-25 epochs, while
  SGD 0.01 on its PyTorch twin left it (train loss 0.65, val mIoU 0.18 after 25
  epochs, still falling). It stays the slowest learner here: its encoder learns only
  through the 2x2 bottleneck (switches pass no gradient), where fc6/fc7 barely move
  from their init; the README's table section has the measurements. The paper starts
  its encoder from ImageNet VGG16 (``--init-weights``, ``segnets.load_torch_state_dict``).
* FCN's ``pad100`` (100 px of zero padding so any input fits the 7x7 fc6) would
  make every conv work on 264x264 instead of 64x64 (17x the compute), so it is off,
  with a 1x1 fc6 (``fc_kernel=1``; FCN needs an odd kernel): a 64x64 input is
  2x2 after pool5.
* DeconvNet's fc6 covers the whole 7x7 pool5 map of a 224x224 input; here pool5
  is 2x2: ``fc_kernel=1`` keeps the 2x2 map (2 also fits, and squeezes it to 1x1).
* U-Net's unpadded ("valid") 3x3 convs need inputs of at least 188 px, so
  ``padding="same"``; ``batch_norm`` lets it train quickly from scratch.
* DeepLab-LargeFOV, DeepLab v2 (VGG16) and SegNet: the papers' SGD with momentum 0.9 and
  DeepLab's poly schedule; lr 0.01 for the DeepLabs (from scratch; the papers fine-tune at 0.001)
  and SegNet's own 0.1. Adam was no faster here: fitting 16 shapes images (32x32, batch 8, 200
  steps) LargeFOV reached the same train loss with SGD 0.01 / 0.03 as with Adam 1e-3 / 3e-3 (SGD
  0.003 was slower); SegNet with SGD 0.1 came close to Adam 3e-3 in 100 steps (SGD 0.01 did not
  move). On 400 shapes images at 32x32 for 12 epochs (600 steps) every setting tried kept
  LargeFOV at the all-background solution (val mIoU 0.131; final train loss in brackets): SGD 0.01
  (0.87), 0.05 (0.91), 0.01 with median-frequency weights (1.76: no progress), 0.01 with a 10x
  rate on fc8 (0.87), 0.1 with a 100-step warm-up and gradient clipping at norm 1 (0.87 after 9
  epochs), and Adam 3e-3 (0.92). His init (the trunk's, already) gives gradient/weight ratios of
  0.015-0.05 in every conv at the start: no layer starves. At 64x64 with SGD 0.01 LargeFOV's train
  loss falls below the class-frequency guess's 0.85 (0.745 after 12 epochs, 0.680 after 30) but
  it still calls every pixel background; SegNet with SGD 0.1 stayed at 0.85 for 12 epochs on
  shapes and left the all-background solution on Fashion-MNIST scenes. Neither optimizer is shown
  to be faster, so the papers' SGD stays. The atrous rates are scaled to 64x64 crops. The
  README's section on these nets has the runs. The papers fine-tune from ImageNet VGG16
  (``--init-weights``), the route these nets are built for.
  Not a bug (64x64, 8 fixed images, 300 steps, eval-mode pixel accuracy; all-background 0.75):
  LargeFOV 0.951 (Adam 1e-3) / 0.932 (SGD 0.01), v2 0.945 (Adam), SegNet 0.933 (Adam) / 0.926
  (SGD 0.1), against FCN-8s 0.948 / 0.934: every net memorises one batch as fast as FCN-8s. The
  offline stand-in for ImageNet, the 13 convs of an FCN-8s shapes run (mIoU 0.459;
  ``tools/vgg_trunk.py``), is what these recipes need: from it, with the recipe unchanged,
  LargeFOV and v2 leave the all-background solution at epoch 4 (val mIoU 0.214 / 0.220 after 12
  epochs), where from scratch they had not after 12 (or LargeFOV after 30); a weaker trunk
  (the same FCN-8s run after 10 epochs, mIoU 0.149) did not suffice (0.131, train loss 0.694).
  With the recipes' full 30 epochs from that trunk: LargeFOV 0.381, v2 0.379 (``--seed 1``, which
  also draws other shapes images: 0.371 / 0.374); SegNet 0.180 and DeconvNet 0.196 (circles only,
  both left the background late: epochs 13 / 17). So the DeepLab
  recipes stay as they are: they are fine-tuning recipes, as in the papers.
"""
import copy

# Settings shared by every recipe (the torchvision segmentation reference's choices
# where they apply: momentum 0.9 for SGD, weight decay 1e-4, poly schedule, batch 8).
COMMON = {
    "dataset": "shapes",
    "data_options": {},
    "batch_size": 8,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_schedule": "poly",
    "poly_power": 0.9,          # DeepLab's poly: lr * (1 - it/total) ** 0.9, stepped per iteration
    "step_size": None,          # StepLR step in epochs; None: a third of the epochs
    "step_gamma": 0.1,
    "scale_range": [0.75, 1.25],  # random rescale before the crop (torchvision uses 0.5-2.0 on VOC)
    "flip": True,
    "class_weights": "none",
    "seed": 0,
    "preview_images": 4,        # val images shown in predictions/epoch_NNN.png
    "prefetch": 2,              # training batches prepared ahead in a thread (same batches either way)
    "init_weights": None,       # --init-weights FILE: start from these weights (e.g. ImageNet VGG16)
}

RECIPES = {
    "fcn32s": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 55,
               "model_options": {"pad100": False, "fc_kernel": 1}},
    "fcn16s": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 55,
               "model_options": {"pad100": False, "fc_kernel": 1}},
    "fcn8s": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 55,
              "model_options": {"pad100": False, "fc_kernel": 1}},
    "deconvnet": {"width": 8, "crop_size": 64, "optimizer": "sgd", "lr": 1e-2, "lr_schedule": "constant",
                  "epochs": 30, "model_options": {"fc_kernel": 1}},
    "unet": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 36,
             "model_options": {"padding": "same", "batch_norm": True}},
    # DeepLab's recipe (COMMON): SGD, momentum 0.9, poly schedule; lr 0.01 from scratch (the papers
    # fine-tune at 0.001 from ImageNet VGG16). Adam 3e-3 was no faster on this trunk (the module
    # docstring). Atrous rates are scaled to the 9x9 stride-8 map of a 64x64 crop (the papers' 12
    # and 6..24 are for the 41x41 map of a 321x321 crop).
    "deeplabv1_largefov": {"width": 8, "crop_size": 64, "lr": 1e-2, "epochs": 30,
                           "model_options": {"fc6_dilation": 2}},
    "deeplabv2_vgg16": {"width": 8, "crop_size": 64, "lr": 1e-2, "epochs": 30,
                        "model_options": {"rates": [1, 2, 3, 4]}},
    # SegNet's paper: SGD lr 0.1, momentum 0.9 (its batch norms take the large rate); poly from COMMON.
    "segnet": {"width": 8, "crop_size": 64, "lr": 0.1, "epochs": 30, "model_options": {}},
    # The ResNet nets (segnets/models/deeplabv3.py, pspnet.py): the FCNs' Adam 3e-3 at width 8 (ResNet-101
    # then ends in 256 channels), the references' rates and aux heads (weights 0.5 / 0.4, training only).
    # 6 epochs: a ResNet-101 step (batch 8, 64x64) takes 0.6-1.6 s on one busy core, ~20x an FCN-8s step,
    # most of it per-layer overhead of ~110 small convs (width 4 is barely faster). On a 64x64 crop the
    # stride-8 map is 8x8, where the references' ASPP rates (v2 6..24, v3 12/24/36, v3+ 6/12/18 on its 4x4
    # stride-16 map) see only their centre tap plus zero padding: every branch would act as a 1x1 conv. So
    # the rates are scaled to the 8x8 map, as for deeplabv2_vgg16 above: v2 1/2/3/4 (the reference's / 6),
    # v3 and v3+ 1/2/3 (/ 12, the references' 1:2:3 kept), and v3+ runs at output stride 8 (jfzhang95's
    # option) so that v3 and v3+ differ only by the decoder (and v3+'s multi-grid layer4). Fashion-MNIST
    # scenes, 8 epochs (README): val mIoU v3 0.283, v3+ 0.292, PSPNet-50 0.351 (FCN-8s 0.425).
    "deeplabv2_resnet101": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 6,
                            "model_options": {"atrous_rates": [1, 2, 3, 4]}},
    "deeplabv3_resnet101": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 6,
                            "model_options": {"aux_loss": True, "atrous_rates": [1, 2, 3]}},
    "deeplabv3plus_resnet101": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 6,
                                "model_options": {"output_stride": 8, "atrous_rates": [1, 2, 3]}},
    "pspnet50": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 6,
                 "model_options": {"aux_loss": True}},
    "pspnet101": {"width": 8, "crop_size": 64, "optimizer": "adam", "lr": 3e-3, "epochs": 6,
                  "model_options": {"aux_loss": True}},
}


def recipe(net):
    """The full default settings for ``net`` (a fresh copy: callers may change it)."""
    if net not in RECIPES:
        raise ValueError(f"no recipe for net {net!r}; known nets: {', '.join(sorted(RECIPES))}")
    settings = copy.deepcopy(COMMON)
    settings.update(copy.deepcopy(RECIPES[net]))
    settings["net"] = net
    return settings


class SettingsError(ValueError):
    """Flags or settings that do not make sense (the CLIs print 'error: ...' and exit with code 2)."""


def parse_value(text):
    """A command-line value: 'true'/'false' -> bool, 'none' -> None, then int, float, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(pairs, flag):
    """['a=1', 'padding=same'] -> {'a': 1, 'padding': 'same'}; ``flag`` names the option in errors."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{flag} expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = parse_value(value)
    return options


def describe():
    """One line per net: its recipe's main values (the epilog of ``segnets.train --help``)."""
    lines = []
    for net in RECIPES:
        r = recipe(net)
        options = " ".join(f"{k}={v}" for k, v in r["model_options"].items())
        lines.append(f"  {net:<10} width {r['width']}, crop {r['crop_size']}, batch {r['batch_size']}, "
                     f"{r['optimizer']} lr {r['lr']:g}, {r['lr_schedule']}, {r['epochs']} epochs; {options}")
    return "\n".join(lines)
