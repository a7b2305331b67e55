"""minigrad.nn: Module registration, state_dict, to(), the layers vs PyTorch, default init, nn.init."""
import math
from collections import OrderedDict

import numpy as np
import pytest

import minigrad
from minigrad import nn, optim
from minigrad.nn import init
from tests.helpers import require_torch, require_torch_batchnorm_bias


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.scale = nn.Parameter(np.ones(3, dtype=np.float32))
        self.register_buffer("counter", minigrad.Tensor(np.zeros(2, dtype=np.float32)))
        self.register_buffer("cache", minigrad.Tensor(np.zeros(1, dtype=np.float32)), persistent=False)
        self.plain = 5

    def forward(self, x):
        return self.bn(self.conv(x)) * self.scale.reshape(1, 3, 1, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(3, 1, 1, bias=False))

    def forward(self, x):
        return self.head(self.block(x))


def _t(array):
    return minigrad.Tensor(np.asarray(array))


# ---------------------------------------------------------------- registration and traversal
def test_registration_and_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "block.scale", "block.conv.weight", "block.conv.bias", "block.bn.weight", "block.bn.bias", "head.2.weight"]
    assert [n for n, _ in net.named_buffers()] == [
        "block.counter", "block.cache", "block.bn.running_mean", "block.bn.running_var",
        "block.bn.num_batches_tracked"]
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.conv", "block.bn", "head", "head.0",
                                                  "head.1", "head.2"]
    assert [n for n, _ in net.named_children()] == ["block", "head"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert net.block.plain == 5 and "plain" not in net.block._parameters
    assert net.num_parameters() == 3 + (3 * 2 * 9 + 3) + 3 + 3 + 3
    assert [n for n, _ in net.block.named_parameters(recurse=False)] == ["scale"]


def test_shared_parameters_and_modules_are_listed_once():
    conv = nn.Conv2d(1, 1, 1)
    seq = nn.Sequential(conv, nn.ReLU(), conv)
    assert len(list(seq.parameters())) == 2 and seq.num_parameters() == 2
    assert len(list(seq.modules())) == 3


def test_reassignment_and_type_errors():
    block = Block()
    block.scale = None  # a parameter slot accepts None
    assert "scale" in block._parameters and block.scale is None
    with pytest.raises(TypeError, match="parameter 'scale'"):
        block.scale = minigrad.Tensor(np.ones(3))
    with pytest.raises(TypeError, match="buffer 'counter'"):
        block.counter = np.zeros(2)
    block.counter = minigrad.Tensor(np.ones(2))
    assert block.counter.numpy().tolist() == [1.0, 1.0]
    block.conv = nn.Identity()  # replacing a submodule drops its parameters
    assert "conv.weight" not in dict(block.named_parameters())
    del block.bn
    assert "bn" not in block._modules
    with pytest.raises(AttributeError, match="'Block' object has no attribute 'bn'"):
        block.bn
    with pytest.raises(KeyError, match="already exists"):
        block.register_buffer("conv", minigrad.Tensor(np.ones(1)))


def test_assigning_before_init_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            self.weight = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Broken()


def test_missing_forward():
    with pytest.raises(NotImplementedError, match="missing the required \"forward\""):
        nn.Module()(1)


def test_train_eval_propagate():
    net = Net()
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.head.train(False)
    assert net.training and net.block.training and not net.head[1].training
    x = _t(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(net.head[1](x).numpy(), x.numpy())  # dropout is the identity in eval


def test_apply_zero_grad_and_requires_grad():
    net = Net()
    visited = []
    net.apply(lambda m: visited.append(type(m).__name__))
    assert visited == ["Conv2d", "BatchNorm2d", "Block", "ReLU", "Dropout", "Conv2d", "Sequential", "Net"]
    net(_t(np.ones((2, 2, 4, 4), np.float32))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_containers():
    layers = [nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and seq[-1] is layers[2] and list(seq) == layers
    assert isinstance(seq[1:], nn.Sequential) and list(seq[1:]) == layers[1:]
    with pytest.raises(IndexError, match="out of range"):
        seq[3]
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"] and named.act is named[1]
    x = _t(np.array([[1.0, -2.0]], np.float32))
    expected = layers[2](layers[1](layers[0](x)))
    np.testing.assert_array_equal(seq(x).numpy(), expected.numpy())

    blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    blocks.append(nn.Linear(2, 3))
    blocks += [nn.ReLU()]
    assert len(blocks) == 4 and isinstance(blocks[-1], nn.ReLU)
    assert [n for n, _ in blocks.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                        "2.weight", "2.bias"]
    blocks[0] = nn.Identity()
    assert len(list(blocks.parameters())) == 4


# ---------------------------------------------------------------- state_dict
def test_state_dict_keys_values_and_sharing():
    net = Net()
    state = net.state_dict()
    assert list(state) == ["block.scale", "block.counter", "block.conv.weight", "block.conv.bias",
                           "block.bn.weight", "block.bn.bias", "block.bn.running_mean", "block.bn.running_var",
                           "block.bn.num_batches_tracked", "head.2.weight"]  # 'cache' is not persistent
    assert not isinstance(state["block.conv.weight"], nn.Parameter)
    assert not state["block.conv.weight"].requires_grad
    assert state["block.conv.weight"].data is net.block.conv.weight.data  # shared, like PyTorch
    assert net.state_dict(keep_vars=True)["block.scale"] is net.block.scale


def test_load_state_dict_round_trip_casts_and_keeps_identity():
    minigrad.manual_seed(0)
    source = Net()
    minigrad.manual_seed(1)
    target = Net()
    weight, array = target.block.conv.weight, target.block.conv.weight.data
    # numpy float64 values and an int for the counter are cast to the targets' dtypes
    state = {k: v.numpy().astype(np.float64) if v.dtype.kind == "f" else int(v.item())
             for k, v in source.state_dict().items()}
    result = target.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert target.block.conv.weight is weight and weight.data is array and weight.dtype == np.float32
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    assert target.block.bn.num_batches_tracked.dtype == np.int64


def _snapshot(module):
    return {k: v.numpy() for k, v in module.state_dict().items()}


def test_strict_errors_list_everything_and_load_nothing():
    source, target = Net(), Net()
    before = _snapshot(target)
    state = source.state_dict()
    del state["block.bn.running_var"]
    state["block.extra"] = minigrad.Tensor(np.ones(1))
    state["head.2.weight"] = minigrad.Tensor(np.ones((2, 3, 1, 1)))
    with pytest.raises(RuntimeError) as info:
        target.load_state_dict(state)
    message = str(info.value)
    assert "Error(s) in loading state_dict for Net" in message
    assert 'Missing key(s) in state_dict: "block.bn.running_var"' in message
    assert 'Unexpected key(s) in state_dict: "block.extra"' in message
    assert ("size mismatch for head.2.weight: copying a param with shape (2, 3, 1, 1) from checkpoint, "
            "the shape in current model is (1, 3, 1, 1)") in message
    after = _snapshot(target)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_non_strict_reports_keys_but_still_checks_shapes():
    source, target = Net(), Net()
    state = source.state_dict()
    del state["block.scale"]
    state["unused"] = minigrad.Tensor(np.ones(1))
    result = target.load_state_dict(state, strict=False)
    assert result.missing_keys == ["block.scale"] and result.unexpected_keys == ["unused"]
    np.testing.assert_array_equal(target.block.conv.weight.numpy(), source.block.conv.weight.numpy())
    state["block.conv.bias"] = minigrad.Tensor(np.ones(4))
    with pytest.raises(RuntimeError, match="size mismatch for block.conv.bias"):
        target.load_state_dict(state, strict=False)


# ---------------------------------------------------------------- to()
def test_to_dtype_keeps_identity_and_optimizer_still_works():
    net = Net()
    params = list(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1)
    assert net.to(np.float64) is net
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float64 for p in params)
    assert net.block.bn.running_mean.dtype == np.float64
    assert net.block.bn.num_batches_tracked.dtype == np.int64  # integer buffers keep their dtype
    before = net.block.scale.numpy()
    net(_t(np.ones((2, 2, 3, 3)))).sum().backward()
    opt.step()
    assert not np.array_equal(net.block.scale.numpy(), before)
    net.float()
    assert net.block.conv.weight.dtype == np.float32
    with pytest.raises(TypeError, match="floating point"):
        net.to(np.int32)


@pytest.mark.gpu
def test_to_gpu_keeps_identity():
    if not minigrad.gpu_available():
        pytest.skip("needs CuPy and a GPU")
    net = Net()
    weight = net.block.conv.weight
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(_t(np.ones((2, 2, 3, 3), np.float32))).sum().backward()
    opt.step()  # momentum buffers now live on the CPU
    net.to("gpu")
    assert net.block.conv.weight is weight and weight.device == "gpu"
    assert net.block.bn.running_mean.device == "gpu" and weight.grad.device == "gpu"
    opt.step()  # the state follows the parameters
    out = net(minigrad.Tensor(np.ones((2, 2, 3, 3), np.float32), device="gpu"))
    assert out.device == "gpu"
    state = net.state_dict()
    cpu_net = Net()
    cpu_net.load_state_dict(state)
    np.testing.assert_array_equal(cpu_net.block.conv.weight.numpy(), weight.numpy())


# ---------------------------------------------------------------- repr
@pytest.mark.torch
def test_repr_matches_torch():
    torch = require_torch()
    require_torch_batchnorm_bias(torch)

    def build(lib):
        return lib.Sequential(
            lib.Conv2d(3, 8, 3, padding=1), lib.BatchNorm2d(8, momentum=None), lib.BatchNorm2d(2, affine=False, bias=False), lib.ReLU(inplace=True),
            lib.MaxPool2d(2, 2, ceil_mode=True), lib.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False),
            lib.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2), lib.MaxUnpool2d(2),
            lib.AvgPool2d(3, stride=1, padding=1), lib.Upsample(scale_factor=2, mode="bilinear"),
            lib.Upsample(size=(4, 5)), lib.Dropout2d(0.1), lib.Dropout(), lib.LeakyReLU(0.2), lib.Identity(),
            lib.Linear(3, 4), lib.CrossEntropyLoss(ignore_index=255))
    assert repr(build(nn)) == repr(build(torch.nn))


# ---------------------------------------------------------------- layers vs PyTorch
def _twin(ours, theirs):
    """Copy our (default-initialised) weights into the torch layer: also checks the names match."""
    torch = require_torch()
    theirs.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in ours.state_dict().items()})
    return theirs


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _compare(ours, theirs, *shapes, atol=1e-5, grad=True):
    """Forward, and with ``grad`` the input and parameter gradients, of our layer vs torch's.

    The backward starts from a random upstream gradient, not ``out.sum()``: under a constant one
    the gradients of training-mode batch norm's weight and input are zero on both sides.
    """
    torch = require_torch()
    arrays = [_input(s, seed) for seed, s in enumerate(shapes)]
    inputs = [minigrad.Tensor(a, requires_grad=grad) for a in arrays]
    t_inputs = [torch.from_numpy(a).requires_grad_(grad) for a in arrays]
    out = ours(*inputs)
    expected = theirs(*t_inputs)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-5, atol=atol)
    if grad:
        upstream = _input(out.shape, seed=len(arrays))
        (out * minigrad.Tensor(upstream)).sum().backward()
        (expected * torch.from_numpy(upstream)).sum().backward()
        for i, (x, t_x) in enumerate(zip(inputs, t_inputs)):
            np.testing.assert_allclose(x.grad.numpy(), t_x.grad.numpy(), rtol=1e-4, atol=atol,
                                       err_msg=f"input {i}")
        theirs_params = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            np.testing.assert_allclose(p.grad.numpy(), theirs_params[name].grad.numpy(), rtol=1e-4, atol=atol,
                                       err_msg=name)


