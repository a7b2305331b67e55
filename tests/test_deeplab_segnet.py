"""DeepLab-LargeFOV, DeepLab v2 ASPP-L and SegNet: sizes, the papers' counts, switches, weight import, PyTorch parity."""
import re

import numpy as np
import pytest

import minigrad
import segnets
from minigrad import functional as F
from minigrad import nn
from tests.helpers import require_torch, torchvision_vgg16_state
from tests.test_models import _check_parity, _twin_and_model

NEW = ["deeplabv1_largefov", "deeplabv2_vgg16", "segnet"]


def tensor(rng, shape):
    return minigrad.Tensor(rng.standard_normal(shape))


# ---------------------------------------------------------------- registry, options, counts
def test_registered_with_options():
    for name in NEW:
        assert name in segnets.MODELS
    assert segnets.options_of("deeplabv1_largefov") == ["fc6_dilation"]
    assert segnets.options_of("deeplabv2_vgg16") == ["rates"]
    assert segnets.options_of("segnet") == []
    model = segnets.build_model("deeplabv2_vgg16", 4, width=1, rates="2, 3")
    assert model.config["rates"] == [2, 3] and model.fc6_2.dilation == (3, 3) and not hasattr(model, "fc6_3")
    assert segnets.build_model(**model.config).config == model.config
    with pytest.raises(ValueError, match="rates must be comma-separated ints"):
        segnets.build_model("deeplabv2_vgg16", 4, width=1, rates="6,x")
    with pytest.raises(ValueError, match="fc6_dilation must be an int >= 1"):
        segnets.build_model("deeplabv1_largefov", 4, width=1, fc6_dilation=0)
    with pytest.raises(TypeError, match="segnet has no option 'fc_kernel'"):
        segnets.build_model("segnet", 4, fc_kernel=1)


@pytest.mark.parametrize("name, total, convs, batch_norm", [
    ("deeplabv1_largefov", 20_505_429, 16, 0),
    ("deeplabv2_vgg16", 37_877_652, 13 + 12, 0),
    ("segnet", 29_455_125, 26, 15_872),
])
def test_full_size_parameter_counts(name, total, convs, batch_norm, monkeypatch):
    monkeypatch.setattr(nn.init, "uniform_", lambda tensor, *args, **kwargs: tensor)
    monkeypatch.setattr(nn.init, "normal_", lambda tensor, *args, **kwargs: tensor)
    model = segnets.build_model(name, 21)
    assert model.num_parameters() == model.num_parameters(only_trainable=True) == total
    assert sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
               for p in m.parameters()) == batch_norm
    assert len([m for m in model.modules() if isinstance(m, nn.Conv2d)]) == convs
    if name == "segnet":  # 29,439,253 in the 26 convs with their biases
        assert total - batch_norm == 29_439_253
    else:
        assert model.conv5_1.dilation == (2, 2) and model.conv4_3.dilation == (1, 1)
        fc6 = model.fc6 if name == "deeplabv1_largefov" else model.fc6_4
        assert fc6.weight.shape == (1024, 512, 3, 3)
    del model


def test_paper_dilations():
    v1 = segnets.build_model("deeplabv1_largefov", 21, width=1)
    assert v1.fc6.dilation == v1.fc6.padding == (12, 12)
    v2 = segnets.build_model("deeplabv2_vgg16", 21, width=1)
    assert [getattr(v2, f"fc6_{k}").dilation[0] for k in range(1, 5)] == [6, 12, 18, 24]


# ---------------------------------------------------------------- geometry
@pytest.mark.parametrize("size, logits", [((321, 321), (41, 41)), ((65, 50), (9, 8)), ((1, 3), (1, 2))])
def test_deeplab_output_stride_8_upsampled_to_the_input(size, logits):
    model = segnets.build_model("deeplabv1_largefov", 3, width=1, fc6_dilation=2).eval()
    text = model.summary(size, print_fn=None)
    assert re.search(rf"fc8 +Conv2d +\(1, 3, {logits[0]}, {logits[1]}\)", text), text
    assert f"output (1, 3, {size[0]}, {size[1]})" in text


def test_deeplab_upsampling_keeps_logit_j_over_input_8j():
    """At 8k + 1 sizes the bilinear (align_corners) upsampling reproduces each logit at input pixel 8j."""
    model = segnets.build_model("deeplabv1_largefov", 2, width=1, fc6_dilation=1).to(np.float64).eval()
    captured = {}
    forward = model.fc8.forward
    model.fc8.forward = lambda x: captured.setdefault("fc8", forward(x))
    with minigrad.no_grad():
        out = model(tensor(np.random.default_rng(0), (1, 3, 41, 33))).numpy()
    np.testing.assert_allclose(out[..., ::8, ::8], captured["fc8"].numpy(), rtol=1e-12, atol=1e-12)


