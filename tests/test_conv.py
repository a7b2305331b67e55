"""conv2d and conv_transpose2d: hand values, gradients, adjointness, PyTorch parity, errors, chunking."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigrad import Tensor, kernels
from minigrad.functional import conv as conv_module
from minigrad.functional import conv2d, conv_transpose2d
from minigrad.functional.im2col import conv_output_size, conv_transpose_output_size
from minigrad.gradcheck import gradcheck
from tests.helpers import more_examples, require_torch


def t(values, requires_grad=False, dtype=np.float64):
    return Tensor(np.asarray(values, dtype=dtype), requires_grad=requires_grad)


def row(values):
    """A 1-D signal as a (1, 1, 1, L) image: 1-D examples as 1xN 2-D convolutions."""
    return t(np.asarray(values, dtype=np.float64).reshape(1, 1, 1, -1))


# ---------------------------------------------------------------------------- forward by hand
def test_conv2d_is_cross_correlation_by_hand():
    out = conv2d(row([1, 2, 3]), row([1, 10]))
    np.testing.assert_array_equal(out.numpy().ravel(), [21, 32])


def test_conv2d_2d_sums_with_bias_by_hand():
    x = t(np.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    out = conv2d(x, t(np.ones((1, 1, 2, 2))), t([0.5]))
    np.testing.assert_array_equal(out.numpy()[0, 0], [[12.5, 16.5], [24.5, 28.5]])


def test_conv2d_stride_and_padding_by_hand():
    x = t(np.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    out = conv2d(x, t(np.ones((1, 1, 3, 3))), stride=2, padding=1)
    # windows centred on the four corners of the 3x3 input
    np.testing.assert_array_equal(out.numpy()[0, 0], [[12, 16], [24, 28]])


def test_conv2d_dilation_by_hand():
    out = conv2d(row([1, 2, 3, 4, 5]), row([1, 1]), dilation=2)
    np.testing.assert_array_equal(out.numpy().ravel(), [4, 6, 8])


def test_conv2d_groups_by_hand():
    x = t(np.stack([np.ones((2, 2)), 2 * np.ones((2, 2))])[None])
    w = t(np.array([2.0, 3.0]).reshape(2, 1, 1, 1))
    out = conv2d(x, w, groups=2)
    np.testing.assert_array_equal(out.numpy()[0, :, 0, 0], [2, 6])


def test_conv2d_same_padding_even_kernel_pads_right_by_hand():
    # total padding 1: none on the left, one on the right (PyTorch's split)
    out = conv2d(row([1, 2, 3, 4]), row([1, 10]), padding="same")
    np.testing.assert_array_equal(out.numpy().ravel(), [21, 32, 43, 4])
    valid = conv2d(row([1, 2, 3, 4]), row([1, 10]), padding="valid")
    np.testing.assert_array_equal(valid.numpy().ravel(), [21, 32, 43])


def test_conv_transpose2d_1d_example_by_hand():
    a, b = 2.0, 3.0
    x, y, z = 5.0, 7.0, 11.0
    out = conv_transpose2d(row([a, b]), row([x, y, z]), stride=2)
    np.testing.assert_array_equal(out.numpy().ravel(), [a * x, a * y, a * z + b * x, b * y, b * z])
    # padding crops both ends; output_padding adds one more position on the right (nothing lands there)
    cropped = conv_transpose2d(row([a, b]), row([x, y, z]), stride=2, padding=(0, 1))
    np.testing.assert_array_equal(cropped.numpy().ravel(), [a * y, a * z + b * x, b * y])
    longer = conv_transpose2d(row([a, b]), row([x, y, z]), stride=2, output_padding=(0, 1))
    np.testing.assert_array_equal(longer.numpy().ravel(), [a * x, a * y, a * z + b * x, b * y, b * z, 0])


def test_conv_transpose2d_channels_groups_and_bias_by_hand():
    x = t(np.array([1.0, 2.0]).reshape(1, 2, 1, 1))
    w = t(np.array([[10.0, 20.0], [30.0, 40.0]]).reshape(2, 2, 1, 1))   # (C_in, C_out, 1, 1)
    out = conv_transpose2d(x, w, t([1.0, -1.0]))
    np.testing.assert_array_equal(out.numpy().ravel(), [1 * 10 + 2 * 30 + 1, 1 * 20 + 2 * 40 - 1])
    grouped = conv_transpose2d(x, t(np.array([10.0, 30.0]).reshape(2, 1, 1, 1)), groups=np.int64(2))
    np.testing.assert_array_equal(grouped.numpy().ravel(), [10, 60])


def test_unbatched_input_matches_batched():
    rng = np.random.default_rng(1)
    x = t(rng.standard_normal((2, 5, 5)), requires_grad=True)
    w = t(rng.standard_normal((3, 2, 3, 3)))
    out = conv2d(x, w, padding=1)
    assert out.shape == (3, 5, 5)
    np.testing.assert_allclose(out.numpy(), conv2d(t(x.numpy()[None]), w, padding=1).numpy()[0])
    out.sum().backward()
    assert x.grad.shape == (2, 5, 5)
    wt = t(rng.standard_normal((2, 4, 2, 2)))
    assert conv_transpose2d(x, wt, stride=2).shape == (4, 10, 10)


# ---------------------------------------------------------------------------- gradients
CONV_CASES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
    dict(padding="same", dilation=2),
    dict(padding="same"),            # even kernel width: asymmetric padding
    dict(padding="valid", stride=3),
    dict(groups=2, padding=1),
    dict(groups=2, stride=2, dilation=2, padding=2),
]


@pytest.mark.parametrize("kwargs", CONV_CASES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_gradcheck(kwargs, bias):
    rng = np.random.default_rng(2)
    x = t(rng.standard_normal((2, 4, 7, 6)), True)
    w = t(rng.standard_normal((4, 4 // kwargs.get("groups", 1), 3, 2)), True)
    b = t(rng.standard_normal(4), True) if bias else None
    gradcheck(lambda x, w, b: conv2d(x, w, b, **kwargs), [x, w, b])


CONV_T_CASES = [
    dict(),
    dict(stride=2),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(3, 2), padding=(1, 0), output_padding=(2, 1)),
    dict(dilation=2, output_padding=1),   # output_padding < dilation is allowed
    dict(groups=2, stride=2, padding=1),
    dict(groups=2, dilation=(2, 1), stride=(1, 2), output_padding=(1, 1)),
]


@pytest.mark.parametrize("kwargs", CONV_T_CASES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_gradcheck(kwargs, bias):
    rng = np.random.default_rng(3)
    g = kwargs.get("groups", 1)
    x = t(rng.standard_normal((2, 4, 3, 4)), True)
    w = t(rng.standard_normal((4, 6 // g, 3, 2)), True)
    b = t(rng.standard_normal(6), True) if bias else None
    gradcheck(lambda x, w, b: conv_transpose2d(x, w, b, **kwargs), [x, w, b])


def _counting(monkeypatch, name, calls=None):
    """Spy on ``conv_module.<name>``: appends to ``calls`` (a new list unless given) on every call."""
    calls = [] if calls is None else calls
    original = getattr(conv_module, name)
    monkeypatch.setattr(conv_module, name, lambda *a, **k: calls.append(name) or original(*a, **k))
    return calls


@pytest.fixture
def generic_conv():
    """The generic im2col code only (the CPU kernels convolve with stride 1 without im2col; test_kernels)."""
    with kernels.disabled("cpu"):
        yield


@pytest.mark.parametrize("stride", [1, 2])   # stride 1 scatters with col2im_wide, others with col2im
def test_backward_computes_only_what_is_asked(monkeypatch, stride, generic_conv):
    rng = np.random.default_rng(4)
    im2col_calls = _counting(monkeypatch, "im2col")
    col2im_calls = _counting(monkeypatch, "col2im_wide", _counting(monkeypatch, "col2im"))
    x, w = t(rng.standard_normal((2, 3, 5, 5)), True), t(rng.standard_normal((4, 3, 3, 3)))
    out = conv2d(x, w, padding=1, stride=stride)
    forward_im2cols = len(im2col_calls)
    out.sum().backward()
    assert len(im2col_calls) == forward_im2cols and len(col2im_calls) == 1 and w.grad is None
    x, w = t(rng.standard_normal((2, 3, 5, 5))), t(rng.standard_normal((4, 3, 3, 3)), True)
    col2im_calls.clear()
    conv2d(x, w, padding=1, stride=stride).sum().backward()
    assert col2im_calls == [] and x.grad is None and w.grad is not None


# ---------------------------------------------------------------------------- properties
@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 2))
    c, o = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 6))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 6))
    return dict(n=draw(st.integers(1, 2)), c=c, o=o, h=h, w=w, kernel=(kh, kw), groups=groups,
                stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), seed=draw(st.integers(0, 2 ** 31)))


def _operands(p, bias=True):
    rng = np.random.default_rng(p["seed"])
    x = t(rng.standard_normal((p["n"], p["c"], p["h"], p["w"])), True)
    w = t(rng.standard_normal((p["o"], p["c"] // p["groups"]) + p["kernel"]), True)
    b = t(rng.standard_normal(p["o"]), True) if bias else None
    return rng, x, w, b


def _conv_kwargs(p):
    return dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"], groups=p["groups"])


def _output_padding(p):
    """output_padding that makes conv_transpose2d give back the conv's input size."""
    oh = conv_output_size(p["h"], p["kernel"][0], p["stride"][0], p["padding"][0], p["dilation"][0])
    ow = conv_output_size(p["w"], p["kernel"][1], p["stride"][1], p["padding"][1], p["dilation"][1])
    return tuple(size - conv_transpose_output_size(out, k, s, pad, 0, d) for size, out, k, s, pad, d in zip(
        (p["h"], p["w"]), (oh, ow), p["kernel"], p["stride"], p["padding"], p["dilation"]))


