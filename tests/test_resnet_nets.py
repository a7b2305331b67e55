"""The ResNet backbone and the nets on it (DeepLab v2/v3/v3+, PSPNet): reference parameter counts,
dilation schedules, the aux-head contract, torchvision resnet key import and float64 PyTorch parity."""
import numpy as np
import pytest

import minigrad
import segnets
from minigrad import functional as F
from minigrad import nn
from segnets.models.deeplabv3 import SeparableConv2d
from segnets.models.resnet import Bottleneck, ResNet
from tests.helpers import require_torch

NETS = ["deeplabv2_resnet101", "deeplabv3_resnet101", "deeplabv3plus_resnet101", "pspnet50", "pspnet101"]


def _no_random_init(monkeypatch):
    """Full-size nets are built with uninitialised weights: drawing ~60M normals says nothing about the layers."""
    monkeypatch.setattr(nn.init, "uniform_", lambda tensor, *args, **kwargs: tensor)
    monkeypatch.setattr(nn.init, "normal_", lambda tensor, *args, **kwargs: tensor)


# ---------------------------------------------------------------- the references' parameter counts
@pytest.mark.parametrize("name, options, total", [
    ("deeplabv2_resnet101", {}, 44_048_532),                          # kazuto1011/deeplab-pytorch
    ("deeplabv3_resnet101", {}, 58_630_997),                          # torchvision
    ("deeplabv3_resnet101", {"aux_loss": True}, 60_996_202),
    ("deeplabv3plus_resnet101", {}, 59_344_309),                      # jfzhang95/pytorch-deeplab-xception
    ("deeplabv3plus_resnet101", {"output_stride": 8}, 59_344_309),
    ("deeplabv3plus_resnet101", {"separable": True}, 45_688_261),     # 3x3s -> depthwise + BN + pointwise
    ("pspnet50", {}, 46_716_373),                                     # hszhao/semseg
    ("pspnet101", {}, 65_708_501),
    ("pspnet50", {"aux_loss": True}, 49_081_578),
    ("pspnet101", {"aux_loss": True}, 68_073_706),
    # atrous_rates / output_stride change dilations, not parameters; the defaults are the references' rates
    ("deeplabv2_resnet101", {"atrous_rates": "1,2,3,4"}, 44_048_532),
    ("deeplabv3_resnet101", {"atrous_rates": [1, 2, 3], "output_stride": 16}, 58_630_997),
    ("deeplabv3plus_resnet101", {"atrous_rates": (1, 2, 3), "output_stride": 8}, 59_344_309),
])
def test_full_size_parameter_counts(name, options, total, monkeypatch):
    _no_random_init(monkeypatch)
    model = segnets.build_model(name, 21, **options)
    assert model.num_parameters() == model.num_parameters(only_trainable=True) == total


def test_atrous_rates_count_by_hand(monkeypatch):
    """Each rate is one branch: two rates instead of three drop a 3x3 branch (2048 -> 256, with BN) and
    256 input channels of the 1x1 projection (torchvision's and jfzhang95's ASPP alike); v2 sums its branches
    (2048 -> 21, with bias), so one rate fewer is one conv fewer."""
    _no_random_init(monkeypatch)
    branch, projection = 2048 * 256 * 9 + 2 * 256, 256 * 256
    assert segnets.build_model("deeplabv3_resnet101", 21, atrous_rates="6,12").num_parameters() \
        == 58_630_997 - branch - projection
    assert segnets.build_model("deeplabv3plus_resnet101", 21, atrous_rates=[1, 2, 3, 4]).num_parameters() \
        == 59_344_309 + branch + projection
    assert segnets.build_model("deeplabv2_resnet101", 21, atrous_rates=6).num_parameters() \
        == 44_048_532 - 3 * (2048 * 21 * 9 + 21)


