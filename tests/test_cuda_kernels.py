"""The CUDA kernels' own source, checked without a GPU.

The kernels use a grid-stride loop, so compiled as plain C++ with one block of
one thread they visit every element in order: the same code, run on the CPU.
These tests build them that way with the host compiler, call them through
ctypes, and compare with the generic NumPy code of im2col, col2im, max-pooling
and cross-entropy, or with NumPy itself for the scatter, gather and channel sums.
A second test compiles the source with nvcc for Hopper where nvcc is installed.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import kernels
from minigrad.kernels import cuda as cuda_kernels
from minigrad.functional.im2col import col2im, conv_output_size, im2col

HOST_PRELUDE = r"""
#include <cmath>
using std::isnan; using std::exp; using std::log;
#define __global__
#define __shared__ static
#define __syncthreads()
#define atomicAdd(address, value) (*(address) += (value))
struct Dim3 { long long x, y; };
static const Dim3 blockIdx = {0, 0}, threadIdx = {0, 0}, blockDim = {1, 1}, gridDim = {1, 1};
"""


@pytest.fixture(autouse=True)
def generic_cpu_code():
    """The references here are the generic NumPy code, not the CPU kernels."""
    with kernels.disabled("cpu"):
        yield


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def host_kernels(request, tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the kernels for the host")
    dtype = np.dtype(request.param)
    folder = tmp_path_factory.mktemp(f"kernels_{dtype.name}")
    source, library = folder / "kernels.cpp", folder / "kernels.so"
    source.write_text(HOST_PRELUDE + cuda_kernels.source_for(dtype))
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return dtype, ctypes.CDLL(str(library))


def _geometry(kernel, out, stride, pad, dilation):
    return [ctypes.c_int(int(v)) for v in (*kernel, *out, *stride, *pad, *dilation)]


def _ptr(array):
    return ctypes.c_void_p(array.ctypes.data)


GEOMETRIES = [  # (shape, kernel, stride, pad_before, dilation, ceil_mode)
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1), False),
    ((1, 2, 9, 8), (3, 2), (2, 3), (1, 0), (2, 1), True),
    ((2, 1, 5, 5), (1, 1), (2, 2), (0, 0), (1, 1), False),
    ((1, 4, 8, 9), (4, 4), (2, 2), (1, 1), (1, 1), True),
    ((1, 2, 3, 11), (2, 5), (1, 3), (0, 2), (1, 2), False),
    ((1, 2, 40, 36), (16, 16), (8, 8), (4, 4), (1, 1), False),   # FCN-8s's upsampling: 4 of 256 taps a pixel
]


def _out_size(shape, kernel, stride, pad, dilation, ceil_mode):
    return tuple(conv_output_size(s, k, st, p, d, ceil_mode)
                 for s, k, st, p, d in zip(shape[2:], kernel, stride, pad, dilation))


@pytest.mark.parametrize("shape,kernel,stride,pad,dilation,ceil_mode", GEOMETRIES)
def test_im2col_and_col2im_kernels_match_numpy(host_kernels, shape, kernel, stride, pad, dilation, ceil_mode):
    dtype, lib = host_kernels
    c_scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    out = _out_size(shape, kernel, stride, pad, dilation, ceil_mode)
    expected = im2col(x, kernel, stride, pad, dilation, out, pad_value=-7.0)
    col = np.full(expected.shape, np.nan, dtype=dtype)  # poisoned: every entry must be written
    rows = shape[0] * shape[1] * kernel[0] * kernel[1]
    lib.im2col(_ptr(x), _ptr(col), ctypes.c_longlong(rows), ctypes.c_int(shape[2]), ctypes.c_int(shape[3]),
               *_geometry(kernel, out, stride, pad, dilation), c_scalar(-7.0), ctypes.c_int(0))
    np.testing.assert_array_equal(col, expected)

    upstream = rng.standard_normal(expected.shape).astype(dtype)
    expected = col2im(upstream, shape[2:], stride, pad, dilation)
    tolerance = dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    start = rng.standard_normal(shape).astype(dtype)
    for accumulate, image in ((0, np.full(shape, np.nan, dtype=dtype)), (1, start.copy())):
        lib.col2im(_ptr(upstream), _ptr(image), ctypes.c_longlong(shape[0] * shape[1]), ctypes.c_int(shape[2]),
                   ctypes.c_int(shape[3]), *_geometry(kernel, out, stride, pad, dilation), ctypes.c_int(accumulate))
        np.testing.assert_allclose(image, expected + start * accumulate, **tolerance)


@pytest.mark.parametrize("shape,kernel,stride,pad,dilation,ceil_mode", GEOMETRIES)
def test_max_pool_kernel_matches_numpy(host_kernels, shape, kernel, stride, pad, dilation, ceil_mode):
    dtype, lib = host_kernels
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        pytest.skip("PyTorch (and so max_pool2d) refuses padding > kernel_size // 2")
    rng = np.random.default_rng(1)
    x = (np.round(rng.standard_normal(shape) * 2) / 2).astype(dtype)  # coarse values: many ties
    values, indices = F.max_pool2d(mg.Tensor(x), kernel, stride, pad, dilation, ceil_mode, return_indices=True)
    out = values.shape[2:]
    got_values = np.full(values.shape, np.nan, dtype=dtype)
    got_indices = np.full(values.shape, -5, dtype=np.int64)
    lib.max_pool(_ptr(x), _ptr(got_values), _ptr(got_indices), ctypes.c_longlong(got_values.size),
                 ctypes.c_int(shape[2]), ctypes.c_int(shape[3]), *_geometry(kernel, out, stride, pad, dilation))
    np.testing.assert_array_equal(got_indices, indices.numpy())
    np.testing.assert_array_equal(got_values, values.numpy())


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_kernels_match_numpy(host_kernels, smoothing, weighted):
    dtype, lib = host_kernels
    c_scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    rng = np.random.default_rng(2)
    n, classes, h, w = 2, 5, 3, 4
    logits = (rng.standard_normal((n, classes, h, w)) * 3).astype(dtype)
    target = rng.integers(0, classes, (n, h, w))
    target[0, 1] = 255
    weight = (rng.random(classes) + 0.5).astype(dtype) if weighted else None
    upstream = rng.standard_normal((n, h, w)).astype(dtype)

    x = mg.Tensor(logits, requires_grad=True)
    expected = F.cross_entropy(x, mg.Tensor(target), weight=None if weight is None else mg.Tensor(weight),
                               ignore_index=255, reduction="none", label_smoothing=smoothing)
    expected.backward(upstream)

    valid = target != 255
    index = np.where(valid, target, 0).astype(np.int64)
    weight_array = np.ones(classes, dtype) if weight is None else weight
    loss, lse = np.full((n, h, w), np.nan, dtype), np.full((n, h, w), np.nan, dtype)
    lib.cross_entropy_forward(_ptr(logits), _ptr(index), _ptr(valid), _ptr(weight_array), _ptr(loss), _ptr(lse),
                              ctypes.c_longlong(loss.size), ctypes.c_int(classes), ctypes.c_longlong(h * w),
                              c_scalar(smoothing))
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss, expected.numpy(), **tolerance)

    factor = np.where(valid, upstream, 0).astype(dtype)
    grad = np.full(logits.shape, np.nan, dtype)
    lib.cross_entropy_backward(_ptr(logits), _ptr(index), _ptr(weight_array), _ptr(lse), _ptr(factor), _ptr(grad),
                               ctypes.c_longlong(grad.size), ctypes.c_int(classes), ctypes.c_longlong(h * w),
                               c_scalar(smoothing), c_scalar(weight_array.mean()))
    np.testing.assert_allclose(grad, x.grad.numpy(), **tolerance)


PLANES = (2, 3, 9, 10)  # (N, C, H, W) of the scatter and gather tests


def _switches(source, rng):
    """int64 switches into PLANES that collide: an overlapping 3x3 / 2 max-pool's, or random ones."""
    n, c, h, w = PLANES
    if source == "max_pool":
        x = mg.Tensor(rng.standard_normal(PLANES))
        switches = F.max_pool2d(x, 3, 2, padding=1, return_indices=True)[1].numpy()
    else:
        switches = rng.integers(0, h * w, (n, c, 7, 5))
    return np.ascontiguousarray(switches, dtype=np.int64)


