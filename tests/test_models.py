"""segnets.models: parameter counts of the papers' nets, output sizes, FCN's crops,
DeconvNet's switches, gradients to every parameter, weight import and PyTorch parity."""
import re

import numpy as np
import pytest

import minigrad
import segnets
from minigrad import functional as F
from minigrad import nn
from segnets.models.common import nearest_valid
from tests.helpers import require_torch, torchvision_vgg16_state

FCNS = ["fcn32s", "fcn16s", "fcn8s"]


def tensor(rng, shape, dtype=np.float64, requires_grad=False):
    return minigrad.Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=requires_grad)


def tiny(name, num_classes=3, width=2, **options):
    """A small float64 net; FCN's zero-initialised score layers get random weights so every path is live."""
    model = segnets.build_model(name, num_classes, width=width, **options).to(np.float64)
    rng = np.random.default_rng(1)
    for key, param in model.named_parameters():
        if key.startswith("score_"):
            param.data[...] = rng.standard_normal(param.shape) * 0.5
    return model


# ---------------------------------------------------------------- registry and config
def test_models_list_and_unknown_names():
    assert segnets.MODELS[:5] == ["fcn32s", "fcn16s", "fcn8s", "deconvnet", "unet"]  # then the later papers' nets
    with pytest.raises(ValueError, match="unknown model 'fcn4s'.*fcn32s, fcn16s"):
        segnets.build_model("fcn4s", 21)
    with pytest.raises(TypeError, match="unet has no option 'pad100'; its options are padding, batch_norm, upsampling"):
        segnets.build_model("unet", 2, pad100=False)
    assert segnets.options_of("fcn8s") == ["pad100", "fc_kernel", "learn_upsampling", "upsampling"]
    assert segnets.options_of("deconvnet") == ["fc_kernel"]