@pytest.mark.parametrize("name, options, dilations", [
    ("deeplabv2_resnet101", {}, (6, 12, 18, 24)),
    ("deeplabv2_resnet101", {"atrous_rates": "1,2,3,4"}, (1, 2, 3, 4)),
    ("deeplabv3_resnet101", {}, (12, 24, 36)),
    ("deeplabv3_resnet101", {"output_stride": 16}, (6, 12, 18)),      # the DeepLab v3 paper's rates at OS 16
    ("deeplabv3_resnet101", {"atrous_rates": [1, 2, 3]}, (1, 2, 3)),
    ("deeplabv3plus_resnet101", {}, (6, 12, 18)),
    ("deeplabv3plus_resnet101", {"output_stride": 8}, (12, 24, 36)),  # jfzhang95 doubles them at OS 8
    ("deeplabv3plus_resnet101", {"output_stride": 8, "atrous_rates": "1,2,3"}, (1, 2, 3)),
])
def test_atrous_rates_reach_the_aspp_convs(name, options, dilations):
    """Every dilated branch is a 3x3 conv padded by its rate (rate 1 too: only v3+'s first branch is 1x1)."""
    model = segnets.build_model(name, 2, width=1, **options)
    if name == "deeplabv2_resnet101":
        convs = [getattr(model.aspp, f"c{k}") for k in range(len(dilations))]
    elif name == "deeplabv3_resnet101":
        convs = [branch[0] for branch in model.classifier[0].convs[1:-1]]
        assert model.classifier[0].convs[0][0].kernel_size == (1, 1)
    else:
        convs = [getattr(model.aspp, f"aspp{k}").atrous_conv for k in range(2, len(dilations) + 2)]
        assert model.aspp.aspp1.atrous_conv.kernel_size == (1, 1)
        assert not hasattr(model.aspp, f"aspp{len(dilations) + 2}")
    assert [conv.dilation for conv in convs] == [(r, r) for r in dilations]
    assert [conv.padding for conv in convs] == [(r, r) for r in dilations]
    assert all(conv.kernel_size == (3, 3) for conv in convs)
    assert model.config["atrous_rates"] == list(dilations)
    assert segnets.build_model(**model.config).config == model.config
    default_stride = 16 if name == "deeplabv3plus_resnet101" else 8
    assert model.backbone.output_stride == options.get("output_stride", default_stride)


