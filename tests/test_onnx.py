"""minigrad.onnx.export and segnets.export / predict --onnx, checked against ONNX Runtime.

Every net in segnets.MODELS at small width, op-level checks over the geometries the
property tests draw, dynamic axes, metadata, errors. Skipped where onnx or
onnxruntime is missing (pip install onnx onnxruntime, both in the test extra).
"""
import io
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigrad
import segnets
from minigrad import functional as F
from minigrad import nn

onnx = pytest.importorskip("onnx", reason="needs onnx (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install onnxruntime)")
import minigrad.onnx as mx  # noqa: E402
from segnets import checkpoint as ckpt  # noqa: E402
from segnets import export as export_mod  # noqa: E402
from segnets import predict as predict_mod  # noqa: E402

SMALL_OPTIONS = {"deconvnet": {"fc_kernel": 1}}


class Fn(nn.Module):
    """A module around a function of its inputs (the op under test)."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for name, value in params.items():
            setattr(self, name, value)

    def forward(self, *xs):
        return self.fn(self, *xs)


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def run_both(model, *arrays, opset=17, output_names=("logits",), **kwargs):
    """(minigrad's eval outputs, ONNX Runtime's outputs) for the same inputs."""
    model.eval()
    tensors = [minigrad.Tensor(a) for a in arrays]
    with minigrad.no_grad():
        ref = model(*tensors)
    ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
    names = tuple(f"input{i}" for i in range(len(arrays)))
    proto = mx.export(model, tuple(tensors), None, opset_version=opset, input_names=names,
                      output_names=output_names, **kwargs)
    got = session(proto).run(None, dict(zip(names, arrays)))
    return ref, got, proto


def assert_close(ref, got, rtol=1e-4):
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape and r.dtype == g.dtype, (r.shape, g.shape, r.dtype, g.dtype)
        if r.dtype.kind == "f":
            scale = max(float(np.abs(r).max()), 1e-6)
            np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * scale)
        else:
            np.testing.assert_array_equal(g, r)


def randomized(model, seed=0):
    """Weights that are zero at init (FCN's score layers) and BN statistics made non-trivial."""
    rng = np.random.default_rng(seed)
    for name, t in model.state_dict().items():
        if "running_mean" in name:
            t.data[...] = rng.uniform(-0.1, 0.1, t.shape)
        elif "running_var" in name:
            t.data[...] = rng.uniform(0.5, 1.5, t.shape)
        elif t.dtype.kind == "f" and not np.any(t.data):
            t.data[...] = rng.standard_normal(t.shape) * 0.1
    return model


def small_net(name, classes=3):
    return randomized(segnets.build_model(name, classes, in_channels=3, width=2, **SMALL_OPTIONS.get(name, {})))


def valid_size(rule, wanted):
    return export_mod.default_size(rule, wanted)


# ---------------------------------------------------------------------------- every net
@pytest.mark.parametrize("name", segnets.MODELS)  # the ResNet-101 nets too: 1-2 s each on the idle 2-core VM
def test_every_net_matches_minigrad(name):
    model = small_net(name)
    rule = model.size_rule()
    h, w = valid_size(rule, 17), valid_size(rule, 21 if rule.step == 1 else rule.first + rule.step)
    x = np.random.default_rng(1).standard_normal((2, 3, h, w)).astype(np.float32)
    ref, got, proto = run_both(model, x)
    assert_close(ref, got)
    onnx.checker.check_model(proto, full_check=True)
    assert {t.name for t in proto.graph.initializer} <= set(model.state_dict()) | {
        t.name for t in proto.graph.initializer if not t.name.split("_")[0] in model.state_dict()}
    weights = {t.name for t in proto.graph.initializer}
    assert any(key in weights for key in model.state_dict())  # weights keep their state_dict names


@pytest.mark.parametrize("name", ["deconvnet", "segnet"])
def test_switches_survive_the_trip_deconvnet_segnet(name):
    """Unpooling with each stage's own switches: the ONNX indices conversion, end to end, with ties."""
    model = small_net(name)
    x = np.zeros((1, 3, 64, 64), np.float32)
    x[:, :, ::3, ::5] = 1.0  # plateaus: the first maximum in each window must win in both
    ref, got, _ = run_both(model, x)
    assert_close(ref, got)


# ---------------------------------------------------------------------------- the CLI, dynamic axes, metadata
def write_checkpoint(path, name, classes=("background", "disc", "ring")):
    model = small_net(name, len(classes))
    meta = {"model": model.config, "classes": list(classes), "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "ignore_index": 255, "epoch": 7}
    ckpt.save_checkpoint(path, meta, model.state_dict())
    return model, meta


@pytest.mark.parametrize("name", segnets.MODELS)
def test_cli_dynamic_export_runs_other_batches_and_sizes(name, tmp_path, capsys):
    """Unpooling sizes (DeconvNet, SegNet), FCN's and U-Net's crops, the DeepLabs' resizes, PSPNet's adaptive
    bins all follow the input's size: sizes that were never traced give minigrad's output."""
    model, meta = write_checkpoint(tmp_path / "c.npz", name)
    height = valid_size(model.size_rule(), 64)  # at 20 PSPNet's 3x3 map equals a bin: fixed size
    out = tmp_path / "m.onnx"
    assert export_mod.main(["--checkpoint", str(tmp_path / "c.npz"), "--output", str(out), "--dynamic",
                            "--with-argmax", "--height", str(height)]) == 0
    assert "dynamic: batch, height, width" in capsys.readouterr().out
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    rule = model.size_rule()
    first, step = height, rule.step
    sizes = [(first + 3 * step, first + step)] + ([(first + 7, first + 22)] if step == 1 else [])
    s = session(proto)
    model.eval()
    for batch, (h, w) in zip((3, 2), sizes):
        x = np.random.default_rng(batch).standard_normal((batch, 3, h, w)).astype(np.float32)
        logits, probabilities, labels = s.run(None, {"input": x})
        with minigrad.no_grad():
            ref = model(minigrad.Tensor(x)).numpy()
        assert_close([ref], [logits])
        top2 = np.sort(ref, axis=1)[:, -2:]                   # labels where no float32 near-tie decides
        decided = top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(ref).max()
        assert decided.mean() > 0.9
        np.testing.assert_array_equal(labels[decided], ref.argmax(axis=1)[decided])
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_size_decided_in_python_cannot_be_dynamic(tmp_path):
    """The trace fixes Python decisions; another traced size shows the graph would change, so export refuses."""
    model = Fn(lambda self, x: F.relu(x) if x.shape[-1] > 8 else F.sigmoid(x))
    dyn = {"input": {0: "batch", 3: "width"}, "logits": {0: "batch", 3: "width"}}
    small, large = (minigrad.Tensor(np.ones((1, 3, 4, n), np.float32)) for n in (6, 12))
    with pytest.raises(mx.ExportError, match="trace to different graphs"):
        mx.export(model, small, None, dynamic_axes=dyn, check_inputs=[large])
    proto = mx.export(model, small, None, dynamic_axes=dyn, check_inputs=[minigrad.Tensor(np.ones((2, 3, 4, 7),
                                                                                                 np.float32))])
    assert [n.op_type for n in proto.graph.node] == ["Sigmoid", "Identity"]


def test_metadata_round_trips(tmp_path, capsys):
    model, meta = write_checkpoint(tmp_path / "c.npz", "unet")
    out = tmp_path / "m.onnx"
    assert export_mod.main(["--checkpoint", str(tmp_path / "c.npz"), "--output", str(out), "--opset", "18"]) == 0
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 18
    read = export_mod.read_metadata(proto)
    assert read["classes"] == meta["classes"] and read["net"] == model.config
    assert read["mean"] == pytest.approx(meta["mean"]) and read["std"] == pytest.approx(meta["std"])
    assert read["size_rule"]["first"] == 188 and read["size_rule"]["margin"] == 92 and read["epoch"] == 7
    assert read["ignore_index"] == 255 and read["dynamic"] == "fixed" and read["input_size"] == [188, 188]
    from segnets.onnx_model import OnnxSegmenter
    assert OnnxSegmenter(out).meta["classes"] == meta["classes"]


@pytest.mark.parametrize("argv, message", [
    (["--height", "100"], "--height 100 is not a valid input size for unet"),
    (["--opset", "9"], "opset_version must be an int from 13"),
    (["--width", "0"], "--width must be a positive int"),
])
def test_cli_bad_input_is_an_error_line(argv, message, tmp_path, capsys):
    write_checkpoint(tmp_path / "c.npz", "unet")
    assert export_mod.main(["--checkpoint", str(tmp_path / "c.npz"), "--output", str(tmp_path / "m.onnx")]
                           + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_missing_checkpoint_and_directory_output(tmp_path, capsys):
    assert export_mod.main(["--checkpoint", str(tmp_path / "none.npz"), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "error:" in capsys.readouterr().err
    write_checkpoint(tmp_path / "c.npz", "segnet")
    assert export_mod.main(["--checkpoint", str(tmp_path / "c.npz"), "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_predict_onnx_writes_what_the_checkpoint_writes(tmp_path, capsys):
    from PIL import Image
    write_checkpoint(tmp_path / "c.npz", "deconvnet")
    assert export_mod.main(["--checkpoint", str(tmp_path / "c.npz"), "--output", str(tmp_path / "m.onnx"),
                            "--dynamic"]) == 0
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(image)
    assert predict_mod.main(["--checkpoint", str(tmp_path / "c.npz"), str(image), "--output-dir",
                             str(tmp_path / "a")]) == 0
    assert predict_mod.main(["--onnx", str(tmp_path / "m.onnx"), str(image), "--output-dir", str(tmp_path / "b")]) == 0
    for suffix in ("mask", "color", "overlay"):
        a = np.asarray(Image.open(tmp_path / "a" / f"img_{suffix}.png"))
        b = np.asarray(Image.open(tmp_path / "b" / f"img_{suffix}.png"))
        np.testing.assert_array_equal(a, b)
    assert predict_mod.main(["--onnx", str(tmp_path / "c.npz"), str(image), "--output-dir", str(tmp_path)]) == 2
    assert "cannot load ONNX model" in capsys.readouterr().err


def test_nothing_imports_onnx_at_start_up():
    code = ("import sys, minigrad, minigrad.onnx, segnets, segnets.export, segnets.predict, segnets.train; "
            "bad = [m for m in ('onnx', 'onnxruntime') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- errors
def test_unsupported_op_names_the_op_and_the_line():
    model = Fn(lambda self, x: F.dice_loss(F.softmax(x, dim=1), minigrad.Tensor(np.zeros((1, 4, 4), np.int64))))
    with pytest.raises(mx.UnsupportedOperatorError, match=r"F\.dice_loss has no ONNX mapping \(called at "
                                                          r"tests/test_onnx\.py:\d+"):
        mx.export(model, minigrad.Tensor(np.zeros((1, 3, 4, 4), np.float32)), None)


def test_an_op_the_tracer_did_not_see_is_an_error_not_a_constant():
    from minigrad.functional.activation import relu as unseen_relu  # bound before the trace: not recorded
    conv = nn.Conv2d(3, 2, 1)
    model = Fn(lambda self, x: self.conv(unseen_relu(x)), conv=conv)
    with pytest.raises(mx.ExportError, match="computed from the input by an op the exporter did not see"):
        mx.export(model, minigrad.Tensor(np.ones((1, 3, 4, 4), np.float32)), None)


def test_export_leaves_the_model_as_it_was():
    model = small_net("fcn32s")
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    mx.export(model, minigrad.Tensor(np.zeros((1, 3, 8, 8), np.float32)), io.BytesIO())
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert F.relu is minigrad.functional.relu and not hasattr(F.relu, "__wrapped__")
    assert not hasattr(minigrad.Tensor.__add__, "__wrapped__")


def test_training_mode_batch_statistics_cannot_export():
    model = Fn(lambda self, x: self.bn(x), bn=nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(mx.UnsupportedOperatorError, match="batch statistics"):
        mx.export(model, minigrad.Tensor(np.ones((2, 3, 4, 4), np.float32)), None)


# ---------------------------------------------------------------------------- op by op
def rand(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(stride=st.integers(1, 3), padding=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])),
       dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]), k=st.integers(1, 3), seed=st.integers(0, 99))
def test_conv2d(stride, padding, dilation, groups, k, seed):
    if padding == "same":
        stride = 1
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(4, 6, (k, k + 1), stride=stride, padding=padding, dilation=dilation, groups=groups)
    ref, got, _ = run_both(Fn(lambda self, x: self.conv(x), conv=conv), rand(rng, (2, 4, 9, 10)))
    assert_close(ref, got)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(stride=st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]),
       k=st.integers(1, 4), extra=st.integers(0, 2), bias=st.booleans(), seed=st.integers(0, 99))
def test_conv_transpose2d(stride, padding, dilation, groups, k, extra, bias, seed):
    output_padding = min(extra, max(stride, dilation) - 1)
    rng = np.random.default_rng(seed)
    conv = nn.ConvTranspose2d(4, 6, k, stride=stride, padding=padding, output_padding=output_padding,
                              groups=groups, dilation=dilation, bias=bias)
    x = rand(rng, (2, 4, 5, 6))
    if conv.kernel_size[0] * 1 + (5 - 1) * stride - 2 * padding + output_padding <= 0:
        return
    ref, got, _ = run_both(Fn(lambda self, x: self.conv(x), conv=conv), x)
    assert_close(ref, got)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       ceil_mode=st.booleans(), size=st.integers(6, 11), ties=st.booleans(), seed=st.integers(0, 99))
def test_max_pool2d_with_indices(k, stride, padding, dilation, ceil_mode, size, ties, seed):
    padding = min(padding, k // 2)
    rng = np.random.default_rng(seed)
    x = rand(rng, (2, 3, size, size + 1))
    if ties:
        x = np.round(x)
    def pool(self, x):
        return F.max_pool2d(x, k, stride, padding, dilation, ceil_mode, return_indices=True)
    ref, got, _ = run_both(Fn(pool), x, output_names=("values", "indices"))
    assert_close(ref, got)  # the indices come back per plane, h * W + w, as minigrad's


@pytest.mark.parametrize("k, extra", [(2, 0), (3, 0), (3, 1)])
def test_max_unpool2d(k, extra):
    rng = np.random.default_rng(k + extra)
    x = rand(rng, (2, 3, 2 * k + extra, 3 * k + extra))

    def round_trip(self, x):
        y, i = F.max_pool2d(x, k, return_indices=True)
        same = F.max_unpool2d(y, i, k, output_size=x.shape[-2:])  # back to the pooled size: ONNX's own indices
        other = F.max_unpool2d(F.relu(y), i, k, output_size=(x.shape[2] + 1, x.shape[3] + 1))  # converted
        return same, other, F.max_unpool2d(y, i, k) if extra == 0 else same
    ref, got, _ = run_both(Fn(round_trip), x, output_names=("same", "other", "default"))
    assert_close(ref, got)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 2), ceil_mode=st.booleans(),
       count_include_pad=st.booleans(), override=st.sampled_from([None, 3]), size=st.integers(6, 11),
       seed=st.integers(0, 99))
def test_avg_pool2d(k, stride, padding, ceil_mode, count_include_pad, override, size, seed):
    padding = min(padding, k // 2)
    if override is not None:
        ceil_mode = False
    rng = np.random.default_rng(seed)
    pool = nn.AvgPool2d(k, stride, padding, ceil_mode, count_include_pad, override)
    ref, got, _ = run_both(Fn(lambda self, x: self.pool(x), pool=pool), rand(rng, (2, 3, size, size + 2)))
    assert_close(ref, got)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("out_size", [1, (2, 3), (3, 5), (None, 4)])
def test_adaptive_pools(out_size, opset):
    rng = np.random.default_rng(0)
    def pools(self, x):
        return F.adaptive_avg_pool2d(x, out_size), F.adaptive_max_pool2d(x, out_size)
    ref, got, _ = run_both(Fn(pools), rand(rng, (2, 3, 7, 12)), opset=opset, output_names=("avg", "max"))
    assert_close(ref, got)


@pytest.mark.parametrize("mode, align_corners", [("nearest", None), ("nearest-exact", None), ("bilinear", False),
                                                 ("bilinear", True)])
@pytest.mark.parametrize("size, scale", [((13, 7), None), ((4, 3), None), (None, 2.0), (None, (1.5, 3.0)),
                                         (None, 0.5)])
def test_interpolate(mode, align_corners, size, scale):
    rng = np.random.default_rng(0)
    def resize(self, x):
        return F.interpolate(x, size=size, scale_factor=scale, mode=mode, align_corners=align_corners)
    ref, got, _ = run_both(Fn(resize), rand(rng, (2, 3, 6, 5)))
    assert_close(ref, got)


def test_batch_norm_activations_dropout_softmax_argmax():
    rng = np.random.default_rng(0)
    bn = randomized(Fn(lambda self, x: x, bn=nn.BatchNorm2d(4), bn2=nn.BatchNorm2d(4, affine=False)))

    def layers(self, x):
        y = F.dropout(self.bn(x), 0.5, training=self.training) + self.bn2(x)
        y = F.leaky_relu(y, 0.2) * F.sigmoid(x) - F.tanh(x) / 2 + F.relu(-x)
        return F.log_softmax(y, dim=1), F.softmax(y, dim=1), F.argmax(y, dim=1), F.argmax(y, dim=1, keepdim=True)
    bn.fn = layers
    ref, got, proto = run_both(bn, rand(rng, (2, 4, 5, 6)), output_names=("log", "soft", "arg", "argk"))
    assert_close(ref, got)
    assert "Dropout" not in {n.op_type for n in proto.graph.node}


def test_crops_pad_cat_and_arithmetic():
    rng = np.random.default_rng(0)

    def shapes(self, x, y):
        crop = x[..., 1:5, 2:-1]                       # FCN's and U-Net's crops
        picks = x[:, 1, ::2, ::-2]                     # an int and strides
        padded = F.pad(x, (1, 2, 0, 3), value=0.5)
        cropped = F.pad(x, (-1, 1, 2, -2))             # negative pads crop
        joined = minigrad.cat([x, y * 2.0, 1.0 - y], dim=1)
        stacked = minigrad.stack([x, y], dim=2).reshape(2, 6, -1)
        mixed = (x + y).clamp(-0.5, 0.5) ** 2 + x.abs().sqrt() + minigrad.maximum(x, y) + x.exp().log()
        reduced = x.sum(dim=(2, 3), keepdim=True) + x.mean(dim=1, keepdim=True) + x.max(dim=3, keepdim=True)[0]
        return crop, picks, padded, cropped, joined, stacked, mixed, reduced, x[:, None].permute(0, 2, 1, 3, 4)
    names = tuple(f"o{i}" for i in range(9))
    ref, got, _ = run_both(Fn(shapes), rand(rng, (2, 3, 6, 7)), rand(rng, (2, 3, 6, 7)), output_names=names)
    assert_close(ref, got)