@pytest.mark.parametrize("name, options", [
    ("fcn8s", {"pad100": False, "fc_kernel": 3, "learn_upsampling": True, "upsampling": "bilinear"}),
    ("deconvnet", {"fc_kernel": 2}),
    ("unet", {"padding": "same", "batch_norm": True, "upsampling": "nearest"}),
])
def test_config_rebuilds_the_same_net(name, options):
    model = segnets.build_model(name, 5, in_channels=2, width=3, **options)
    assert isinstance(model, nn.Module)
    assert model.config == {"name": name, "num_classes": 5, "in_channels": 2, "width": 3, **options}
    again = segnets.build_model(**model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_config_lists_default_options():
    assert segnets.build_model("fcn32s", 21, width=1).config == {
        "name": "fcn32s", "num_classes": 21, "in_channels": 3, "width": 1,
        "pad100": True, "fc_kernel": 7, "learn_upsampling": False, "upsampling": "transposed"}
    assert segnets.build_model("unet", 2, width=1).config["padding"] == "valid"


@pytest.mark.parametrize("name, options, message", [
    ("fcn8s", {"fc_kernel": 3}, "fc_kernel=3 needs pad100=False"),
    ("fcn8s", {"pad100": False, "fc_kernel": 2}, "odd fc_kernel"),
    ("fcn16s", {"pad100": "no"}, "pad100 must be True or False"),
    ("deconvnet", {"fc_kernel": 0}, "fc_kernel must be an int >= 1"),
    ("unet", {"padding": "full"}, "padding must be 'valid' or 'same'"),
])
def test_bad_options_are_named(name, options, message):
    with pytest.raises(ValueError, match=message):
        segnets.build_model(name, 3, width=1, **options)


def test_bad_sizes_and_channels_are_named():
    with pytest.raises(ValueError, match="width must be an int >= 1, got 0"):
        segnets.build_model("unet", 2, width=0)
    model = segnets.build_model("fcn32s", 3, width=1)
    with pytest.raises(ValueError, match=r"fcn32s: input must have shape \(N, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(minigrad.Tensor(np.zeros((1, 1, 32, 32), np.float32)))


# ---------------------------------------------------------------- the papers' parameter counts
def _bn_parameters(model):
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())


@pytest.mark.parametrize("name, kwargs, total, trainable, batch_norm", [
    ("fcn32s", {"num_classes": 21}, 136_152_917, 134_346_581, 0),
    ("fcn16s", {"num_classes": 21}, 134_815_994, 134_357_354, 0),
    ("fcn8s", {"num_classes": 21}, 134_489_759, 134_362_751, 0),
    ("deconvnet", {"num_classes": 21}, 251_805_653, 251_805_653, 251_805_653 - 251_772_245),
    ("unet", {"num_classes": 2, "in_channels": 1}, 31_030_658, 31_030_658, 0),
])
def test_full_size_parameter_counts(name, kwargs, total, trainable, batch_norm, monkeypatch):
    # Drawing ~700M random weights would dominate this file's run time and says nothing about
    # the architecture: the weights stay uninitialised here (np.empty), everything else is built.
    monkeypatch.setattr(nn.init, "uniform_", lambda tensor, *args, **kwargs: tensor)
    monkeypatch.setattr(nn.init, "normal_", lambda tensor, *args, **kwargs: tensor)
    model = segnets.build_model(name, **kwargs)  # ~1 GB for DeconvNet: built once, no forward
    assert model.num_parameters() == total
    assert model.num_parameters(only_trainable=True) == trainable
    assert _bn_parameters(model) == batch_norm
    if name == "unet":
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert len(convs) == 23
    del model


def test_width_scales_every_stage_and_fc_layers():
    model = segnets.build_model("deconvnet", 21, width=2)
    assert model.conv1_1.weight.shape == (2, 3, 3, 3)
    assert model.conv5_3.weight.shape == (16, 16, 3, 3)
    assert model.fc6.weight.shape == (128, 16, 7, 7)
    assert model.fc6_deconv.weight.shape == (128, 16, 7, 7)
    unet = segnets.build_model("unet", 2, width=3)
    assert unet.enc5.conv2.weight.shape == (48, 48, 3, 3)


# ---------------------------------------------------------------- output sizes
@pytest.mark.parametrize("name", FCNS)
@pytest.mark.parametrize("pad100", [True, False])
def test_fcn_output_size_equals_input_size(name, pad100):
    model = segnets.build_model(name, 3, width=1, pad100=pad100).eval()
    rng = np.random.default_rng(0)
    with minigrad.no_grad():
        for size in [(32, 32), (33, 47), (65, 40), (97, 128)]:
            out = model(tensor(rng, (1, 3) + size, np.float32))
            assert out.shape == (1, 3) + size, (size, out.shape)


def test_fcn_small_fc_kernel_and_small_inputs():
    """Below 32: pad100 takes any size; without it every pool needs 2 rows, so 17 (pool5 sees 2)."""
    model = segnets.build_model("fcn8s", 2, width=1, pad100=False, fc_kernel=1).eval()
    reference = segnets.build_model("fcn8s", 2, width=1).eval()
    with minigrad.no_grad():
        for size in [(17, 31), (64, 64)]:
            assert model(minigrad.Tensor(np.ones((2, 3) + size, np.float32))).shape == (2, 2) + size
        assert reference(minigrad.Tensor(np.ones((1, 3, 1, 5), np.float32))).shape == (1, 2, 1, 5)


@pytest.mark.parametrize("fc_kernel, size", [(7, (224, 224)), (2, (64, 96)), (1, (32, 64))])
def test_deconvnet_output_size(fc_kernel, size):
    model = segnets.build_model("deconvnet", 4, width=1, fc_kernel=fc_kernel).eval()
    with minigrad.no_grad():
        out = model(minigrad.Tensor(np.ones((1, 3) + size, np.float32)))
    assert out.shape == (1, 4) + size


@pytest.mark.parametrize("options, size, out_size", [
    ({}, (572, 572), (388, 388)),
    ({}, (188, 204), (4, 20)),
    ({"padding": "same"}, (48, 80), (48, 80)),
    ({"padding": "same", "batch_norm": True}, (16, 32), (16, 32)),
])
def test_unet_output_size(options, size, out_size):
    model = segnets.build_model("unet", 2, in_channels=1, width=1, **options).eval()
    with minigrad.no_grad():
        out = model(minigrad.Tensor(np.ones((1, 1) + size, np.float32)))
    assert out.shape == (1, 2) + out_size


@pytest.mark.parametrize("name, options, size, message", [
    ("deconvnet", {}, (200, 224), r"height 200: nearest valid 224"),
    ("deconvnet", {"fc_kernel": 1}, (64, 100), r"width 100: nearest valid 96 or 128"),
    ("unet", {}, (572, 570), r"width 570: nearest valid 556 or 572"),
    ("unet", {}, (100, 188), r"height 100: nearest valid 188"),
    ("unet", {"padding": "same"}, (50, 64), r"height 50: nearest valid 48 or 64"),
    ("fcn8s", {"pad100": False}, (16, 40), r"height 16: nearest valid 17"),
])
def test_invalid_sizes_name_the_nearest_valid_ones(name, options, size, message):
    model = segnets.build_model(name, 2, width=1, **options)
    with pytest.raises(ValueError, match=message):
        model(minigrad.Tensor(np.zeros((1, 3) + size, np.float32)))


@pytest.mark.parametrize("name, options, rule", [
    ("fcn16s", {}, (1, 1, 0)),
    ("fcn16s", {"pad100": False}, (17, 1, 0)),
    ("deconvnet", {"fc_kernel": 3}, (96, 32, 0)),
    ("unet", {}, (188, 16, 92)),
    ("unet", {"padding": "same"}, (16, 16, 0)),
])
def test_size_rule(name, options, rule):
    size_rule = segnets.build_model(name, 2, width=1, **options).size_rule()
    assert tuple(size_rule[:3]) == rule
    assert size_rule.accepts(rule[0] + 5 * rule[1]) and not size_rule.accepts(rule[0] - 1)


def test_nearest_valid():
    assert nearest_valid(100, 32, 32) == [96, 128]
    assert nearest_valid(10, 188, 16) == [188]
    assert nearest_valid(573, 188, 16) == [572, 588]


# ---------------------------------------------------------------- FCN crop arithmetic
def _coord_map_offsets(pad100):
    """The crop offsets, derived here independently by composing Caffe-style coordinate maps:
    a layer with kernel k, stride s, padding p puts output pixel x over input pixel s*x + (k-1)/2 - p."""
    shift = -99 if pad100 else 0  # conv1_1 (k=3, padding 100 or 1); the other 3x3 convs (padding 1) keep coordinates

    def pool(stride):  # pixel x after the pools of this total stride (each k=2, s=2: 2x + 0.5)
        return lambda x: stride * x + (stride - 1) / 2 + shift

    def up(f, below):  # output pixel u of a k=2f, s=f transposed conv (padding f/2 without pad100) over `below`
        p = 0 if pad100 else f // 2
        return lambda u: below((u + p - (2 * f - 1) / 2) / f)

    fc6 = (lambda g: pool(32)(g + 3)) if pad100 else pool(32)  # 7x7, padding 0 (pad100) or 3
    up2 = up(2, fc6)
    up4 = up(2, up2)

    def skip(coarse, stride):  # c such that coarse pixel i sits over skip pixel i + c
        return (coarse(0) - pool(stride)(0)) / stride

    def final(coarse, f):  # c such that upsampled pixel i + c sits over input pixel i
        return -up(f, coarse)(0)
    return {"fcn32s": (final(fc6, 32),),
            "fcn16s": (skip(up2, 16), final(up2, 16)),
            "fcn8s": (skip(up2, 16), skip(up4, 8), final(up4, 8))}


@pytest.mark.parametrize("pad100", [True, False])
def test_fcn_crop_offsets_follow_the_coordinate_maps(pad100):
    expected = _coord_map_offsets(pad100)
    if pad100:  # the reference prototxts' Crop offsets
        assert expected == {"fcn32s": (19,), "fcn16s": (5, 27), "fcn8s": (5, 9, 31)}
    else:
        assert all(v == 0 for offsets in expected.values() for v in offsets)
    for name in FCNS:
        assert segnets.build_model(name, 2, width=1, pad100=pad100).offsets() == expected[name]


def _impulse_net(name, pad100, fc_kernel, live):
    """Width 1, every conv a centre tap (the trunk carries an impulse unchanged), one score path live."""
    model = segnets.build_model(name, 1, in_channels=1, width=1, pad100=pad100, fc_kernel=fc_kernel)
    model.to(np.float64).eval()
    for key, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data[...] = 0
            module.bias.data[...] = 0
            kh, kw = module.kernel_size
            if not key.startswith("score") or key == live:
                module.weight.data[0, 0, kh // 2, kw // 2] = 1
    return model


@pytest.mark.parametrize("name, live, stride", [
    ("fcn32s", "score_fr", 32), ("fcn16s", "score_fr", 32), ("fcn16s", "score_pool4", 16),
    ("fcn8s", "score_fr", 32), ("fcn8s", "score_pool4", 16), ("fcn8s", "score_pool3", 8)])
@pytest.mark.parametrize("pad100, fc_kernel", [(True, 7), (False, 7), (False, 1)])
def test_fcn_output_is_centred_over_the_input(name, live, stride, pad100, fc_kernel):
    """An impulse at (py, px) reaches the live score layer in the cell of stride ``stride`` that holds it;
    bilinear upsampling spreads it symmetrically, so the output's centroid must be that cell's centre.
    A wrong crop offset moves the centroid by exactly that error."""
    model = _impulse_net(name, pad100, fc_kernel, live)
    py, px, size = 100, 150, (224, 240)
    x = np.zeros((1, 1) + size)
    x[0, 0, py, px] = 1.0
    with minigrad.no_grad():
        out = model(minigrad.Tensor(x)).numpy()[0, 0]
    shift = 99 if pad100 else 0  # conv1_1's centre tap moves pixel p to p + 99 with pad100

    def cell_centre(p):
        return stride * ((p + shift) // stride) + (stride - 1) / 2 - shift
    assert out.min() >= 0 and out.sum() > 0
    rows, cols = out.sum(axis=1), out.sum(axis=0)
    assert np.dot(np.arange(size[0]), rows) / rows.sum() == pytest.approx(cell_centre(py), abs=1e-9)
    assert np.dot(np.arange(size[1]), cols) / cols.sum() == pytest.approx(cell_centre(px), abs=1e-9)


def test_fcn_upsampling_is_fixed_bilinear_unless_learned():
    model = segnets.build_model("fcn8s", 4, width=1)
    kernel = nn.init.bilinear_kernel(4, 4, 16)
    np.testing.assert_array_equal(model.upscore8.weight.numpy(), kernel)
    assert model.upscore8.bias is None
    assert kernel[0, 0, 7, 7] == pytest.approx((1 - 0.5 / 8) ** 2) and kernel[0, 1].max() == 0
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"upscore2.weight", "upscore_pool4.weight", "upscore8.weight"}
    assert model.score_pool3.weight.numpy().max() == 0 == model.score_fr.bias.numpy().max()
    learned = segnets.build_model("fcn8s", 4, width=1, learn_upsampling=True)
    assert all(p.requires_grad for p in learned.parameters())


# ---------------------------------------------------------------- DeconvNet's switches
def _record(module, log, key):
    forward = type(module).forward.__get__(module)

    def recording(*args, **kwargs):
        out = forward(*args, **kwargs)
        log[key] = (args, kwargs, out)
        return out
    module.forward = recording


def test_deconvnet_unpools_with_the_matching_pools_switches_and_size():
    model = segnets.build_model("deconvnet", 2, width=1, fc_kernel=1)
    pools, unpools = {}, {}
    for stage in range(1, 6):
        _record(getattr(model, f"pool{stage}"), pools, stage)
        _record(getattr(model, f"unpool{stage}"), unpools, stage)
    model(minigrad.Tensor(np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)))
    for stage in range(1, 6):
        (pooled_input,), _, (_, switches) = pools[stage]
        (_, indices), kwargs, out = unpools[stage]
        assert indices is switches, f"unpool{stage} did not get pool{stage}'s switches"
        assert tuple(kwargs["output_size"]) == pooled_input.shape[-2:] == out.shape[-2:]


def test_deconvnet_unpooling_puts_values_at_the_switches():
    """With a decoder that passes values through, the map after unpool1 is nonzero only at pool1's switches."""
    model = segnets.build_model("deconvnet", 2, width=1, fc_kernel=1)
    log = {}
    _record(model.pool1, log, "pool")
    _record(model.unpool1, log, "unpool")
    model(minigrad.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)))
    (_, _, (_, switches)), (_, _, unpooled) = log["pool"], log["unpool"]
    planes = unpooled.numpy().reshape(2, 1, -1)
    mask = np.zeros_like(planes, dtype=bool)
    np.put_along_axis(mask, switches.numpy().reshape(2, 1, -1), True, axis=2)
    assert not planes[~mask].any()
    assert planes[mask].any()