@given(conv_problems())
def test_conv2d_gradcheck_property(p):
    _, x, w, b = _operands(p)
    gradcheck(lambda x, w, b: conv2d(x, w, b, **_conv_kwargs(p)), [x, w, b])


@given(conv_problems())
def test_conv_transpose2d_gradcheck_property(p):
    # the transposed conv of p's conv: input on the column side, weight (C_in=o, C_out/g, kh, kw)
    rng, x, w, _ = _operands(p, bias=False)
    y = t(rng.standard_normal(conv2d(x, w, **_conv_kwargs(p)).shape), True)
    b = t(rng.standard_normal(p["c"]), True)
    kwargs = _conv_kwargs(p)
    gradcheck(lambda y, w, b: conv_transpose2d(y, w, b, output_padding=_output_padding(p), **kwargs), [y, w, b])


@more_examples(3)
@given(conv_problems())
def test_adjoint_identity(p):
    """<conv2d(x, W), y> = <x, conv_transpose2d(y, W)> with the same W."""
    rng, x, w, _ = _operands(p, bias=False)
    cx = conv2d(x, w, **_conv_kwargs(p))
    y = t(rng.standard_normal(cx.shape))
    ty = conv_transpose2d(y, w, output_padding=_output_padding(p), **_conv_kwargs(p))
    assert ty.shape == x.shape
    np.testing.assert_allclose((cx.numpy() * y.numpy()).sum(), (x.numpy() * ty.numpy()).sum(), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- PyTorch parity
@pytest.fixture
def torch_one_thread():
    """Tiny convs: torch's thread pool only adds overhead (5x slower on a busy 2-core machine)."""
    torch = require_torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


def _torch_grid(**axes):
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def _compare_with_torch(ours, theirs, x, w, has_bias, dtype, kwargs, out_channels):
    torch = require_torch()
    rng = np.random.default_rng(5)
    arrays = [x, w] + ([rng.standard_normal(out_channels).astype(dtype)] if has_bias else [])
    mine = [Tensor(a, requires_grad=True) for a in arrays]
    refs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = ours(*mine, **kwargs) if has_bias else ours(*mine, None, **kwargs)
    assert out.dtype == dtype, kwargs
    ref = theirs(*refs, **kwargs) if has_bias else theirs(*refs, None, **kwargs)
    assert out.shape == tuple(ref.shape), kwargs
    g = rng.standard_normal(out.shape).astype(dtype)
    out.backward(g)
    ref.backward(torch.tensor(g))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), err_msg=f"output, {kwargs}", **tol)
    for name, m, r in zip(("input", "weight", "bias"), mine, refs):
        assert m.grad.dtype == dtype
        np.testing.assert_allclose(m.grad.numpy(), r.grad.numpy(), err_msg=f"{name} grad, {kwargs}", **tol)