def test_a_rate_at_least_the_map_size_leaves_only_the_centre_tap():
    """Why the option exists: a 64x64 crop gives an 8x8 map at output stride 8, where torchvision's rate-12
    branch reads zero padding at all eight outer taps, so it computes the 1x1 conv of its centre weights."""
    model = segnets.build_model("deeplabv3_resnet101", 2, width=1).eval()
    conv = model.classifier[0].convs[1][0]
    assert conv.dilation == (12, 12)
    x = minigrad.Tensor(np.random.default_rng(0).standard_normal((1, 32, 8, 8)).astype(np.float32))
    centre = np.einsum("oc,nchw->nohw", conv.weight.numpy()[:, :, 1, 1], x.numpy())
    np.testing.assert_allclose(conv(x).numpy(), centre, rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError):  # at rate 1 the outer taps count
        small = segnets.build_model("deeplabv3_resnet101", 2, width=1, atrous_rates="1,2,3").classifier[0].convs[1][0]
        np.testing.assert_allclose(small(x).numpy(), np.einsum("oc,nchw->nohw", small.weight.numpy()[:, :, 1, 1],
                                                               x.numpy()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["deeplabv2_resnet101", "deeplabv3_resnet101", "deeplabv3plus_resnet101"])
def test_recipe_rates_reach_inside_the_crop_s_map(name):
    """The recipes scale the rates to their crop: every 3x3 branch's outer taps land inside the map."""
    from segnets.recipes import recipe
    settings = recipe(name)
    model = segnets.build_model(name, 2, width=1, **settings["model_options"])
    side = settings["crop_size"] // model.backbone.output_stride
    assert side == 8 and 1 <= max(model.config["atrous_rates"]) < side


def test_separable_count_by_hand(monkeypatch):
    """The separable variant replaces three ASPP 3x3s (2048 -> 256) and the decoder's two 3x3s
    (304 -> 256, 256 -> 256) by depthwise 3x3 + BN(in) + pointwise 1x1."""
    _no_random_init(monkeypatch)

    def separable(cin, cout):
        return cin * 9 + 2 * cin + cin * cout
    saved = 3 * (2048 * 256 * 9 - separable(2048, 256)) + (304 * 256 * 9 - separable(304, 256)) \
        + (256 * 256 * 9 - separable(256, 256))
    assert 59_344_309 - saved == 45_688_261
    model = segnets.build_model("deeplabv3plus_resnet101", 21, separable=True)
    assert isinstance(model.aspp.aspp2.atrous_conv, SeparableConv2d)
    assert model.aspp.aspp2.atrous_conv.depthwise.groups == 2048
    assert model.aspp.aspp4.atrous_conv.depthwise.dilation == (18, 18)
    assert isinstance(model.aspp.aspp1.atrous_conv, nn.Conv2d)  # the 1x1 branch stays


def test_backbones_match_torchvision_resnet_counts(monkeypatch):
    """torchvision's resnet50 / resnet101 have 25,557,032 / 44,549,160 parameters with their 1000-class fc."""
    _no_random_init(monkeypatch)
    fc = 2048 * 1000 + 1000
    assert ResNet(50).num_parameters() == 25_557_032 - fc
    assert ResNet(101).num_parameters() == 44_549_160 - fc
    bottlenecks = [m for m in ResNet(101).modules() if isinstance(m, Bottleneck)]
    assert len(bottlenecks) == 33 and all(m.downsample is None for m in bottlenecks[1:3])


# ---------------------------------------------------------------- the backbone's geometry
def _dilations(backbone):
    return [[block.conv2.dilation[0] for block in getattr(backbone, f"layer{i}")] for i in range(1, 5)]


@pytest.mark.parametrize("replace, output_stride, layer3, layer4", [
    ((False, False, False), 32, [1] * 6, [1] * 3),
    ((False, False, True), 16, [1] * 6, [1, 2, 2]),   # torchvision: the first block keeps the previous dilation
    ((False, True, True), 8, [1, 2, 2, 2, 2, 2], [2, 4, 4]),
])
def test_replace_stride_with_dilation_as_torchvision(replace, output_stride, layer3, layer4):
    backbone = ResNet(50, width=1, replace_stride_with_dilation=replace)
    assert backbone.output_stride == output_stride
    dilations = _dilations(backbone)
    assert dilations[2:] == [layer3, layer4]
    x = minigrad.Tensor(np.zeros((1, 3, 64, 96), np.float32))
    with minigrad.no_grad():
        stages = backbone.eval().stages(x)
    assert [tuple(s.shape[-2:]) for s in stages][-1] == (64 // output_stride, 96 // output_stride)
    assert [s.shape[1] for s in stages] == [4, 8, 16, 32]


def test_reference_dilation_schedules():
    v2 = segnets.build_model("deeplabv2_resnet101", 2, width=1)
    assert _dilations(v2.backbone)[2:] == [[2] * 23, [4] * 3]
    assert v2.backbone.layer2[0].conv1.stride == (2, 2) and v2.backbone.layer2[0].conv2.stride == (1, 1)
    assert v2.backbone.maxpool.ceil_mode
    plus = segnets.build_model("deeplabv3plus_resnet101", 2, width=1)
    assert _dilations(plus.backbone)[2:] == [[1] * 23, [2, 4, 8]] and plus.backbone.output_stride == 16
    plus8 = segnets.build_model("deeplabv3plus_resnet101", 2, width=1, output_stride=8)
    assert _dilations(plus8.backbone)[2:] == [[2] * 23, [4, 8, 16]]
    assert [b.atrous_conv.dilation[0] for b in (plus8.aspp.aspp2, plus8.aspp.aspp3, plus8.aspp.aspp4)] == [12, 24, 36]
    psp = segnets.build_model("pspnet50", 2, width=1)
    assert _dilations(psp.backbone)[2:] == [[2] * 6, [4] * 3]
    assert psp.backbone.conv1.weight.shape == (1, 3, 3, 3) and psp.backbone.conv3.weight.shape == (2, 1, 3, 3)
    assert psp.backbone.layer1[0].conv1.weight.shape == (1, 2, 1, 1)


def test_he_init_and_zero_init_residual():
    backbone = ResNet(50, width=16, zero_init_residual=True)
    weight = backbone.layer3[1].conv2.weight.numpy()  # fan_out = 64 * 9
    assert weight.std() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.05)
    assert all(not b.bn3.weight.numpy().any() for b in backbone.modules() if isinstance(b, Bottleneck))
    assert backbone.layer1[0].bn2.weight.numpy().min() == 1
    # each block starts as the identity on its shortcut: the map after layer1's second block equals its input
    block = backbone.layer1[1].eval()
    x = minigrad.Tensor(np.abs(np.random.default_rng(0).standard_normal((1, 64, 5, 5))).astype(np.float32))
    np.testing.assert_array_equal(block(x).numpy(), x.numpy())


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 34}, "depth must be one of"),
    ({"replace_stride_with_dilation": (True,)}, "3 booleans"),
    ({"multi_grid": (1, 2)}, "one multiplier per layer4 block"),
    ({"deep_stem": 1}, "deep_stem must be True or False"),
])
def test_resnet_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet(**{"width": 1, **kwargs})