# ---------------------------------------------------------------- gradients reach every parameter
@pytest.mark.parametrize("name, options, size", [
    ("fcn32s", {"learn_upsampling": True, "pad100": False}, (40, 36)),
    ("fcn16s", {"pad100": False}, (40, 36)),
    ("fcn8s", {}, (33, 40)),
    ("deconvnet", {"fc_kernel": 1}, (64, 64)),
    ("unet", {}, (188, 188)),
    ("unet", {"padding": "same", "batch_norm": True}, (32, 48)),
])
def test_gradients_reach_every_parameter(name, options, size):
    """Every trainable parameter gets a gradient well above round-off, except the bias of a conv
    that feeds a training-mode batch norm: BN subtracts the batch mean, so that bias's true
    gradient is exactly zero and ours must be zero to round-off (float64, seeded init)."""
    state = minigrad.random.get_rng_state()
    minigrad.random.manual_seed(0)  # unseeded, about 1 in 40 width-2 U-Nets start with dead ReLUs
    try:
        model = tiny(name, width=2, **options).train()
    finally:
        minigrad.random.set_rng_state(state)
    feeds_bn = _convs_feeding_batch_norm(model)
    rng = np.random.default_rng(2)
    x = tensor(rng, (2, 3) + size)
    logits = model(x)
    target = minigrad.Tensor(rng.integers(0, 3, size=(logits.shape[0],) + logits.shape[2:]))
    F.cross_entropy(logits, target).backward()
    assert bool(feeds_bn) == any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), feeds_bn
    for key, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None and "upscore" in key, key
            continue
        largest = np.abs(param.grad.numpy()).max()
        if key.endswith(".bias") and key[:-len(".bias")] in feeds_bn:
            assert largest <= 1e-12, key
        else:
            assert largest > 1e-8, key