CONVS = [
    (dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 7, 6)),
    (dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(1, 2),
          groups=2), (2, 4, 9, 8)),
    (dict(in_channels=2, out_channels=3, kernel_size=4, padding="same", dilation=1, bias=False), (1, 2, 6, 5)),
    (dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", dilation=2), (1, 2, 6, 5)),
    (dict(in_channels=2, out_channels=3, kernel_size=2, padding="valid"), (1, 2, 5, 5)),
]


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kwargs, shape", CONVS)
def test_conv2d_matches_torch(kwargs, shape):
    torch = require_torch()
    ours = nn.Conv2d(**kwargs)
    _compare(ours, _twin(ours, torch.nn.Conv2d(**kwargs)), shape)


TRANSPOSED = [
    (dict(in_channels=3, out_channels=2, kernel_size=4, stride=2, padding=1), (2, 3, 4, 5)),
    (dict(in_channels=4, out_channels=6, kernel_size=3, stride=3, padding=1, output_padding=2, groups=2,
          dilation=1, bias=False), (1, 4, 3, 3)),
    (dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, dilation=2), (1, 2, 3, 4)),
]


@pytest.mark.torch
@pytest.mark.parametrize("kwargs, shape", TRANSPOSED)
def test_conv_transpose2d_matches_torch(kwargs, shape):
    torch = require_torch()
    ours = nn.ConvTranspose2d(**kwargs)
    _compare(ours, _twin(ours, torch.nn.ConvTranspose2d(**kwargs)), shape)