def _scatter(lib, values, switches, accumulate):
    n, c, h, w = PLANES
    out = np.zeros(PLANES, dtype=values.dtype)  # the wrapper zero-fills
    lib.scatter_to_planes(_ptr(values), _ptr(switches), _ptr(out), ctypes.c_longlong(values.size),
                          ctypes.c_longlong(values[0, 0].size), ctypes.c_longlong(h * w), ctypes.c_int(accumulate))
    return out.reshape(n * c, h * w)


def _plane_rows(switches):
    """The plane (n * C + c) of every switch, in flat order."""
    return np.arange(switches.shape[0] * switches.shape[1]).repeat(switches[0, 0].size)


@pytest.mark.parametrize("source", ["max_pool", "random"])
def test_scatter_to_planes_kernel_adds_shared_switches(host_kernels, source):
    dtype, lib = host_kernels
    rng = np.random.default_rng(3)
    switches = _switches(source, rng)
    rows = _plane_rows(switches)
    assert len(set(zip(rows, switches.ravel()))) < switches.size  # the test needs collisions
    values = rng.standard_normal(switches.shape).astype(dtype)
    expected = np.zeros((rows[-1] + 1, PLANES[2] * PLANES[3]))
    np.add.at(expected, (rows, switches.ravel()), values.ravel().astype(np.float64))
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_scatter(lib, values, switches, 1), expected, **tolerance)