def _convs_feeding_batch_norm(model):
    """Names of the (transposed) convs whose output goes straight into a batch norm, found by
    recording the next forward pass; the returned set fills in during that pass."""
    made, feeds = {}, set()
    for key, module in model.named_modules():
        forward = type(module).forward.__get__(module)
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            def conv_forward(*args, _forward=forward, _key=key, **kwargs):
                out = _forward(*args, **kwargs)
                made[id(out)] = (_key, out)  # the output is kept alive, so its id stays unique
                return out
            module.forward = conv_forward
        elif isinstance(module, nn.BatchNorm2d):
            def bn_forward(x, _forward=forward):
                if id(x) in made and made[id(x)][1] is x:
                    feeds.add(made[id(x)][0])
                return _forward(x)
            module.forward = bn_forward
    return feeds


# ---------------------------------------------------------------- weight import
def test_load_own_state_dict_and_errors():
    source = tiny("fcn16s", width=1)
    target = segnets.build_model("fcn16s", 3, width=1)
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    segnets.load_torch_state_dict(target, state)
    np.testing.assert_array_equal(target.score_pool4.weight.numpy(), state["score_pool4.weight"].astype(np.float32))
    with pytest.raises(RuntimeError, match="size mismatch for fc7.weight"):
        segnets.load_torch_state_dict(target, {**state, "fc7.weight": np.zeros((2, 2, 1, 1))})
    with pytest.raises(RuntimeError, match='Missing key.*"upscore16.weight"'):
        segnets.load_torch_state_dict(target, {k: v for k, v in state.items() if k != "upscore16.weight"})