@pytest.mark.parametrize("name, options, message", [
    ("deeplabv3plus_resnet101", {"output_stride": 32}, "output_stride must be 8 or 16"),
    ("deeplabv3_resnet101", {"output_stride": 4}, "output_stride must be 8 or 16"),
    ("deeplabv3_resnet101", {"atrous_rates": "6,x,18"}, "atrous_rates must be comma-separated ints >= 1"),
    ("deeplabv3_resnet101", {"atrous_rates": "6,0"}, "atrous_rates must be ints >= 1 .* got 0"),
    ("deeplabv3plus_resnet101", {"atrous_rates": []}, "atrous_rates must name at least one"),
    ("deeplabv3plus_resnet101", {"atrous_rates": [6, 2.5]}, "atrous_rates must be ints >= 1 .* got 2.5"),
    ("deeplabv2_resnet101", {"atrous_rates": -6}, "atrous_rates must be ints >= 1"),
    ("deeplabv2_resnet101", {"atrous_rates": 1.5}, "atrous_rates must be a sequence of ints"),
    ("deeplabv3_resnet101", {"aux_loss": "yes"}, "aux_loss must be True or False"),
    ("pspnet50", {"aux_loss": None}, "aux_loss must be True or False"),
])
def test_bad_net_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        segnets.build_model(name, 2, width=1, **options)