CONV_GRID = [c for c in _torch_grid(stride=[1, 2, (2, 1)], padding=[0, 1, (2, 1), "same", "valid"],
                                    dilation=[1, 2], groups=[1, 2], has_bias=[True, False])
             if not (c["padding"] == "same" and c["stride"] != 1)]


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")   # torch's note that it pads a copy
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_conv2d_matches_torch(dtype, torch_one_thread):
    """Every combination of the grid (one test: the cases are tiny, pytest's per-test cost is not)."""
    torch = torch_one_thread
    rng = np.random.default_rng(6)
    for case in CONV_GRID:
        kwargs = dict(case)
        has_bias = kwargs.pop("has_bias")
        x = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
        w = rng.standard_normal((6, 4 // kwargs["groups"], 3, 4)).astype(dtype)
        _compare_with_torch(conv2d, torch.nn.functional.conv2d, x, w, has_bias, dtype, kwargs, 6)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_few_positions_per_sample_match_torch(dtype, torch_one_thread):
    """fc-like layers (more output channels than positions per sample): one product for the whole batch."""
    torch = torch_one_thread
    rng = np.random.default_rng(7)
    for size, kernel, kwargs in (((1, 1), (1, 1), {}), ((2, 2), (1, 1), {}), ((2, 2), (2, 2), {}),
                                 ((3, 2), (3, 3), dict(padding=1)), ((4, 4), (3, 3), dict(padding=1, dilation=2)),
                                 ((4, 4), (3, 3), dict(stride=2, padding=1))):
        for has_bias in (True, False):
            x = rng.standard_normal((3, 5) + size).astype(dtype)
            w = rng.standard_normal((24, 5) + kernel).astype(dtype)
            _compare_with_torch(conv2d, torch.nn.functional.conv2d, x, w, has_bias, dtype, kwargs, 24)
            y = rng.standard_normal((3, 24) + size).astype(dtype)
            wt = rng.standard_normal((24, 5) + kernel).astype(dtype)
            _compare_with_torch(conv_transpose2d, torch.nn.functional.conv_transpose2d, y, wt, has_bias, dtype,
                                kwargs, 5)


CONV_T_GRID = [c for c in _torch_grid(stride=[1, 2, (3, 2)], padding=[0, 1, (2, 0)], output_padding=[0, 1, (1, 0)],
                                      dilation=[1, 2], groups=[1, 2], has_bias=[True, False])
               if all(op < max(s, d) for op, s, d in zip(*[np.broadcast_to(c[k], 2)
                                                           for k in ("output_padding", "stride", "dilation")]))]


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_conv_transpose2d_matches_torch(dtype, torch_one_thread):
    torch = torch_one_thread
    rng = np.random.default_rng(7)
    for case in CONV_T_GRID:
        kwargs = dict(case)
        has_bias = kwargs.pop("has_bias")
        x = rng.standard_normal((2, 4, 5, 4)).astype(dtype)
        w = rng.standard_normal((4, 6 // kwargs["groups"], 3, 4)).astype(dtype)
        _compare_with_torch(conv_transpose2d, torch.nn.functional.conv_transpose2d, x, w, has_bias, dtype, kwargs, 6)


@pytest.mark.torch
@pytest.mark.parametrize("kwargs", [dict(stride=9, padding=4),
                                    dict(stride=9, padding=(0, 2), output_padding=(3, 1))], ids=str)
def test_large_kernel_upsampling_matches_torch(kwargs, torch_one_thread):
    """FCN-style upsampling (kernel twice the stride): col2im goes by phase block, not tap by tap."""
    rng = np.random.default_rng(10)
    x, w = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((3, 2, 18, 18))
    _compare_with_torch(conv_transpose2d, torch_one_thread.nn.functional.conv_transpose2d, x, w, True,
                        np.float64, kwargs, 2)


# ---------------------------------------------------------------------------- dtype and chunking
@pytest.mark.parametrize("op, wshape", [(conv2d, (4, 3, 3, 3)), (conv_transpose2d, (3, 4, 3, 3))])
def test_float32_stays_float32(op, wshape):
    rng = np.random.default_rng(8)
    x = t(rng.standard_normal((2, 3, 6, 6)), True, np.float32)
    w = t(rng.standard_normal(wshape), True, np.float32)
    b = t(rng.standard_normal(4), True, np.float32)
    out = op(x, w, b, stride=2, padding=1)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, np.float32))
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


@pytest.mark.parametrize("op, wshape, kwargs", [
    (conv2d, (4, 3, 3, 3), dict(stride=2, padding=1)),
    (conv2d, (6, 1, 3, 3), dict(groups=3, dilation=2, padding="same")),
    (conv2d, (4, 3, 2, 3), dict(stride=(3, 1), padding=(4, 0))),   # some row blocks read only padding
    (conv_transpose2d, (3, 4, 4, 4), dict(stride=2, padding=1, output_padding=1)),
    (conv_transpose2d, (3, 4, 3, 3), dict(stride=(1, 2), dilation=(3, 1))),   # blocks overlap in the image
])
def test_tiled_im2col_gives_the_same_results(op, wshape, kwargs, monkeypatch, generic_conv):
    rng = np.random.default_rng(9)
    x_np, w_np = rng.standard_normal((5, 3, 7, 6)), rng.standard_normal(wshape)

    def run(budget):
        previous = conv_module.set_im2col_budget(budget)
        try:
            x, w = t(x_np, True), t(w_np, True)
            out = op(x, w, **kwargs)
            out.backward(np.cos(np.arange(out.numel())).reshape(out.shape))
        finally:
            conv_module.set_im2col_budget(previous)
        return out, (out.numpy(), x.grad.numpy(), w.grad.numpy())

    calls = _counting(monkeypatch, "im2col")
    out, whole = run(2 ** 30)
    passes = len(calls)   # one im2col per pass over the batch (forward or backward)
    # the column side is the output of conv2d and the input of conv_transpose2d
    image, columns = (x_np, out) if op is conv2d else (out, x_np)
    per_sample_bytes = 8 * image.shape[1] * wshape[2] * wshape[3] * columns.shape[2] * columns.shape[3]
    column_rows = columns.shape[2]
    for budget, tiles in ((per_sample_bytes, 5), (1, 5 * column_rows)):
        del calls[:]
        _, tiled = run(budget)
        assert len(calls) == passes * tiles, (budget, len(calls))
        for name, a, b in zip(("output", "input grad", "weight grad"), whole, tiled):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{name}, budget {budget}")


def test_im2col_budget_rejects_nonsense():
    with pytest.raises(ValueError, match="nbytes"):
        conv_module.set_im2col_budget(0)


# ---------------------------------------------------------------------------- errors
def _x(shape=(1, 4, 5, 5), dtype=np.float64):
    return t(np.ones(shape), dtype=dtype)


class _FakeGpuTensor(Tensor):
    """A CPU tensor that claims to live on the GPU: enough to reach the device check."""
    device = property(lambda self: "gpu")


def _on_fake_gpu(tensor):
    tensor.__class__ = _FakeGpuTensor
    return tensor


@pytest.mark.parametrize("call, words", [
    (lambda: conv2d(_x((4, 5)), _x((2, 4, 3, 3))), ["input", "4-D", "(4, 5)"]),
    (lambda: conv2d(_x(), _x((2, 4, 3))), ["weight", "4-D", "(2, 4, 3)"]),
    (lambda: conv2d(_x(), _x((2, 3, 3, 3))), ["input has 4 channels", "(2, 3, 3, 3)"]),
    (lambda: conv2d(_x(), _x((3, 2, 3, 3)), groups=2), ["groups=2", "output channels", "(3)"]),
    (lambda: conv2d(_x((1, 3, 5, 5)), _x((2, 1, 3, 3)), groups=2), ["groups=2", "input channels", "(3)"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), groups=0), ["groups", "positive", "0"]),
    (lambda: conv2d(_x(), _x((2, 4, 7, 3))), ["kernel", "(7, 3)", "input (5, 5)"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), dilation=3), ["kernel", "dilation (3, 3)", "larger"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), _x((3,))), ["bias", "(2,)", "(3,)"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), stride=0), ["stride", ">= 1"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), dilation=(1, 0)), ["dilation", ">= 1"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), padding=-1), ["padding", ">= 0"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), padding="full"), ["padding", "'full'"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), padding="same", stride=2), ["padding='same'", "stride"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3), dtype=np.float32)), ["dtype", "weight", "float32", "float64"]),
    (lambda: conv2d(_x(), _x((2, 4, 3, 3)), _x((2,), np.float32)), ["dtype", "bias", "float32"]),
    (lambda: conv2d(_x(), _on_fake_gpu(_x((2, 4, 3, 3)))), ["device", "weight", "gpu", "cpu"]),
    (lambda: conv_transpose2d(_x((4, 5)), _x((4, 2, 3, 3))), ["input", "4-D"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3))), ["weight", "4-D"]),
    (lambda: conv_transpose2d(_x(), _x((3, 2, 3, 3))), ["input has 4 channels", "weight.shape[0]"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3)), groups=3), ["groups=3", "input channels"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3)), _x((3,))), ["bias", "(2,)", "(3,)"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3)), stride=2, output_padding=2), ["output_padding", "stride"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3)), output_padding=(0, 1)), ["output_padding", "dilation"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3)), stride=(1, 0)), ["stride", ">= 1"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3)), dilation=0), ["dilation", ">= 1"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3)), padding="same"), ["padding", "'same'"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 1, 1)), padding=3), ["output size", "padding (3, 3)"]),
    (lambda: conv_transpose2d(_x(), _x((4, 2, 3, 3), np.float32)), ["dtype", "weight"]),
    (lambda: conv_transpose2d(_x(), _on_fake_gpu(_x((4, 2, 3, 3)))), ["device", "weight", "gpu"]),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_bad_arguments_raise_readable_errors(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("groups", [1, 2])
def test_weight_grad_folds_the_batch_when_maps_are_small(groups):
    # more output channels per group than positions (fc layers): the batch is folded into one
    # product; the result must equal the per-sample sum, which takes the unfolded path
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 3, 3))
    w = rng.standard_normal((12, 4 // groups, 2, 2))
    gy = rng.standard_normal((3, 12, 2, 2))
    weight = Tensor(w, requires_grad=True)
    conv2d(Tensor(x), weight, groups=groups).backward(gy)
    per_sample = np.zeros_like(w)
    for i in range(3):
        single = Tensor(w, requires_grad=True)
        conv2d(Tensor(x[i:i + 1]), single, groups=groups).backward(gy[i:i + 1])
        per_sample += single.grad.numpy()
    np.testing.assert_allclose(weight.grad.numpy(), per_sample, rtol=1e-12, atol=1e-12)