@pytest.mark.torch
def test_conv_transpose2d_output_size_matches_torch():
    torch = require_torch()
    ours = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    theirs = _twin(ours, torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1))
    x = _input((1, 2, 4, 5))
    for size in [(7, 9), (8, 10), (1, 3, 8, 9)]:
        out = ours(minigrad.Tensor(x), output_size=size)
        expected = theirs(torch.from_numpy(x), output_size=size)
        np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="range from 7 to 8"):
        ours(minigrad.Tensor(x), output_size=(9, 9))


def test_conv_argument_errors():
    with pytest.raises(ValueError, match="in_channels \\(3\\) must be divisible by groups \\(2\\)"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="out_channels"):
        nn.ConvTranspose2d(4, 3, 3, groups=2)
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Invalid padding string"):
        nn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match="output_padding"):
        nn.ConvTranspose2d(3, 4, 3, stride=2, output_padding=2)


POOLS = [
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("MaxPool2d", dict(kernel_size=2, dilation=2)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)),
    ("AvgPool2d", dict(kernel_size=2)),
    ("Upsample", dict(scale_factor=2, mode="nearest")),
    ("Upsample", dict(size=(7, 5), mode="bilinear", align_corners=True)),
    ("Upsample", dict(scale_factor=1.5, mode="bilinear", align_corners=False)),
    ("ReLU", dict()),
    ("LeakyReLU", dict(negative_slope=0.2)),
    ("Identity", dict()),
]