def test_registry_options_and_config():
    assert set(NETS) <= set(segnets.MODELS)
    assert segnets.options_of("deeplabv3plus_resnet101") == ["output_stride", "separable", "atrous_rates"]
    assert segnets.options_of("deeplabv3_resnet101") == ["aux_loss", "output_stride", "atrous_rates"]
    assert segnets.options_of("pspnet101") == ["aux_loss"]
    assert segnets.options_of("deeplabv2_resnet101") == ["atrous_rates"]
    model = segnets.build_model("deeplabv3_resnet101", 4, in_channels=1, width=1, aux_loss=True)
    assert model.config == {"name": "deeplabv3_resnet101", "num_classes": 4, "in_channels": 1, "width": 1,
                            "aux_loss": True, "output_stride": 8, "atrous_rates": [12, 24, 36]}
    again = segnets.build_model(**model.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- outputs and the aux contract
@pytest.mark.parametrize("name, options", [("deeplabv2_resnet101", {}), ("deeplabv3_resnet101", {"aux_loss": True}),
                                           ("deeplabv3_resnet101", {"output_stride": 16, "atrous_rates": "1,2"}),
                                           ("deeplabv3plus_resnet101", {"separable": True}),
                                           ("pspnet50", {"aux_loss": True})])
def test_any_size_gives_logits_at_the_input_size_and_aux_only_on_request(name, options):
    model = segnets.build_model(name, 3, width=1, **options)
    rule = model.size_rule()
    assert rule.accepts(1) and rule.accepts(47)
    x = minigrad.Tensor(np.random.default_rng(0).standard_normal((2, 3, 19, 30)).astype(np.float32))
    out = model(x)
    assert isinstance(out, minigrad.Tensor) and out.shape == (2, 3, 19, 30)
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 3, 19, 30)
    assert (aux is None) == (not options.get("aux_loss", False))
    if aux is not None:
        assert aux.shape == logits.shape and model.aux_weight == {"deeplabv3_resnet101": 0.5, "pspnet50": 0.4}[name]
    model.eval()
    with minigrad.no_grad():
        np.testing.assert_allclose(model(x).numpy(), model.forward_with_aux(x)[0].numpy(), rtol=1e-6)


def test_gradients_reach_every_parameter_with_the_aux_head():
    model = segnets.build_model("pspnet50", 3, width=1, aux_loss=True).to(np.float64).train()
    rng = np.random.default_rng(2)
    x = minigrad.Tensor(rng.standard_normal((2, 3, 17, 17)))
    target = minigrad.Tensor(rng.integers(0, 3, size=(2, 17, 17)))
    logits, aux = model.forward_with_aux(x)
    (F.cross_entropy(logits, target) + 0.4 * F.cross_entropy(aux, target)).backward()
    for key, param in model.named_parameters():
        assert param.grad is not None and np.abs(param.grad.numpy()).max() > 0, key


def test_summary_runs_the_net():
    model = segnets.build_model("deeplabv3plus_resnet101", 3, width=1)
    text = model.summary((33, 33), print_fn=None)
    assert "backbone.layer4.2.conv2" in text and "output (1, 3, 33, 33)" in text
    assert f"total parameters: {model.num_parameters():,}" in text


# ---------------------------------------------------------------- torchvision resnet keys
def _torchvision_resnet_state(depth, width, rng):
    """torchvision's resnet layout: our backbone's keys without the prefix, plus the 1000-class fc."""
    state = {k: rng.standard_normal(v.shape).astype(np.float32) if v.ndim else np.array(3)
             for k, v in ResNet(depth, width=width).state_dict().items()}
    state["fc.weight"] = rng.standard_normal((1000, 32 * width)).astype(np.float32)
    state["fc.bias"] = rng.standard_normal(1000).astype(np.float32)
    return state


def test_torchvision_resnet101_keys_load_into_the_backbone():
    rng = np.random.default_rng(3)
    state = _torchvision_resnet_state(101, 1, rng)
    model = segnets.build_model("deeplabv3_resnet101", 3, width=1)
    missing, unexpected = segnets.load_torch_state_dict(model, state, strict=False)
    np.testing.assert_array_equal(model.backbone.conv1.weight.numpy(), state["conv1.weight"])
    np.testing.assert_array_equal(model.backbone.layer3[22].bn2.running_var.numpy(), state["layer3.22.bn2.running_var"])
    assert unexpected == ["fc.weight", "fc.bias"]
    assert missing and all(k.startswith("classifier.") for k in missing)
    with pytest.raises(RuntimeError, match="size mismatch for backbone.conv1.weight"):
        segnets.load_torch_state_dict(model, _torchvision_resnet_state(101, 2, rng), strict=False)