def test_scatter_to_planes_kernel_stores_without_accumulate(host_kernels):
    dtype, lib = host_kernels
    rng = np.random.default_rng(4)
    n, c, h, w = PLANES
    distinct = np.stack([rng.permutation(h * w)[:12] for _ in range(n * c)]).reshape(n, c, 3, 4)
    rows = _plane_rows(distinct)
    values = rng.standard_normal(distinct.shape).astype(dtype)
    expected = np.zeros((n * c, h * w), dtype)
    expected[rows, distinct.ravel()] = values.ravel()
    np.testing.assert_array_equal(_scatter(lib, values, distinct, 0), expected)
    np.testing.assert_array_equal(_scatter(lib, values, distinct, 1), expected)  # adding to 0 is exact

    shared = _switches("random", rng)  # a shared switch keeps one of its values
    rows = _plane_rows(shared)
    values = rng.standard_normal(shared.shape).astype(dtype)
    out = _scatter(lib, values, shared, 0)
    for row, switch in set(zip(rows, shared.ravel())):
        assert out[row, switch] in values.ravel()[(rows == row) & (shared.ravel() == switch)]
    untouched = np.ones(out.shape, bool)
    untouched[rows, shared.ravel()] = False
    assert not out[untouched].any()


@pytest.mark.parametrize("source", ["max_pool", "random"])
def test_gather_from_planes_kernel_matches_take_along_axis(host_kernels, source):
    dtype, lib = host_kernels
    rng = np.random.default_rng(5)
    switches = _switches(source, rng)
    n, c, h, w = PLANES
    planes = rng.standard_normal(PLANES).astype(dtype)
    expected = np.take_along_axis(planes.reshape(n, c, -1), switches.reshape(n, c, -1), axis=2)
    out = np.full(switches.shape, np.nan, dtype)  # poisoned: every entry must be written
    lib.gather_from_planes(_ptr(planes), _ptr(switches), _ptr(out), ctypes.c_longlong(out.size),
                           ctypes.c_longlong(out[0, 0].size), ctypes.c_longlong(h * w))
    np.testing.assert_array_equal(out, expected.reshape(switches.shape))


CHANNEL_SHAPES = [(2, 3, 5, 7), (3, 4, 1), (7, 3), (1, 1, 13), (5, 2, 3, 3, 3), (4, 1, 6, 5)]


@pytest.mark.parametrize("use", ["plain", "variance", "backward"])
@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=str)
def test_channel_sums_kernel_matches_numpy(host_kernels, shape, use):
    """Batch norm's uses: sums of x and x**2, of x - mean and its square, of g and g * (x - mean)."""
    dtype, lib = host_kernels
    rng = np.random.default_rng(6)
    n, c = shape[:2]
    axes = (0,) + tuple(range(2, len(shape)))
    x = (rng.standard_normal(shape) * 3 + 10).astype(dtype)  # off-centre: the shift matters
    mean = x.astype(np.float64).mean(axis=axes).astype(dtype)
    zeros = np.zeros(c, dtype)
    a, b, shift_a, shift_b = {
        "plain": (x, x, zeros, zeros),
        "variance": (x, x, mean, mean),
        "backward": (rng.standard_normal(shape).astype(dtype), x, zeros, mean),
    }[use]
    channel = (1, c) + (1,) * (len(shape) - 2)
    da = a.astype(np.float64) - shift_a.reshape(channel)
    dadb = da * (b.astype(np.float64) - shift_b.reshape(channel))

    partial_a, partial_ab = np.full(c, np.nan, dtype), np.full(c, np.nan, dtype)  # host: one block a channel
    lib.channel_sums(_ptr(a), _ptr(b), _ptr(shift_a), _ptr(shift_b), _ptr(partial_a), _ptr(partial_ab),
                     ctypes.c_longlong(n), ctypes.c_int(c), ctypes.c_longlong(a[0, 0].size))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for got, terms in ((partial_a, da), (partial_ab, dadb)):
        # A sum's rounding scales with its terms, not with the sum (near 0 once shifted by the mean).
        np.testing.assert_allclose(got, terms.sum(axis=axes), rtol=rtol, atol=rtol * np.abs(terms).sum(axis=axes).max())