@pytest.mark.torch
@pytest.mark.parametrize("name, kwargs", POOLS)
def test_parameterless_layers_match_torch(name, kwargs):
    torch = require_torch()
    _compare(getattr(nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs), (2, 3, 7, 6))


@pytest.mark.torch
def test_max_pool_indices_and_unpool_match_torch():
    torch = require_torch()
    x = _input((2, 3, 7, 6))
    out, indices = nn.MaxPool2d(2, return_indices=True)(minigrad.Tensor(x))
    t_out, t_indices = torch.nn.MaxPool2d(2, return_indices=True)(torch.from_numpy(x))
    np.testing.assert_array_equal(indices.numpy(), t_indices.numpy())
    assert indices.dtype == np.int64
    unpooled = nn.MaxUnpool2d(2)(out, indices, output_size=x.shape[-2:])
    t_unpooled = torch.nn.MaxUnpool2d(2)(t_out, t_indices, output_size=x.shape[-2:])
    assert unpooled.shape == (2, 3, 7, 6)
    np.testing.assert_array_equal(unpooled.numpy(), t_unpooled.numpy())


@pytest.mark.torch
def test_linear_matches_torch():
    torch = require_torch()
    ours = nn.Linear(5, 3)
    _compare(ours, _twin(ours, torch.nn.Linear(5, 3)), (4, 2, 5))
    with pytest.raises(ValueError, match="in_features=5"):
        ours(minigrad.Tensor(np.ones((2, 4), np.float32)))


@pytest.mark.torch
@pytest.mark.parametrize("momentum, affine, bias", [(0.1, True, True), (None, True, True), (0.3, False, True),
                                                    (0.1, True, False)])
def test_batchnorm2d_running_stats_match_torch(momentum, affine, bias):
    torch = require_torch()
    require_torch_batchnorm_bias(torch)
    ours = nn.BatchNorm2d(3, momentum=momentum, affine=affine, bias=bias)
    if affine:  # non-trivial affine parameters
        ours.weight.data[:] = [0.5, 1.5, -1.0]
    if ours.bias is not None:
        ours.bias.data[:] = [0.1, 0.0, -0.2]
    theirs = _twin(ours, torch.nn.BatchNorm2d(3, momentum=momentum, affine=affine, bias=bias))
    for seed in range(3):
        x = _input((4, 3, 5, 5), seed) * (seed + 1) + seed
        _compare(ours, theirs, (4, 3, 5, 5))
        ours(minigrad.Tensor(x))
        theirs(torch.from_numpy(x))
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name].numpy(), value.numpy(), rtol=1e-5, err_msg=name)
    assert ours.num_batches_tracked.item() == 6
    ours.eval()
    theirs.eval()
    _compare(ours, theirs, (2, 3, 4, 4))
    assert ours.num_batches_tracked.item() == 6  # eval does not count batches