def test_torchvision_vgg16_keys_load_into_the_fcn_trunk():
    rng = np.random.default_rng(3)
    state = torchvision_vgg16_state(rng, 1, batch_norm=False)
    model = segnets.build_model("fcn8s", 3, width=1)
    missing, unexpected = segnets.load_torch_state_dict(model, state, strict=False)
    np.testing.assert_array_equal(model.conv1_1.weight.numpy(), state["features.0.weight"])
    np.testing.assert_array_equal(model.conv3_3.bias.numpy(), state["features.14.bias"])
    np.testing.assert_array_equal(model.conv5_3.weight.numpy(), state["features.28.weight"])
    np.testing.assert_array_equal(model.fc6.weight.numpy(), state["classifier.0.weight"].reshape(64, 8, 7, 7))
    np.testing.assert_array_equal(model.fc7.weight.numpy()[:, :, 0, 0], state["classifier.3.weight"])
    assert unexpected == ["classifier.6.weight", "classifier.6.bias"]
    assert sorted(missing) == sorted(k for k in model.state_dict() if k.startswith(("score", "upscore")))
    with pytest.raises(RuntimeError, match="Missing key"):
        segnets.load_torch_state_dict(model, state)


def test_torchvision_vgg16_bn_keys_load_into_deconvnet():
    rng = np.random.default_rng(4)
    state = torchvision_vgg16_state(rng, 1, batch_norm=True)
    model = segnets.build_model("deconvnet", 3, width=1)
    missing, _ = segnets.load_torch_state_dict(model, state, strict=False)
    np.testing.assert_array_equal(model.conv4_1.weight.numpy(), state["features.24.weight"])
    np.testing.assert_array_equal(model.bn4_1.running_var.numpy(), state["features.25.running_var"])
    np.testing.assert_array_equal(model.bn5_3.weight.numpy(), state["features.41.weight"])
    assert model.bn5_3.num_batches_tracked.item() == 7
    assert not [k for k in missing if re.match(r"(conv|bn)\d_\d\.|fc[67]\.", k)]
    assert {"bnfc6.weight", "fc6_deconv.weight", "seg_score.weight"} <= set(missing)