def test_segnet_size_rule_and_unpooling_at_each_stages_switches():
    model = segnets.build_model("segnet", 3, width=1).to(np.float64)
    assert model.size_rule() == (32, 32, 0, "every pool must halve its map: multiples of 32")
    with pytest.raises(ValueError, match="nearest valid 32 or 64"):
        model(minigrad.Tensor(np.zeros((1, 3, 40, 64), np.float32)))
    seen = {}
    for stage in range(1, 6):
        pool, unpool = getattr(model, f"pool{stage}"), getattr(model, f"unpool{stage}")
        pool_forward, unpool_forward = pool.forward, unpool.forward
        pool.forward = lambda x, s=stage, f=pool_forward: seen.setdefault(f"pool{s}", f(x))
        unpool.forward = lambda x, i, output_size=None, s=stage, f=unpool_forward: seen.setdefault(
            f"unpool{s}", (i, output_size, f(x, i, output_size=output_size)))[2]
    with minigrad.no_grad():
        model(tensor(np.random.default_rng(1), (2, 3, 64, 96)))
    for stage in range(1, 6):
        (_, switches), (used, size, out) = seen[f"pool{stage}"], seen[f"unpool{stage}"]
        assert used is switches and tuple(size) == (64 >> (stage - 1), 96 >> (stage - 1))
        planes = out.numpy().reshape(2, out.shape[1], -1)
        mask = np.zeros(planes.shape, dtype=bool)
        np.put_along_axis(mask, switches.numpy().reshape(2, out.shape[1], -1), True, axis=2)
        assert not planes[~mask].any()  # zero everywhere but at that stage's switches


@pytest.mark.parametrize("name, options, size", [
    ("deeplabv1_largefov", {"fc6_dilation": 3}, (33, 28)),
    ("deeplabv2_vgg16", {"rates": [1, 2]}, (25, 25)),
    ("segnet", {}, (32, 64)),
])
def test_gradients_reach_every_parameter(name, options, size):
    model = segnets.build_model(name, 3, width=2, **options).to(np.float64).train()
    rng = np.random.default_rng(2)
    logits = model(tensor(rng, (2, 3) + size))
    assert logits.shape == (2, 3) + size
    F.cross_entropy(logits, minigrad.Tensor(rng.integers(0, 3, size=(2,) + size))).backward()
    for key, param in model.named_parameters():
        assert param.grad is not None and np.abs(param.grad.numpy()).max() > 0, key


# ---------------------------------------------------------------- weight import
def test_torchvision_vgg16_loads_onto_the_deeplab_trunk():
    rng = np.random.default_rng(3)
    state = torchvision_vgg16_state(rng, 1, batch_norm=False)
    model = segnets.build_model("deeplabv2_vgg16", 3, width=1)
    missing, unexpected = segnets.load_torch_state_dict(model, state, strict=False)
    np.testing.assert_array_equal(model.conv5_3.weight.numpy(), state["features.28.weight"])
    np.testing.assert_array_equal(model.conv2_1.bias.numpy(), state["features.5.bias"])
    assert sorted(missing) == sorted(k for k in model.state_dict() if k.startswith("fc"))
    assert unexpected == [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


def test_torchvision_vgg16_bn_loads_into_the_segnet_encoder():
    rng = np.random.default_rng(4)
    state = torchvision_vgg16_state(rng, 1, batch_norm=True)
    model = segnets.build_model("segnet", 3, width=1)
    missing, _ = segnets.load_torch_state_dict(model, state, strict=False)
    np.testing.assert_array_equal(model.conv4_1.weight.numpy(), state["features.24.weight"])
    np.testing.assert_array_equal(model.bn5_3.running_mean.numpy(), state["features.41.running_mean"])
    assert missing and all(k.endswith("_D.weight") or "_D." in k for k in missing)


# ---------------------------------------------------------------- parity with PyTorch (float64)
@pytest.mark.torch
@pytest.mark.parametrize("name, options, size, train", [
    ("deeplabv1_largefov", {"fc6_dilation": 3}, (33, 26), False),
    ("deeplabv2_vgg16", {"rates": [1, 2, 3]}, (30, 41), False),
])
def test_deeplab_matches_pytorch(name, options, size, train):
    torch = require_torch()
    from benchmarks.torch_nets import build
    twin = build(name, 3, width=2, **dict(options))
    twin, model = _twin_and_model(torch, twin, name, num_classes=3, width=2, **options)
    x = np.random.default_rng(0).standard_normal((2, 3) + size)
    _check_parity(torch, twin, model, x, train=train)


@pytest.mark.torch
def test_segnet_matches_pytorch():
    torch = require_torch()
    from benchmarks.torch_nets import SegNet
    twin, model = _twin_and_model(torch, SegNet(3, width=2), "segnet", num_classes=3, width=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96))
    _check_parity(torch, twin, model, x, train=True)  # batch statistics and running-stat updates