def test_batchnorm2d_cumulative_average_by_hand():
    bn = nn.BatchNorm2d(1, momentum=None)
    for value in (2.0, 4.0, 9.0):
        bn(minigrad.Tensor(np.full((2, 1, 1, 1), value, np.float32)))
    np.testing.assert_allclose(bn.running_mean.numpy(), [5.0])  # the plain mean of 2, 4, 9
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(minigrad.Tensor(np.ones((2, 1), np.float32)))
    with pytest.raises(ValueError, match="num_features=1"):
        bn(minigrad.Tensor(np.ones((2, 3, 2, 2), np.float32)))


@pytest.mark.torch
def test_batchnorm2d_without_running_stats_matches_torch():
    torch = require_torch()
    ours = nn.BatchNorm2d(2, track_running_stats=False).eval()
    assert list(ours.state_dict()) == ["weight", "bias"]
    _compare(ours, _twin(ours, torch.nn.BatchNorm2d(2, track_running_stats=False).eval()), (3, 2, 4, 4))


@pytest.mark.torch
def test_cross_entropy_loss_matches_torch():
    torch = require_torch()
    rng = np.random.default_rng(0)
    scores = _input((2, 4, 3, 5))
    target = rng.integers(0, 4, size=(2, 3, 5))
    target[0, 0, :2] = 255
    weight = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    for kwargs in (dict(), dict(ignore_index=255, reduction="sum"), dict(ignore_index=255, label_smoothing=0.1)):
        ours = nn.CrossEntropyLoss(weight=minigrad.Tensor(weight), **kwargs)
        theirs = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(weight), **kwargs)
        if "ignore_index" not in kwargs:
            target_used = np.where(target == 255, 1, target)
        else:
            target_used = target
        loss = ours(minigrad.Tensor(scores), minigrad.Tensor(target_used))
        expected = theirs(torch.from_numpy(scores), torch.from_numpy(target_used))
        np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-5)
    assert list(ours.state_dict()) == ["weight"]  # a buffer, as in PyTorch


def test_dropout_modules_follow_training_flag():
    minigrad.manual_seed(0)
    x = minigrad.Tensor(np.ones((8, 16, 4, 4), np.float32))
    drop, drop2d = nn.Dropout(0.25), nn.Dropout2d(0.5)
    out = drop(x).numpy()
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.75)} and 0.15 < (out == 0).mean() < 0.35
    channels = drop2d(x).numpy()
    per_channel = channels.reshape(8, 16, -1)
    assert np.all(per_channel.min(axis=2) == per_channel.max(axis=2))  # whole channels kept or dropped
    assert drop.eval()(x) is x and drop2d.eval()(x) is x
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


# ---------------------------------------------------------------- default init
@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Conv2d(16, 32, 3), 16 * 9),
    (lambda: nn.Conv2d(16, 32, 3, groups=4), 4 * 9),
    (lambda: nn.ConvTranspose2d(16, 8, 4), 8 * 16),  # fan_in is dim 1 of (in, out, kh, kw)
    (lambda: nn.Linear(200, 50), 200),
])
def test_default_init_bounds(make, fan_in):
    layer = make()
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) gives exactly this bound
    weight, bias = layer.weight.numpy(), layer.bias.numpy()
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.95 * bound
    assert abs(weight.var() - bound ** 2 / 3) < 0.15 * bound ** 2 / 3
    assert np.abs(bias).max() <= bound and bias.std() > 0.3 * bound
    assert weight.dtype == np.float32


@pytest.mark.torch
def test_default_init_bounds_are_torchs():
    torch = require_torch()
    torch.manual_seed(0)
    for ours, theirs in [(nn.Conv2d(6, 4, 3), torch.nn.Conv2d(6, 4, 3)),
                         (nn.ConvTranspose2d(6, 4, 3, groups=2), torch.nn.ConvTranspose2d(6, 4, 3, groups=2))]:
        for name, param in theirs.named_parameters():
            mine = dict(ours.named_parameters())[name]
            assert mine.shape == tuple(param.shape)
            fan_in = init._calculate_fan_in_and_fan_out(ours.weight)[0]
            assert fan_in == torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)[0]
            assert np.abs(mine.numpy()).max() <= 1 / math.sqrt(fan_in)