def test_vgg16_bn_folds_into_fcn_without_changing_the_function():
    """FCN has no BN: each vgg16_bn BN is folded into its conv; the eval-mode trunk computes the same pool5."""
    rng = np.random.default_rng(5)
    state = torchvision_vgg16_state(rng, 1, batch_norm=True)
    folded = segnets.build_model("fcn32s", 3, width=1, pad100=False).to(np.float64).eval()
    segnets.load_torch_state_dict(folded, state, strict=False)
    with_bn = segnets.build_model("deconvnet", 3, width=1, fc_kernel=2).to(np.float64).eval()
    _, unexpected = segnets.load_torch_state_dict(with_bn, state, strict=False)
    assert unexpected == [f"classifier.{i}.{p}" for i in (0, 6) for p in ("weight", "bias")]  # fc6 is 2x2 here
    x = tensor(rng, (1, 3, 64, 64))
    outputs = {}
    _record(folded.pool5, outputs, "folded")
    _record(with_bn.pool5, outputs, "bn")
    with minigrad.no_grad():
        folded(x)
        with_bn(x)
    np.testing.assert_allclose(outputs["folded"][2].numpy(), outputs["bn"][2][0].numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- summary
def test_summary_lists_layers_shapes_and_totals():
    model = segnets.build_model("fcn16s", 3, width=1, pad100=False)
    lines = []
    text = model.summary((64, 96), print_fn=lines.append)
    assert lines == [text]
    assert "conv1_1              Conv2d           (1, 1, 64, 96)" in text
    assert "score_pool4          Conv2d           (1, 3, 4, 6)" in text
    assert "upscore16            ConvTranspose2d  (1, 3, 64, 96)" in text
    assert "output (1, 3, 64, 96)" in text
    assert f"total parameters: {model.num_parameters():,} (trainable {model.num_parameters(True):,})" in text
    assert model.training and type(model.fc6).forward is model.fc6.forward.__func__
    unet = segnets.build_model("unet", 2, in_channels=1, width=1)
    assert "pool4                MaxPool2d        (1, 8, 32, 32)" in segnets.summary(unet, 572, print_fn=None)
    deconv = segnets.build_model("deconvnet", 2, width=1, fc_kernel=1)
    assert "pool5                MaxPool2d        (1, 8, 1, 1) + indices" in deconv.summary(32, print_fn=None)


# ---------------------------------------------------------------- parity with PyTorch
def _twin_and_model(torch, twin, name, **options):
    """The PyTorch twin (float64, random score layers) and our net loaded from its state dict."""
    torch.manual_seed(0)
    twin = twin.double()
    with torch.no_grad():
        for key, param in twin.named_parameters():
            if key.startswith("score_"):
                param.normal_(0, 0.5)
            if key.endswith("weight") and param.ndim == 1:  # BN scales away from 1
                param.uniform_(0.5, 1.5)
    model = segnets.build_model(name, **options).to(np.float64)
    segnets.load_torch_state_dict(model, {k: v.numpy() for k, v in twin.state_dict().items()})
    return twin, model


def _check_parity(torch, twin, model, x_np, train):
    twin.train(train)
    model.train(train)
    x_t = torch.tensor(x_np, requires_grad=True)
    x_m = minigrad.Tensor(x_np, requires_grad=True)
    out_t, out_m = twin(x_t), model(x_m)
    np.testing.assert_allclose(out_m.numpy(), out_t.detach().numpy(), rtol=1e-9, atol=1e-9)
    weights = np.random.default_rng(7).standard_normal(out_t.shape)
    (out_t * torch.tensor(weights)).sum().backward()
    (out_m * minigrad.Tensor(weights)).sum().backward()
    np.testing.assert_allclose(x_m.grad.numpy(), x_t.grad.numpy(), rtol=1e-8, atol=1e-9)
    params_t = dict(twin.named_parameters())
    for key, param in model.named_parameters():
        if params_t[key].grad is None:
            assert param.grad is None, key
            continue
        np.testing.assert_allclose(param.grad.numpy(), params_t[key].grad.numpy(), rtol=1e-7, atol=1e-9,
                                   err_msg=key)
    for key, buffer in model.named_buffers():
        np.testing.assert_allclose(buffer.numpy(), twin.get_buffer(key).numpy(), rtol=1e-9, err_msg=key)


@pytest.mark.torch
@pytest.mark.parametrize("name, pad100", [("fcn32s", False), ("fcn16s", False), ("fcn8s", False), ("fcn8s", True)])
def test_fcn_matches_pytorch(name, pad100):
    torch = require_torch()
    from benchmarks.torch_nets import FCN
    fc_kernel = 7 if pad100 else 3
    twin = FCN(name, 3, width=2, pad100=pad100, fc_kernel=fc_kernel)
    twin, model = _twin_and_model(torch, twin, name, num_classes=3, width=2, pad100=pad100, fc_kernel=fc_kernel)
    batch = 1 if pad100 else 2  # pad100 makes every map ~200 pixels bigger
    x = np.random.default_rng(0).standard_normal((batch, 3, 35, 50))
    _check_parity(torch, twin, model, x, train=False)


@pytest.mark.torch
def test_deconvnet_matches_pytorch():
    torch = require_torch()
    from benchmarks.torch_nets import DeconvNet
    twin, model = _twin_and_model(torch, DeconvNet(3, width=2, fc_kernel=2), "deconvnet",
                                  num_classes=3, width=2, fc_kernel=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96))
    _check_parity(torch, twin, model, x, train=True)  # batch statistics and running-stat updates


@pytest.mark.torch
@pytest.mark.parametrize("options, size", [({}, (188, 220)), ({"padding": "same", "batch_norm": True}, (32, 48))])
def test_unet_matches_pytorch(options, size):
    torch = require_torch()
    from benchmarks.torch_nets import UNet
    twin, model = _twin_and_model(torch, UNet(2, 1, width=2, **options), "unet",
                                  num_classes=2, in_channels=1, width=2, **options)
    x = np.random.default_rng(0).standard_normal((2, 1) + size)
    _check_parity(torch, twin, model, x, train=True)