def test_torchvision_resnet50_keys_skip_the_deep_stem():
    state = _torchvision_resnet_state(50, 1, np.random.default_rng(4))
    model = segnets.build_model("pspnet50", 3, width=1)
    missing, unexpected = segnets.load_torch_state_dict(model, state, strict=False)
    assert sorted(unexpected) == sorted(["conv1.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                                         "fc.weight", "fc.bias"])
    assert {"backbone.conv1.weight", "backbone.conv3.weight", "backbone.layer1.0.conv1.weight"} <= set(missing)
    np.testing.assert_array_equal(model.backbone.layer4[2].conv3.weight.numpy(), state["layer4.2.conv3.weight"])


# ---------------------------------------------------------------- parity with PyTorch
def _zero_dropout(modules):
    for module in modules:
        if type(module).__name__ in ("Dropout", "Dropout2d"):
            module.p = 0.0


@pytest.mark.torch
@pytest.mark.parametrize("name, options", [
    ("deeplabv2_resnet101", {}),
    ("deeplabv3_resnet101", {"aux_loss": True}),
    ("deeplabv3plus_resnet101", {}),
    ("deeplabv3plus_resnet101", {"separable": True, "output_stride": 8}),
    ("pspnet50", {"aux_loss": True}),
    ("deeplabv2_resnet101", {"atrous_rates": [1, 3]}),
    ("deeplabv3_resnet101", {"output_stride": 16, "atrous_rates": [1, 2]}),
    ("deeplabv3plus_resnet101", {"output_stride": 8, "atrous_rates": [1, 2, 3, 4]}),
])
def test_matches_pytorch(name, options):
    """Train mode (batch statistics, running-stat updates; dropout at p=0 on both sides), forward and
    backward through logits and aux logits in float64; then the eval-mode forward."""
    torch = require_torch()
    from benchmarks.torch_nets import build
    torch.manual_seed(0)
    twin = build(name, 3, width=1, **options).double()
    with torch.no_grad():
        for key, param in twin.named_parameters():
            if param.ndim == 1 and key.endswith("weight"):  # BN scales away from 1
                param.uniform_(0.5, 1.5)
    model = segnets.build_model(name, 3, width=1, **options).to(np.float64)
    segnets.load_torch_state_dict(model, {k: v.numpy() for k, v in twin.state_dict().items()})
    _zero_dropout(twin.modules())
    _zero_dropout(model.modules())
    x = np.random.default_rng(0).standard_normal((2, 3, 17, 23))
    x_t, x_m = torch.tensor(x, requires_grad=True), minigrad.Tensor(x, requires_grad=True)
    (out_t, aux_t), (out_m, aux_m) = twin.forward_with_aux(x_t), model.forward_with_aux(x_m)
    assert (aux_t is None) == (aux_m is None) == (not options.get("aux_loss", False))
    np.testing.assert_allclose(out_m.numpy(), out_t.detach().numpy(), rtol=1e-8, atol=1e-9)
    weights = np.random.default_rng(1).standard_normal(out_t.shape)
    loss_t, loss_m = (out_t * torch.tensor(weights)).sum(), (out_m * minigrad.Tensor(weights)).sum()
    if aux_t is not None:
        np.testing.assert_allclose(aux_m.numpy(), aux_t.detach().numpy(), rtol=1e-8, atol=1e-9)
        loss_t, loss_m = loss_t + 0.4 * (aux_t ** 2).sum(), loss_m + 0.4 * (aux_m ** 2).sum()
    loss_t.backward()
    loss_m.backward()
    np.testing.assert_allclose(x_m.grad.numpy(), x_t.grad.numpy(), rtol=1e-6, atol=1e-8)
    params_t = dict(twin.named_parameters())
    scale = max(np.abs(p.grad.numpy()).max() for p in params_t.values())  # BN-cancelled grads are tiny
    for key, param in model.named_parameters():
        np.testing.assert_allclose(param.grad.numpy(), params_t[key].grad.numpy(), rtol=1e-6, atol=1e-8 * scale,
                                   err_msg=key)  # 100+ train-mode BNs over 2 x 1 channel maps: ill-conditioned
    for key, buffer in model.named_buffers():
        np.testing.assert_allclose(buffer.numpy(), twin.get_buffer(key).numpy(), rtol=1e-9, err_msg=key)
    twin.eval()
    model.eval()
    with torch.no_grad(), minigrad.no_grad():
        np.testing.assert_allclose(model(x_m).numpy(), twin(x_t).numpy(), rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------- the training loss uses the aux head
def test_training_loss_adds_the_weighted_aux_loss_in_training_mode_only():
    from segnets.train import compute_loss
    model = segnets.build_model("deeplabv3_resnet101", 3, width=1, aux_loss=True).to(np.float64)
    _zero_dropout(model.modules())
    rng = np.random.default_rng(5)
    images = minigrad.Tensor(rng.standard_normal((2, 3, 17, 17)))
    masks = minigrad.Tensor(rng.integers(0, 3, size=(2, 17, 17)))
    model.eval()  # running statistics: the same function on every call
    with minigrad.no_grad():
        logits, aux = model.forward_with_aux(images)
        main, extra = F.cross_entropy(logits, masks).item(), F.cross_entropy(aux, masks).item()
        assert compute_loss(model, images, masks, None).item() == pytest.approx(main, rel=1e-12)
        model.training = True  # only the flag compute_loss reads; the BNs stay in eval mode
        assert compute_loss(model, images, masks, None).item() == pytest.approx(main + 0.5 * extra, rel=1e-12)
    assert extra > 0


# ---------------------------------------------------------------- ONNX: the heads on their own
# (tests/test_onnx.py exports pspnet50 whole; the ResNet-101 trunk is the same blocks, deeper)
class _Head(nn.Module):
    """A net's head on given (layer1, layer4) maps: the logits at 4x layer1's size."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, low, high):
        size = (low.shape[2] * 4, low.shape[3] * 4)
        return self.net._logits([low, None, None, high], size)


@pytest.mark.parametrize("name, options", [("deeplabv2_resnet101", {}), ("deeplabv3_resnet101", {}),
                                           ("deeplabv3plus_resnet101", {"separable": True})])
def test_heads_export_to_onnx(name, options):
    pytest.importorskip("onnx", reason="needs onnx (pip install onnx)")
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install onnxruntime)")
    import minigrad.onnx as mx
    net = segnets.build_model(name, 3, width=2, **options).eval()
    rng = np.random.default_rng(0)
    for key, buffer in net.named_buffers():
        if key.endswith("running_var"):
            buffer.data[...] = rng.uniform(0.5, 1.5, buffer.shape)
    head = _Head(net).eval()
    low = rng.standard_normal((2, 8, 9, 10)).astype(np.float32)
    high = rng.standard_normal((2, 64, 5, 5)).astype(np.float32)
    with minigrad.no_grad():
        ref = head(minigrad.Tensor(low), minigrad.Tensor(high)).numpy()
    proto = mx.export(head, (minigrad.Tensor(low), minigrad.Tensor(high)), None, opset_version=17,
                      input_names=("low", "high"), output_names=("logits",))
    got, = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"low": low, "high": high})
    assert got.shape == ref.shape == (2, 3, 36, 40)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_init_weights_file_with_torchvision_resnet_keys(tmp_path, capsys):
    """``--init-weights resnet101.npz`` (torchvision's keys, saved with np.savez) fills the backbone."""
    from segnets.run import load_initial_weights
    state = _torchvision_resnet_state(101, 1, np.random.default_rng(6))
    np.savez(tmp_path / "resnet101.npz", **state)
    model = segnets.build_model("deeplabv3plus_resnet101", 3, width=1)
    missing = load_initial_weights(model, str(tmp_path / "resnet101.npz"))
    assert missing and not [k for k in missing if k.startswith("backbone.")]
    np.testing.assert_array_equal(model.backbone.layer2[3].conv3.weight.numpy(), state["layer2.3.conv3.weight"])
    assert "; 2 in the file unused" in capsys.readouterr().out  # fc.weight, fc.bias


# ---------------------------------------------------------------- tools/trimap_miou.py (v3+'s boundary metric)
def test_trimap_band_by_hand(capsys):
    from tools.trimap_miou import BandedLoader, boundary_band, main
    mask = np.zeros((6, 6), np.int64)
    mask[2:4, 2:4] = 1  # a 2x2 square: band 1 = every pixel whose 3x3 neighbourhood touches the other label
    expected = np.zeros((6, 6), bool)
    expected[1:5, 1:5] = True
    np.testing.assert_array_equal(boundary_band(mask, 1), expected)
    assert boundary_band(mask, 2).all() and not boundary_band(mask, 0).any()
    assert not boundary_band(np.ones((4, 4), np.int64), 3).any()  # no boundary, no band
    images, masks = next(iter(BandedLoader([("x", mask[None])], 1)))
    assert images == "x" and (masks[0][expected] == mask[expected]).all() and (masks[0][~expected] == 255).all()
    assert (mask[0] == 0).all()  # the loader's masks are copied, not edited
    assert main(["/nonexistent/checkpoint.npz"]) == 2
    assert "error:" in capsys.readouterr().err


class _FixedLogits:
    """A stand-in net for tools/trimap_miou.band_matrices: the same logits for every image."""

    def __init__(self, logits):
        self.logits = logits

    def eval(self):
        return self

    def __call__(self, x):
        return minigrad.Tensor(np.repeat(self.logits[None], x.shape[0], axis=0))


def test_trimap_with_the_crf_snaps_a_blurred_boundary(capsys):
    """Black left of column 12, white right of it, labels 0 / 1 as the colours; the net's
    boundary is at column 16, blurred. Without the CRF, columns 12-15 are wrong: in each band
    (1 px: columns 11-12, 2 px: 10-13, 4 px: 8-15) half the pixels, class 0's IoU 0.5 and
    class 1's 0, so mIoU 0.25. The CRF (DeepLab's defaults) snaps to the edge: 1.0 in every band;
    with 0 iterations it is the net's labelling again."""
    from tools.trimap_miou import band_matrices, main
    from segnets.evaluate import metrics_dict
    h, w = 10, 24
    image = np.zeros((1, 3, h, w), np.float32)
    image[..., 12:] = 1.0  # mean 0, std 1: colours 0 and 255
    mask = np.zeros((1, h, w), np.int64)
    mask[..., 12:] = 1
    logits = np.zeros((2, h, w), np.float32)
    logits[1] = (np.arange(w) - 15.5) / 2.0
    loader = [(image, mask)] * 2
    net = _FixedLogits(logits)
    plain = band_matrices(net, loader, 2, [1, 2, 4])
    crf = band_matrices(net, loader, 2, [1, 2, 4], crf=([0, 0, 0], [1, 1, 1], {}))
    none = band_matrices(net, loader, 2, [1, 2, 4], crf=([0, 0, 0], [1, 1, 1], {"iterations": 0}))
    assert metrics_dict(plain[0][0])["pixel_acc"] == pytest.approx(20 / 24)
    for band in (1, 2, 4):
        before, after = (metrics_dict(m) for m in crf[band])
        assert before == metrics_dict(plain[band][0]) == metrics_dict(none[band][1])
        assert before["pixel_acc"] == pytest.approx(0.5) and before["miou"] == pytest.approx(0.25)
        assert after["pixel_acc"] == 1.0 and after["miou"] == 1.0
        assert int(crf[band][1].matrix.sum()) == 2 * h * 2 * band  # only the band's pixels counted
    for bad in (["--crf-opt", "nope=1"], ["--crf-opt", "iterations=-1"], ["--crf-opt", "w1"]):
        assert main(["/nonexistent/checkpoint.npz", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --crf-opt") and err.count("\n") == 1