def test_manual_seed_repeats_models():
    minigrad.manual_seed(3)
    first = Net().state_dict()
    minigrad.manual_seed(3)
    second = Net().state_dict()
    minigrad.manual_seed(4)
    third = Net().state_dict()
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
    assert not np.array_equal(first["block.conv.weight"].numpy(), third["block.conv.weight"].numpy())


# ---------------------------------------------------------------- nn.init
@pytest.mark.torch
def test_calculate_gain_matches_torch():
    torch = require_torch()
    for args in [("linear",), ("conv2d",), ("sigmoid",), ("tanh",), ("relu",), ("leaky_relu",),
                 ("leaky_relu", 0.2), ("selu",), ("conv_transpose2d",)]:
        assert init.calculate_gain(*args) == pytest.approx(torch.nn.init.calculate_gain(*args))
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("swish")


def test_init_statistics_and_in_place():
    minigrad.manual_seed(0)
    w = minigrad.Tensor(np.zeros((64, 32, 3, 3), np.float32))
    array = w.data
    fan_in, fan_out = 32 * 9, 64 * 9
    checks = [
        (lambda: init.kaiming_normal_(w, nonlinearity="relu"), math.sqrt(2 / fan_in)),
        (lambda: init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / fan_out)),
        (lambda: init.kaiming_uniform_(w, a=0.1), math.sqrt(2 / (1 + 0.01)) / math.sqrt(fan_in)),
        (lambda: init.xavier_uniform_(w, gain=2.0), 2.0 * math.sqrt(2 / (fan_in + fan_out))),
        (lambda: init.xavier_normal_(w), math.sqrt(2 / (fan_in + fan_out))),
        (lambda: init.normal_(w, mean=1.0, std=0.5), 0.5),
        (lambda: init.uniform_(w, -2.0, 2.0), 4 / math.sqrt(12)),
    ]
    for fill, std in checks:
        assert fill() is w and w.data is array
        assert w.numpy().std() == pytest.approx(std, rel=0.03)
    init.uniform_(w, -2.0, 2.0)
    assert w.numpy().min() >= -2.0 and w.numpy().max() <= 2.0
    init.kaiming_uniform_(w, nonlinearity="relu")
    assert np.abs(w.numpy()).max() <= math.sqrt(6 / fan_in)
    init.constant_(w, 0.3)
    np.testing.assert_allclose(w.numpy(), 0.3)
    assert init.ones_(w).numpy().min() == 1.0 and init.zeros_(w).numpy().max() == 0.0
    assert w.dtype == np.float32
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(minigrad.Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        init.kaiming_normal_(w, mode="fan_avg")


def test_bilinear_kernel_hand_values():
    weight = init.bilinear_kernel(3, 3, 4)
    row = np.array([0.0625, 0.1875, 0.1875, 0.0625])
    np.testing.assert_allclose(weight[1, 1, 0], row)
    np.testing.assert_allclose(weight[0, 0], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
    off_diagonal = ~np.eye(3, dtype=bool)
    assert np.all(weight[off_diagonal] == 0)
    np.testing.assert_allclose(init.bilinear_kernel(1, 1, 3)[0, 0], np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]))
    np.testing.assert_allclose(init.bilinear_kernel(1, 1, 1)[0, 0], [[1.0]])
    assert init.bilinear_kernel(2, 4, 4).shape == (2, 4, 4, 4)
    t = minigrad.Tensor(np.zeros((2, 2, 4, 4), np.float32))
    np.testing.assert_allclose(init.bilinear_(t).numpy(), init.bilinear_kernel(2, 2, 4))


def test_bilinear_transposed_conv_upsamples_constant_to_constant_interior():
    up = nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1, bias=False)
    init.bilinear_(up.weight)
    image = np.full((1, 2, 5, 6), 3.0, np.float32)
    image[:, 1] = -1.0
    out = up(minigrad.Tensor(image)).numpy()
    assert out.shape == (1, 2, 10, 12)
    np.testing.assert_allclose(out[0, 0, 1:-1, 1:-1], 3.0, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1:-1, 1:-1], -1.0, rtol=1e-6)  # channels stay separate


@pytest.mark.torch
def test_bilinear_transposed_conv_is_bilinear_interpolation_inside():
    torch = require_torch()
    up = nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1, bias=False)
    init.bilinear_(up.weight)
    x = _input((1, 1, 5, 6))
    ours = up(minigrad.Tensor(x)).numpy()
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear",
                                             align_corners=False).numpy()
    np.testing.assert_allclose(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-6)