@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=str)
def test_batch_norm_elementwise_kernels_match_numpy(host_kernels, shape):
    """The output (x - mean) * scale + shift and the input gradient g * gain - (x - mean) * slope - offset."""
    dtype, lib = host_kernels
    rng = np.random.default_rng(7)
    n, c = shape[:2]
    channel = (1, c) + (1,) * (len(shape) - 2)
    x, g = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    mean, scale, shift, slope = (rng.standard_normal(c).astype(dtype) for _ in range(4))
    length = ctypes.c_int(x[0, 0].size)
    y = np.full(shape, np.nan, dtype)
    lib.channel_affine(_ptr(x), _ptr(mean), _ptr(scale), _ptr(shift), _ptr(y), ctypes.c_longlong(n * c),
                       ctypes.c_int(c), length)
    expected = (x - mean.reshape(channel)) * scale.reshape(channel) + shift.reshape(channel)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=rtol)
    dx = np.full(shape, np.nan, dtype)
    lib.batch_norm_input_grad(_ptr(g), _ptr(x), _ptr(mean), _ptr(scale), _ptr(slope), _ptr(shift), _ptr(dx),
                              ctypes.c_longlong(n * c), ctypes.c_int(c), length)
    expected = (g * scale.reshape(channel) - (x - mean.reshape(channel)) * slope.reshape(channel)
                - shift.reshape(channel))
    np.testing.assert_allclose(dx, expected, rtol=rtol, atol=rtol)


def test_relu_grad_kernel_passes_gradient_where_output_is_positive(host_kernels):
    dtype, lib = host_kernels
    rng = np.random.default_rng(8)
    y = np.maximum(rng.standard_normal((3, 4, 5)), 0).astype(dtype)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = np.full(y.shape, np.nan, dtype)
    lib.relu_grad(_ptr(g), _ptr(y), _ptr(dx), ctypes.c_longlong(y.size))
    np.testing.assert_array_equal(dx, np.where(y > 0, g, 0))


@pytest.mark.parametrize("settings", [dict(momentum=0.9, weight_decay=1e-2), dict(momentum=0.9, nesterov=True),
                                      dict(momentum=0.5, dampening=0.3), dict()], ids=str)
def test_sgd_update_kernel_matches_the_optimizer(host_kernels, settings):
    """Three steps of the kernel against minigrad's SGD on the CPU (PyTorch's arithmetic)."""
    from minigrad.optim import SGD
    dtype, lib = host_kernels
    rng = np.random.default_rng(10)
    start = rng.standard_normal(50).astype(dtype)
    grads = [rng.standard_normal(50).astype(dtype) for _ in range(3)]
    param = mg.Tensor(start, requires_grad=True, dtype=dtype)
    optimizer = SGD([param], lr=0.1, **settings)
    p, buf = start.copy(), np.full(50, np.nan, dtype)
    t = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    for step, g in enumerate(grads):
        param.grad = mg.Tensor(g)
        optimizer.step()
        lib.sgd_update(_ptr(p), _ptr(g), _ptr(buf), ctypes.c_longlong(50), t(0.1), t(settings.get("momentum", 0)),
                       t(settings.get("dampening", 0)), t(settings.get("weight_decay", 0)),
                       ctypes.c_int(settings.get("nesterov", False)), ctypes.c_int(step == 0))
        np.testing.assert_allclose(p, param.numpy(), rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("shape,kernel,stride,pad,dilation,ceil_mode", GEOMETRIES[:3])
def test_im2col_kernel_folded_layout(host_kernels, shape, kernel, stride, pad, dilation, ceil_mode):
    """folded = N: the same columns, laid out (C, kh, kw, N, OH, OW) for the weight gradient's one product."""
    dtype, lib = host_kernels
    x = np.random.default_rng(9).standard_normal(shape).astype(dtype)
    out = _out_size(shape, kernel, stride, pad, dilation, ceil_mode)
    expected = im2col(x, kernel, stride, pad, dilation, out).transpose(1, 2, 3, 0, 4, 5)
    col = np.full(expected.shape, np.nan, dtype=dtype)
    c_scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    lib.im2col(_ptr(x), _ptr(col), ctypes.c_longlong(shape[0] * shape[1] * kernel[0] * kernel[1]),
               ctypes.c_int(shape[2]), ctypes.c_int(shape[3]), *_geometry(kernel, out, stride, pad, dilation),
               c_scalar(0.0), ctypes.c_int(shape[0]))
    np.testing.assert_array_equal(col, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_compile_with_nvcc(tmp_path, dtype):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed: the CUDA build of the kernels is checked where it is")
    source = tmp_path / "kernels.cu"
    source.write_text(cuda_kernels.source_for(dtype))
    result = subprocess.run([nvcc, "-arch=sm_90", "-std=c++11", "-c", str(source), "-o", str(tmp_path / "k.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
