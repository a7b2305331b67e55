"""ONNX export of the ops and arguments issue 19 added: linear, minimum, max/min of two tensors,
clamp with Tensor bounds, add/sub with alpha. Checked against ONNX Runtime."""
import numpy as np
import pytest

import minigrad
from minigrad import functional as F
from minigrad import nn

pytest.importorskip("onnx", reason="needs onnx (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install onnxruntime)")
import minigrad.onnx as mx  # noqa: E402


from tests.test_onnx import Fn  # noqa: E402  (a module around the op under test)


def run_both(model, *arrays):
    model.eval()
    tensors = [minigrad.Tensor(a) for a in arrays]
    with minigrad.no_grad():
        ref = model(*tensors).numpy()
    names = tuple(f"input{i}" for i in range(len(arrays)))
    proto = mx.export(model, tuple(tensors), None, input_names=names, output_names=("out",))
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, dict(zip(names, arrays)))[0]
    return ref, got


@pytest.mark.parametrize("fn", [
    lambda m, x, y: F.linear(x, m.weight, m.bias),
    lambda m, x, y: F.linear(x, m.weight),
    lambda m, x, y: F.minimum(x, y),
    lambda m, x, y: F.max(x, y),
    lambda m, x, y: F.min(x, y),
    lambda m, x, y: F.clamp(x, y, y + 0.5),
    lambda m, x, y: F.clamp(x, max=y),
    lambda m, x, y: F.add(x, y, alpha=2.5),
    lambda m, x, y: F.sub(x, y, alpha=-3),
])
def test_exports_match_minigrad(fn):
    rng = np.random.default_rng(0)
    model = Fn(fn, weight=nn.Parameter(rng.standard_normal((5, 4)).astype(np.float32)),
               bias=nn.Parameter(rng.standard_normal(5).astype(np.float32)))
    x, y = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    ref, got = run_both(model, x, y)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_linear_module_exports():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2, bias=False))
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    ref, got = run_both(model, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
