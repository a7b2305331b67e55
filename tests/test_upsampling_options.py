"""``upsampling=transposed|bilinear|nearest`` for U-Net and the FCNs: resize-then-conv decoders."""
import numpy as np
import pytest

import minigrad
import segnets
from minigrad import functional as F
from minigrad import nn
from segnets.models.fcn import ResizeConv
from segnets.models.unet import UpConv
from tests.helpers import require_torch
from tests.test_models import _check_parity, _twin_and_model


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_unet_resize_conv_layers_shapes_and_counts(mode):
    paper = segnets.build_model("unet", 2, in_channels=1, width=2)
    model = segnets.build_model("unet", 2, in_channels=1, width=2, upsampling=mode)
    assert isinstance(model.up4, UpConv) and model.up4.mode == mode
    assert model.up4.conv.weight.shape == (16, 32, 3, 3) and paper.up4.weight.shape == (32, 16, 2, 2)
    ups = sum(getattr(paper, f"up{level}").weight.numel() for level in range(1, 5))
    assert model.num_parameters() - paper.num_parameters() == ups * 5 // 4  # 3x3 instead of 2x2 kernels
    for options, size, out in (({}, (188, 204), (4, 20)), ({"padding": "same"}, (32, 48), (32, 48))):
        net = segnets.build_model("unet", 2, in_channels=1, width=1, upsampling=mode, **options)
        with minigrad.no_grad():
            assert net(minigrad.Tensor(np.zeros((1, 1) + size, np.float32))).shape == (1, 2) + out


def test_bad_upsampling_is_named():
    with pytest.raises(ValueError, match="upsampling must be one of 'transposed', 'bilinear', 'nearest', got 'cubic'"):
        segnets.build_model("unet", 2, upsampling="cubic")
    with pytest.raises(ValueError, match="upsampling='nearest' needs pad100=False"):
        segnets.build_model("fcn8s", 3, width=1, upsampling="nearest")


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_fcn_resize_conv_starts_as_plain_interpolation(mode):
    """Untrained and fixed, FCN-32s' resize-conv upsampler is exactly F.interpolate of score_fr."""
    model = segnets.build_model("fcn32s", 3, width=1, pad100=False, fc_kernel=1, upsampling=mode)
    model = model.to(np.float64).eval()
    assert isinstance(model.upscore, ResizeConv) and not model.upscore.conv.weight.requires_grad
    rng = np.random.default_rng(0)
    model.score_fr.weight.data[...] = rng.standard_normal(model.score_fr.weight.shape)
    captured = {}
    forward = model.score_fr.forward
    model.score_fr.forward = lambda x: captured.setdefault("score", forward(x))
    with minigrad.no_grad():
        out = model(minigrad.Tensor(rng.standard_normal((1, 3, 64, 96))))
    expected = F.interpolate(captured["score"], scale_factor=32, mode=mode,
                             align_corners=False if mode == "bilinear" else None)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    learned = segnets.build_model("fcn8s", 3, width=1, pad100=False, upsampling=mode, learn_upsampling=True)
    assert all(getattr(learned, n).conv.weight.requires_grad for n in ("upscore2", "upscore_pool4", "upscore8"))
    assert isinstance(learned.upscore8.conv, nn.Conv2d) and learned.upscore8.conv.bias is None


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_unet_resize_conv_matches_pytorch(mode):
    torch = require_torch()
    from benchmarks.torch_nets import UNet
    options = {"padding": "same", "batch_norm": True, "upsampling": mode}
    twin, model = _twin_and_model(torch, UNet(2, 1, width=2, **options), "unet",
                                  num_classes=2, in_channels=1, width=2, **options)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 48))
    _check_parity(torch, twin, model, x, train=True)


@pytest.mark.torch
def test_fcn_resize_conv_matches_pytorch():
    torch = require_torch()
    from benchmarks.torch_nets import FCN
    options = {"pad100": False, "fc_kernel": 3, "upsampling": "bilinear", "learn_upsampling": True}
    twin, model = _twin_and_model(torch, FCN("fcn8s", 3, width=2, **options), "fcn8s",
                                  num_classes=3, width=2, **options)
    x = np.random.default_rng(0).standard_normal((2, 3, 35, 50))
    _check_parity(torch, twin, model, x, train=False)


def _checkerboard_script():
    """docs/checkerboard.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "docs" / "checkerboard.py"
    spec = importlib.util.spec_from_file_location("checkerboard_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkerboard_picture_numbers():
    """The picture's constant-input panels and its 2x2-periodic share, on hand-made inputs."""
    script = _checkerboard_script()
    panels = dict(script.outputs())
    inner = panels["transposed 3x3, stride 2"][4:-4, 4:-4]
    # Two layers: each output pixel gets 1, 2 or 4 taps of 1/9 per layer, so inside the border the
    # values are products (1/9 .. 4/9) x (1/9 .. 4/9) / ... : max/min = 3 * 3 = 9 exactly.
    assert np.isclose(inner.max() / inner.min(), 9.0)
    for title in ("nearest x2 + conv 3x3", "bilinear x2 + conv 3x3"):
        np.testing.assert_allclose(panels[title][4:-4, 4:-4], 1.0, rtol=1e-12)
    yy, xx = np.mgrid[0:16, 0:16]
    board = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[None, None]  # all of it repeats with period 2
    assert 0.98 < script.periodic_share(board) <= 1.0  # not exactly 1: the box mean replicates the border
    noise = np.random.default_rng(0).standard_normal((4, 3, 64, 64))
    assert script.periodic_share(noise) < 0.01  # no preferred parity: ~ 1/(H*W/4) of the variance
    # Equal parts: the board's high-pass is +-8/9 (power 64/81), the noise's has variance 1 - 2/9 + 1/9 = 8/9.
    yy, xx = np.mgrid[0:64, 0:64]
    mixed = noise + np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    assert abs(script.periodic_share(mixed) - (64 / 81) / (64 / 81 + 8 / 9)) < 0.02
