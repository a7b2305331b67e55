"""The CPU fast paths (minigrad.kernels.cpu, numba) against the generic array code they replace.

Each kernel is called directly and through its op, on float32 and float64, odd shapes and
every geometry the conv/pooling property tests draw; the reference is the same call with
``kernels.disabled()``. Also: the switches (``MINIGRAD_CPU_KERNELS=0``) and thread counts.
(The CUDA kernels are checked in test_cuda_kernels.py, compiled for the host, and on a GPU
in test_gpu.py.)
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba", reason="the CPU kernels need numba (pip install -e .[cpu]; it is in the test extra)")
if os.environ.get("MINIGRAD_CPU_KERNELS", "1") == "0":
    pytest.skip("MINIGRAD_CPU_KERNELS=0: the CPU kernels are off, nothing to compare (the suite checks "
                "the generic code in this mode)", allow_module_level=True)

import minigrad as mg  # noqa: E402
import minigrad.functional as F  # noqa: E402
from minigrad import kernels  # noqa: E402
from tests.test_conv import conv_problems as conv_geometries  # noqa: E402
from minigrad import threads as threads_module  # noqa: E402
from minigrad.functional.im2col import col2im, conv_output_size, im2col  # noqa: E402
from minigrad.kernels import cpu  # noqa: E402

DTYPES = [np.float32, np.float64]
IDS = ["float32", "float64"]


def close(dtype):
    return dict(rtol=2e-5, atol=2e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-11, atol=1e-11)


def both(fn):
    """(fast path result, generic result) of ``fn()``."""
    fast = fn()
    with kernels.disabled():
        generic = fn()
    return fast, generic


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def threads(request, monkeypatch):
    """Run a test with 1 and with 3 kernel threads; every share is big enough to be split."""
    monkeypatch.setattr(cpu, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(cpu, "_MIN_PARALLEL_MACS", 0)
    monkeypatch.setattr(threads_module, "_threads", request.param)   # the kernels' pool only, not BLAS's
    yield request.param


def test_kernels_are_on_and_found():
    x = np.zeros((1, 1, 2, 2), np.float32)
    assert kernels.enabled("cpu") and kernels.get("im2col", x) is cpu.im2col
    assert kernels.get("im2col", x.astype(np.int64)) is None      # integers: generic code
    assert kernels.get("no_such_kernel", x) is None
    with kernels.disabled("cpu"):
        assert kernels.get("im2col", x) is None and not kernels.enabled("cpu")
    assert kernels.get("im2col", x) is cpu.im2col


def test_environment_switch_turns_every_cpu_fast_path_off():
    code = ("import numpy as np; from minigrad import kernels; x = np.zeros(3, np.float32); "
            "names = ['im2col', 'col2im', 'max_pool2d', 'channel_sums', 'relu', 'sgd_update', "
            "'scatter_to_planes', 'gather_from_planes', 'relu_grad', 'matmul']; "
            "print(kernels.enabled('cpu'), [n for n in names if kernels.get(n, x) is not None])")
    env = dict(os.environ, MINIGRAD_CPU_KERNELS="0")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "[]"]


GEOMETRIES = [  # (shape, kernel, stride, pad_before, dilation, ceil_mode)
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1), False),
    ((1, 2, 9, 8), (3, 2), (2, 3), (1, 0), (2, 1), True),
    ((2, 1, 5, 5), (1, 1), (2, 2), (0, 0), (1, 1), False),
    ((1, 4, 8, 9), (4, 4), (2, 2), (1, 1), (1, 1), True),
    ((1, 2, 3, 11), (2, 5), (1, 3), (0, 2), (1, 2), False),
    ((3, 2, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1), False),       # all padding but the centre
    ((1, 2, 40, 36), (16, 16), (8, 8), (4, 4), (1, 1), False),   # FCN-8s's upsampling
    ((1, 2, 70, 66), (64, 64), (32, 32), (0, 0), (1, 1), False), # FCN-32s's: rows of 1-2, along the taps
    ((2, 3, 9, 12), (3, 12), (1, 3), (1, 1), (1, 1), False),     # along the taps, with padding
    ((2, 3, 8, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),       # every net's pooling (max-pool's 2x2 kernel)
    ((1, 2, 7, 9), (2, 2), (2, 2), (0, 0), (1, 1), False),       # odd sizes: the last row/column left out
    ((1, 2, 7, 9), (2, 2), (2, 2), (0, 0), (1, 1), True),        # ceil mode: partial windows, general kernel
]


def _out_size(shape, kernel, stride, pad, dilation, ceil_mode):
    return tuple(conv_output_size(s, k, st_, p, d, ceil_mode)
                 for s, k, st_, p, d in zip(shape[2:], kernel, stride, pad, dilation))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape,kernel,stride,pad,dilation,ceil_mode", GEOMETRIES)
def test_im2col_and_col2im_match_generic(threads, dtype, shape, kernel, stride, pad, dilation, ceil_mode):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    out = _out_size(shape, kernel, stride, pad, dilation, ceil_mode)
    for pad_value in (0.0, -np.inf):
        fast, generic = both(lambda: im2col(x, kernel, stride, pad, dilation, out, pad_value))
        np.testing.assert_array_equal(fast, generic)
    workspace = np.full(generic.size + 5, np.nan, dtype)[:generic.size]
    folded = cpu.im2col(x, kernel, stride, pad, dilation, out, -np.inf, out=workspace, folded=True)
    np.testing.assert_array_equal(folded, generic.transpose(1, 2, 3, 0, 4, 5))
    assert np.shares_memory(folded, workspace)

    col = rng.standard_normal(generic.shape).astype(dtype)
    fast, generic = both(lambda: col2im(col, shape[2:], stride, pad, dilation))
    np.testing.assert_allclose(fast, generic, **close(dtype))
    start = rng.standard_normal(shape).astype(dtype)
    for target in (lambda a: a, lambda a: a[:, :, 1:]):   # the whole image, a block of its rows
        if shape[2] == 1 and target(start).shape[2] == 0:
            continue
        rows = target(start).shape[2]
        fast_out, generic_out = start.copy(), start.copy()
        cpu.col2im(col, (rows, shape[3]), stride, pad, dilation, out=target(fast_out))
        with kernels.disabled():
            col2im(col, (rows, shape[3]), stride, pad, dilation, out=target(generic_out))
        np.testing.assert_allclose(fast_out, generic_out, **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape,kernel,stride,pad,dilation,ceil_mode", GEOMETRIES)
def test_max_pool_and_unpool_match_generic(threads, dtype, shape, kernel, stride, pad, dilation, ceil_mode):
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        pytest.skip("max_pool2d refuses padding > kernel_size // 2, as PyTorch does")
    rng = np.random.default_rng(1)
    data = (np.round(rng.standard_normal(shape) * 2) / 2).astype(dtype)  # coarse values: many ties
    data.flat[::7] = np.nan if shape[2] > 3 else 0.0
    data.flat[1::5] = -np.inf

    def pool():
        x = mg.tensor(data, requires_grad=True)
        values, indices = F.max_pool2d(x, kernel, stride, pad, dilation, ceil_mode, return_indices=True)
        g = np.arange(values.numel(), dtype=dtype).reshape(values.shape) % 5
        values.backward(mg.tensor(g))   # the max-pool gradient is max_unpool2d's scatter
        return values.numpy(), indices.numpy(), x.grad.numpy()
    for fast, generic in zip(*both(pool)):
        np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_scatter_and_gather_match_generic(threads, dtype, accumulate):
    from minigrad.functional.pooling import _gather_from_planes, _scatter_to_planes
    rng = np.random.default_rng(2)
    n, c, h, w, length = 2, 3, 5, 7, 11
    values = rng.standard_normal((n, c, length)).astype(dtype)
    if accumulate:
        switches = rng.integers(0, h * w, (n, c, length))            # repeats add up
    else:
        switches = np.stack([rng.permutation(h * w)[:length] for _ in range(n * c)]).reshape(n, c, length)
    fast, generic = both(lambda: _scatter_to_planes(values, switches, (h, w), disjoint=not accumulate))
    np.testing.assert_allclose(fast, generic, **close(dtype))
    planes = rng.standard_normal((n, c, h, w)).astype(dtype)
    fast, generic = both(lambda: _gather_from_planes(planes, switches))
    np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 7, 3), (1, 1, 9), (3, 2, 1, 1)], ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_generic(threads, dtype, shape, training):
    rng = np.random.default_rng(3)
    c = shape[1]
    data = (rng.standard_normal(shape) * 3 + 10).astype(dtype)   # an offset mean: the two-pass variance
    upstream = rng.standard_normal(shape).astype(dtype)
    running = rng.random(c) + 0.5

    def run():
        x = mg.tensor(data, requires_grad=True)
        weight = mg.tensor(rng.standard_normal(c).astype(dtype), requires_grad=True)
        bias = mg.tensor(rng.standard_normal(c).astype(dtype), requires_grad=True)
        mean, var = mg.tensor(running.astype(dtype)), mg.tensor(running.astype(dtype))
        out = F.batch_norm(x, mean, var, weight, bias, training=training)
        out.backward(mg.tensor(upstream))
        return out.numpy(), x.grad.numpy(), weight.grad.numpy(), bias.grad.numpy(), mean.numpy(), var.numpy()
    seed_state = rng.bit_generator.state
    fast = run()
    rng.bit_generator.state = seed_state
    with kernels.disabled():
        generic = run()
    for a, b in zip(fast, generic):
        np.testing.assert_allclose(a, b, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                   atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("offset", [0.0, -3e3, 1e5])
def test_channel_moments_match_the_two_pass_mean_and_variance(threads, dtype, offset):
    """Batch norm's one-pass statistics (cpu.channel_moments: shifted float64 sums) against the
    float64 two-pass mean and variance, also for means far from zero relative to the spread (the
    case a plain sum-of-squares formula gets wrong), and batch_norm's running stats against the
    generic code's."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 5, 6, 7)) * 0.5 + offset + np.arange(5)[None, :, None, None]).astype(dtype)
    mean, var = cpu.channel_moments(x)
    exact = x.astype(np.float64)
    np.testing.assert_allclose(mean, exact.mean(axis=(0, 2, 3)), rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(var, exact.var(axis=(0, 2, 3)), rtol=1e-5 if dtype == np.float32 else 1e-11)
    assert mean.dtype == var.dtype == dtype

    def run():
        rm, rv = mg.tensor(np.zeros(5, dtype)), mg.tensor(np.ones(5, dtype))
        out = F.batch_norm(mg.tensor(x), rm, rv, training=True)
        return out.numpy(), rm.numpy(), rv.numpy()
    if dtype == np.float32 and offset:
        return   # the generic float32 sum of values near 1e5 is itself off by ~1e-2 of the spread
    tol = 1e-5 if dtype == np.float32 else 1e-11 + 1e-14 * abs(offset)   # the input's own rounding, over its spread
    for a, b in zip(*both(run)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_channel_sums_do_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(cpu, "_MIN_PARALLEL", 0)
    a = np.random.default_rng(4).standard_normal((5, 3, 77)).astype(np.float32)
    results = []
    for n in (1, 2, 4):
        monkeypatch.setattr(threads_module, "_threads", n)
        results.append(cpu.channel_sums(a, a, np.ones(3, np.float32)))
    for sums in results[1:]:
        np.testing.assert_array_equal(sums[0], results[0][0])
        np.testing.assert_array_equal(sums[1], results[0][1])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_relu_matches_generic(threads, dtype):
    data = np.array([-2.0, -0.0, 0.0, 3.0, np.nan, np.inf, -np.inf] * 5, dtype).reshape(5, 7)
    upstream = np.arange(35, dtype=dtype).reshape(5, 7)

    def run():
        x = mg.tensor(data, requires_grad=True)
        out = F.relu(x)
        out.backward(mg.tensor(upstream))
        return out.numpy(), x.grad.numpy()
    for fast, generic in zip(*both(run)):
        np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_matches_generic(threads, dtype, smoothing, weighted, reduction):
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((3, 5, 4, 3)) * 4).astype(dtype)
    target = rng.integers(0, 5, (3, 4, 3))
    target[0, 1] = 255
    weight = mg.tensor(rng.random(5).astype(dtype) + 0.5) if weighted else None
    upstream = rng.standard_normal((3, 4, 3)).astype(dtype) if reduction == "none" else None

    def run():
        x = mg.tensor(logits, requires_grad=True)
        loss = F.cross_entropy(x, mg.tensor(target), weight=weight, ignore_index=255,
                               reduction=reduction, label_smoothing=smoothing)
        loss.backward(None if upstream is None else mg.tensor(upstream))
        return loss.numpy(), x.grad.numpy()
    for fast, generic in zip(*both(run)):
        np.testing.assert_allclose(fast, generic, **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_cross_entropy_kernels_over_several_pixel_blocks_and_wide_logits(threads, dtype):
    """More pixels than one block (and not a multiple of it), logits from -1e4 to 80 (exp's
    argument far below its lowest normal result), class weights and smoothing."""
    rng = np.random.default_rng(8)
    shape = (2, 4, 37, 29)    # 1073 pixels per sample: three blocks of 512, the last partial
    logits = (rng.standard_normal(shape) * 30).astype(dtype)
    logits[:, 2, :5] = -1e4
    logits[1, 3, 7] = 80
    target = rng.integers(0, 4, (2, 37, 29))
    target[0, :3] = 255
    weight = mg.tensor(rng.random(4).astype(dtype) + 0.5)
    upstream = rng.standard_normal((2, 37, 29)).astype(dtype)

    def run():
        x = mg.tensor(logits, requires_grad=True)
        loss = F.cross_entropy(x, mg.tensor(target), weight=weight, ignore_index=255, reduction="none",
                               label_smoothing=0.1)
        loss.backward(mg.tensor(upstream))
        return loss.numpy(), x.grad.numpy()
    for fast, generic in zip(*both(run)):
        np.testing.assert_allclose(fast, generic, **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_kernel_exp_is_within_two_ulp_of_numpy(dtype):
    """The cross-entropy kernels' own exp (``_exp_split`` + ``_exp_series``: 2^n e^r) on [lowest, 0.5]."""
    k, (bias, shift), bits_like = cpu._exp_constants(np.dtype(dtype))
    t = np.concatenate([np.linspace(k[3], 0.5, 1501), -np.logspace(-8, 1, 300)]).astype(dtype)
    ours = np.empty_like(t)
    for j, value in enumerate(t):
        n, r = cpu._exp_split(value, k)
        bits = np.array([(int(n) + bias) << shift], bits_like.dtype)
        ours[j] = cpu._exp_series(r, k) * bits.view(dtype)[0]
    exact = np.exp(t.astype(np.longdouble))
    ulp = np.spacing(exact.astype(dtype)).astype(np.longdouble)
    assert np.max(np.abs(ours - exact) / ulp) <= 2
    assert np.isnan(cpu._exp_split(dtype(np.nan), k)[1])   # NaN logits stay NaN


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("options", [dict(momentum=0.9, weight_decay=1e-2), dict(momentum=0.9, nesterov=True),
                                     dict(momentum=0.5, dampening=0.3), dict()], ids=str)
def test_sgd_update_matches_generic(threads, dtype, options):
    rng = np.random.default_rng(6)
    start = rng.standard_normal((3, 4, 5)).astype(dtype)
    grads = [rng.standard_normal(start.shape).astype(dtype) for _ in range(3)]

    def run():
        p = mg.nn.Parameter(mg.tensor(start.copy()))
        opt = mg.optim.SGD([p], lr=0.1, **options)
        for g in grads:
            p.grad = mg.tensor(g)
            opt.step()
        return p.numpy()
    fast, generic = both(run)
    np.testing.assert_array_equal(fast, generic)   # the same operations in the same dtype and order


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("form", ["plain", "transpose_a", "transpose_b_accumulate", "few_samples", "rows",
                                  "rows_transpose_a", "rows_transpose_b_accumulate"])
def test_matmul_matches_generic(threads, dtype, form):
    """Every share split: by samples, by columns, and by rows (more rows than columns: fc layers)."""
    from minigrad.functional.conv import _matmul
    rng = np.random.default_rng(7)
    w = rng.standard_normal((2, 5, 7)).astype(dtype)                 # (groups, m, k)
    start = rng.standard_normal((2, 5, 9)).astype(dtype)
    tall = rng.standard_normal((1, 13, 7)).astype(dtype)
    tall_start = rng.standard_normal((1, 13, 3)).astype(dtype)
    cases = {
        "rows": lambda: _matmul(tall, rng_b((1, 7, 3)), None),
        "rows_transpose_a": lambda: _matmul(tall.transpose(0, 2, 1).copy(), rng_b((1, 7, 3)), None, transpose_a=True),
        "rows_transpose_b_accumulate": lambda: _matmul(tall, rng_b((1, 3, 7)), tall_start.copy(), transpose_b=True,
                                                       accumulate=True),
        "plain": lambda: _matmul(w, rng_b((3, 2, 7, 11)), np.empty((3, 2, 5, 11), dtype)),
        "transpose_a": lambda: _matmul(w, rng_b((3, 2, 5, 13)), np.empty((3, 2, 7, 13), dtype), transpose_a=True),
        "transpose_b_accumulate": lambda: _matmul(w[:, :, :6], rng_b((2, 9, 6)), start.copy(), transpose_b=True,
                                                  accumulate=True),
        "few_samples": lambda: _matmul(w, rng_b((1, 2, 7, 11)), None),
    }
    state = {}

    def rng_b(shape):
        key = shape
        if key not in state:
            state[key] = rng.standard_normal(shape).astype(dtype)
        return state[key]
    fast, generic = both(cases[form])
    np.testing.assert_allclose(fast, generic, **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_blas_product_reads_any_blas_layout_and_refuses_the_rest(dtype):
    """cpu._blas_product (cblas_?gemm over every slice in one compiled call) against numpy.matmul: row- and
    column-major operands, sub-matrix views, broadcast batches, accumulation, an empty inner dimension; other
    layouts refused."""
    if not cpu._GEMM:
        pytest.skip("no cblas_?gemm found in NumPy's BLAS: the products use numpy.matmul")
    rng = np.random.default_rng(11)
    big = rng.standard_normal((3, 9, 12)).astype(dtype)
    cases = [  # (a, b, transpose_a, transpose_b, accumulate)
        (big[:, :5, :7], rng.standard_normal((3, 7, 4)).astype(dtype), False, False, False),
        (big[0, :7, :5], rng.standard_normal((2, 7, 4)).astype(dtype), True, False, True),   # broadcast a
        (np.asfortranarray(rng.standard_normal((5, 7)).astype(dtype)), big[1, :4, :7], False, True, False),
        (rng.standard_normal((5, 0)).astype(dtype), rng.standard_normal((0, 3)).astype(dtype), False, False, False),
    ]
    for a, b, ta, tb, acc in cases:
        a_op = np.swapaxes(a, -1, -2) if ta else a
        b_op = np.swapaxes(b, -1, -2) if tb else b
        expected = np.matmul(a_op, b_op)
        out = rng.standard_normal(expected.shape).astype(dtype)
        start = out.copy()
        assert cpu._blas_product(a, b, out, ta, tb, acc)
        np.testing.assert_allclose(out, expected + (start if acc else 0), **close(dtype))
    every_other = rng.standard_normal((5, 14)).astype(dtype)[:, ::2]   # no unit stride: not a BLAS matrix
    assert not cpu._blas_product(every_other, rng.standard_normal((7, 3)).astype(dtype), np.empty((5, 3), dtype),
                                 False, False, False)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_matmul_split_in_compiled_shares_matches_numpy(dtype, monkeypatch):
    """cpu.matmul's shares as compiled BLAS calls (``_gemm_share``, no GIL) against numpy.matmul on 3
    threads: batches, broadcast operands, transposed and column-major operands, accumulation; batch axes
    that do not flatten to one step (a broadcast axis between two real ones) take the Python shares."""
    if not cpu._GEMM:
        pytest.skip("no cblas_?gemm found in NumPy's BLAS")
    monkeypatch.setattr(cpu, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(cpu, "_MIN_PARALLEL_MACS", 0)
    monkeypatch.setattr(threads_module, "_threads", 3)
    rng = np.random.default_rng(5)
    planned = 0
    for lead_a, lead_b in [((), ()), ((4,), (4,)), ((4,), ()), ((), (5,)), ((2, 3), (2, 3)), ((2, 1), (1, 3))]:
        for ta, tb, acc in [(False, False, False), (True, False, True), (False, True, False), (True, True, True)]:
            m, k, n = 7, 6, 5
            a = rng.standard_normal(lead_a + ((k, m) if ta else (m, k))).astype(dtype)
            b = rng.standard_normal(lead_b + ((n, k) if tb else (k, n))).astype(dtype)
            if not lead_a and ta:
                a = np.asfortranarray(a)   # column-major storage: BLAS reads it with the other flag
            out = rng.standard_normal(np.broadcast_shapes(lead_a, lead_b) + (m, n)).astype(dtype)
            expected = np.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b)
            expected = expected + (out if acc else 0)
            planned += cpu._gemm_plan(a, b, out, ta, tb, acc) is not None
            cpu.matmul(a, b, out, ta, tb, acc)
            np.testing.assert_allclose(out, expected, **close(dtype))
    assert planned == 20   # all but the (2, 1) x (1, 3) broadcast batches


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shapes", [((5, 7), (7, 3)), ((4, 5, 7), (7, 9)), ((2, 1, 5, 7), (3, 7, 2)),
                                    ((6, 7), (2, 7, 4))], ids=str)
def test_matmul_op_matches_generic(threads, dtype, shapes):
    rng = np.random.default_rng(8)
    a_data, b_data = (rng.standard_normal(s).astype(dtype) for s in shapes)

    def run():
        a, b = mg.tensor(a_data, requires_grad=True), mg.tensor(b_data, requires_grad=True)
        out = mg.matmul(a, b)
        out.backward(mg.tensor(np.cos(np.arange(out.numel())).reshape(out.shape).astype(dtype)))
        return out.numpy(), a.grad.numpy(), b.grad.numpy()
    for fast, generic in zip(*both(run)):
        np.testing.assert_allclose(fast, generic, **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_linear_matches_generic(threads, dtype):
    rng = np.random.default_rng(9)
    x_data, w_data, b_data = (rng.standard_normal(s).astype(dtype) for s in ((3, 4, 6), (5, 6), (5,)))

    def run():
        x, w, b = (mg.tensor(d, requires_grad=True) for d in (x_data, w_data, b_data))
        out = F.linear(x, w, b)
        out.backward(mg.tensor(np.sin(np.arange(out.numel())).reshape(out.shape).astype(dtype)))
        return out.numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()
    for fast, generic in zip(*both(run)):
        np.testing.assert_allclose(fast, generic, **close(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_adaptive_avg_pool_products_match_generic(threads, dtype):
    """adaptive_avg_pool2d is two products with bin matrices: the pool's threaded product runs them."""
    x_data = np.random.default_rng(3).standard_normal((3, 5, 13, 11)).astype(dtype)

    def run():
        x = mg.tensor(x_data, requires_grad=True)
        out = F.adaptive_avg_pool2d(x, (6, 4))
        out.backward(mg.tensor(np.cos(np.arange(out.numel())).reshape(out.shape).astype(dtype)))
        return out.numpy(), x.grad.numpy()
    for fast, generic in zip(*both(run)):
        np.testing.assert_allclose(fast, generic, **close(dtype))


# -------------------------------------------------------------- whole convolutions, property-drawn
@st.composite
def conv_problems(draw):
    """The geometries test_conv.py's properties draw, in float32 or float64, with or without row tiles."""
    problem = draw(conv_geometries())
    return dict(problem, dtype=draw(st.sampled_from(DTYPES)), budget=draw(st.sampled_from([None, 1])))


@settings(max_examples=40, deadline=None)
@given(conv_problems())
def test_conv_and_transposed_conv_match_generic(p):
    from minigrad.functional import conv as conv_module
    rng = np.random.default_rng(p["seed"])
    dtype, g = p["dtype"], p["groups"]
    x_data = rng.standard_normal((p["n"], p["c"], p["h"], p["w"])).astype(dtype)
    w_conv = rng.standard_normal((p["o"], p["c"] // g) + p["kernel"]).astype(dtype)
    w_transposed = rng.standard_normal((p["c"], p["o"] // g) + p["kernel"]).astype(dtype)
    kwargs = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"], groups=g)
    transposed_size = [(size - 1) * s - 2 * pad + d * (k - 1) + 1 for size, s, pad, d, k in zip(
        (p["h"], p["w"]), p["stride"], p["padding"], p["dilation"], p["kernel"])]

    def run(op, w_data):
        x, w = mg.tensor(x_data, requires_grad=True), mg.tensor(w_data, requires_grad=True)
        out = op(x, w)
        out.backward(mg.tensor(np.cos(np.arange(out.numel())).reshape(out.shape).astype(dtype)))
        return out.numpy(), x.grad.numpy(), w.grad.numpy()
    cases = [(F.conv2d, w_conv)]
    if min(transposed_size) >= 1:
        cases.append((F.conv_transpose2d, w_transposed))
    previous = conv_module.set_im2col_budget(p["budget"] or 2 ** 22)   # 1 byte: tiles of one output row
    try:
        for op, w_data in cases:
            fast, generic = both(lambda: run(lambda x, w: op(x, w, **kwargs), w_data))
            for a, b in zip(fast, generic):
                np.testing.assert_allclose(a, b, **close(dtype))
    finally:
        conv_module.set_im2col_budget(previous)


@st.composite
def stride1_problems(draw):
    """Stride-1 ungrouped geometries (the convolution by taps): paddings up to past the kernel's extent,
    'same' (odd totals too), up to 5 samples (split over 3 threads) on maps small and large enough to
    put one or several samples in one product."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.one_of(st.just("same"), st.tuples(st.integers(0, 4), st.integers(0, 4))))
    pads = (0, 0) if padding == "same" else padding
    side = draw(st.sampled_from([1, 3, 7, 70]))
    h = max(side, dh * (kh - 1) + 1 - 2 * pads[0])
    w = max(draw(st.sampled_from([2, 9, 12])), dw * (kw - 1) + 1 - 2 * pads[1])   # taps: output width >= 8
    # the taps need 16 input channels (each direction's); 15 exercises the fallback in the same example
    return dict(n=draw(st.integers(1, 5)), c=draw(st.sampled_from([15, 16, 17])), o=draw(st.sampled_from([15, 16])),
                h=h, w=w,
                kernel=(kh, kw), padding=padding, dilation=(dh, dw), bias=draw(st.booleans()),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31)))


@pytest.mark.parametrize("thread_count", [1, 3])
@settings(max_examples=30, deadline=None)
@given(p=stride1_problems())
def test_stride1_conv_by_taps_matches_generic(p, thread_count):
    """conv2d and conv_transpose2d with stride 1 (cpu.conv2d_taps, no column array) against im2col."""
    rng = np.random.default_rng(p["seed"])
    dtype = p["dtype"]
    x_data = rng.standard_normal((p["n"], p["c"], p["h"], p["w"])).astype(dtype)
    b_data = rng.standard_normal(p["o"]).astype(dtype)

    def run(op, w_data, **kwargs):
        x, w = mg.tensor(x_data, requires_grad=True), mg.tensor(w_data, requires_grad=True)
        b = mg.tensor(b_data, requires_grad=True) if p["bias"] else None
        out = op(x, w, b, dilation=p["dilation"], **kwargs)
        out.backward(mg.tensor(np.cos(np.arange(out.numel())).reshape(out.shape).astype(dtype)))
        return [out.numpy(), x.grad.numpy(), w.grad.numpy()] + ([b.grad.numpy()] if b is not None else [])
    cases = [(F.conv2d, rng.standard_normal((p["o"], p["c"]) + p["kernel"]).astype(dtype), p["padding"])]
    if p["padding"] != "same":
        size = [s - 1 - 2 * pad + d * (k - 1) + 1 for s, pad, d, k in zip(
            (p["h"], p["w"]), p["padding"], p["dilation"], p["kernel"])]
        if min(size) >= 1:
            cases.append((F.conv_transpose2d, rng.standard_normal((p["c"], p["o"]) + p["kernel"]).astype(dtype),
                          p["padding"]))
    previous = (cpu._MIN_PARALLEL_MACS, threads_module._threads)
    cpu._MIN_PARALLEL_MACS, threads_module._threads = 0, thread_count   # every share split
    try:
        for op, w_data, padding in cases:
            fast, generic = both(lambda: run(op, w_data, padding=padding))
            for a, b in zip(fast, generic):
                np.testing.assert_allclose(a, b, **close(dtype))
    finally:
        cpu._MIN_PARALLEL_MACS, threads_module._threads = previous


def test_stride1_conv_runs_by_taps_and_only_what_is_asked(monkeypatch):
    """Stride 1: no im2col/col2im at all; the backward computes only the gradients asked for."""
    from minigrad.functional import conv as conv_module
    calls = []
    for module, name in ((cpu, "conv2d_taps"), (cpu, "conv2d_taps_weight_grad"), (conv_module, "im2col"),
                         (conv_module, "col2im")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(0)
    x, w = mg.tensor(rng.standard_normal((2, 16, 9, 9)), requires_grad=True), mg.tensor(rng.standard_normal((16, 16, 3, 3)))
    F.conv2d(x, w, padding=1).sum().backward()
    assert calls == ["conv2d_taps", "conv2d_taps"] and w.grad is None   # forward, then the input gradient
    calls.clear()
    x, w = mg.tensor(rng.standard_normal((2, 16, 9, 9))), mg.tensor(rng.standard_normal((16, 16, 3, 3)), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    assert calls == ["conv2d_taps", "conv2d_taps_weight_grad"] and x.grad is None
    calls.clear()
    F.conv2d(x, w, stride=2, padding=1)   # other strides: im2col
    assert calls and set(calls) == {"im2col"}
    calls.clear()
    F.conv2d(x[:, :3], w[:, :3], padding=1)   # 3 input channels: too few for the taps, im2col
    assert calls and set(calls) == {"im2col"}


@st.composite
def wide_kernel_problems(draw):
    """Kernels at least four times as wide as the output (cpu.conv2d_windows): FCN-like upsampling and
    fc-like convolutions, with strides, paddings past the image, dilations and odd sizes."""
    kh, kw = draw(st.integers(1, 9)), draw(st.integers(4, 17))
    sh, sw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh)), draw(st.integers(0, kw))
    oh, ow = draw(st.integers(1, 3)), draw(st.integers(1, max(1, kw // 4)))
    # an input that gives (oh, ow) for conv2d (the transposed conv's input is the (oh, ow) side)
    h = max(1, (oh - 1) * sh + dh * (kh - 1) + 1 - 2 * ph)
    w = max(1, (ow - 1) * sw + dw * (kw - 1) + 1 - 2 * pw)
    output_padding = (draw(st.integers(0, max(sh, dh) - 1)), draw(st.integers(0, max(sw, dw) - 1)))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 5)), o=draw(st.integers(1, 5)), h=h, w=w,
                kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), bias=draw(st.booleans()),
                output_padding=output_padding, dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31)))


@pytest.mark.parametrize("thread_count", [1, 3])
@settings(max_examples=30, deadline=None)
@given(p=wide_kernel_problems())
def test_wide_kernel_conv_by_window_rows_matches_generic(p, thread_count):
    """conv2d and conv_transpose2d whose kernel is >= 4x the output width (cpu.conv2d_windows and its two
    gradients, position-major columns) against the generic im2col code: values and all gradients."""
    rng = np.random.default_rng(p["seed"])
    dtype = p["dtype"]
    kwargs = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"])
    x_conv = rng.standard_normal((p["n"], p["c"], p["h"], p["w"])).astype(dtype)

    def run(op, x_data, w_data, b_size):
        x, w = mg.tensor(x_data, requires_grad=True), mg.tensor(w_data, requires_grad=True)
        b = mg.tensor(rng.standard_normal(b_size).astype(dtype), requires_grad=True) if p["bias"] else None
        extra = dict(output_padding=p["output_padding"]) if op is F.conv_transpose2d else {}
        out = op(x, w, b, **kwargs, **extra)
        out.backward(mg.tensor(np.cos(np.arange(out.numel())).reshape(out.shape).astype(dtype)))
        return [out.numpy(), x.grad.numpy(), w.grad.numpy()] + ([b.grad.numpy()] if b is not None else [])
    w_conv = rng.standard_normal((p["o"], p["c"]) + p["kernel"]).astype(dtype)
    out_size = F.conv2d(mg.tensor(x_conv), mg.tensor(w_conv), **kwargs).shape[2:]
    x_transposed = rng.standard_normal((p["n"], p["o"]) + tuple(out_size)).astype(dtype)
    cases = [(F.conv2d, x_conv, w_conv, p["o"])]
    transposed_size = [(size - 1) * s - 2 * pad + d * (k - 1) + 1 + extra for size, s, pad, d, k, extra in zip(
        out_size, p["stride"], p["padding"], p["dilation"], p["kernel"], p["output_padding"])]
    if min(transposed_size) >= 1:
        cases.append((F.conv_transpose2d, x_transposed, w_conv, p["c"]))
    previous = (cpu._MIN_PARALLEL, cpu._MIN_PARALLEL_MACS, threads_module._threads)
    cpu._MIN_PARALLEL, cpu._MIN_PARALLEL_MACS, threads_module._threads = 0, 0, thread_count   # every pass split
    try:
        for op, x_data, w_data, b_size in cases:
            state = rng.bit_generator.state
            fast = run(op, x_data, w_data, b_size)
            rng.bit_generator.state = state   # the same bias
            with kernels.disabled():
                generic = run(op, x_data, w_data, b_size)
            for a, b in zip(fast, generic):
                np.testing.assert_allclose(a, b, **close(dtype))
    finally:
        cpu._MIN_PARALLEL, cpu._MIN_PARALLEL_MACS, threads_module._threads = previous


def test_wide_kernels_run_by_window_rows_and_only_there(monkeypatch):
    """FCN-16s's upsampling (32x32 kernel at stride 16 on 4x4 maps): window rows in the forward and both
    gradients, no im2col/col2im; a kernel under 4x the output width, or groups, keep the im2col path."""
    from minigrad.functional import conv as conv_module
    calls = []
    for module, name in ((cpu, "conv2d_windows"), (cpu, "conv2d_windows_input_grad"),
                         (cpu, "conv2d_windows_weight_grad"), (conv_module, "im2col"), (conv_module, "col2im")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    rng = np.random.default_rng(0)
    x = mg.tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), requires_grad=True)
    w = mg.tensor(rng.standard_normal((3, 3, 32, 32)).astype(np.float32), requires_grad=True)
    out = F.conv_transpose2d(x, w, stride=16, padding=8)
    assert out.shape == (2, 3, 64, 64)
    out.sum().backward()
    assert calls == ["conv2d_windows_input_grad", "conv2d_windows", "conv2d_windows_weight_grad"]
    calls.clear()
    F.conv_transpose2d(mg.tensor(rng.standard_normal((2, 3, 5, 5))), mg.tensor(rng.standard_normal((3, 3, 16, 16))),
                       stride=8)   # 4 * 5 > 16: im2col/col2im
    assert calls and set(calls) <= {"im2col", "col2im"}
    calls.clear()
    F.conv2d(mg.tensor(rng.standard_normal((1, 4, 9, 9))), mg.tensor(rng.standard_normal((4, 2, 9, 9))), groups=2)
    assert calls and set(calls) <= {"im2col", "col2im"}


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_cat_split_over_the_samples_matches_generic(threads, dim):
    """cat along a non-batch axis copies each thread's samples (kernels.spread); the same values and
    dtype promotion as numpy.concatenate, and the gradients routed back."""
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((5, 2, 3, 4)).astype(np.float32), rng.standard_normal((5, 2, 3, 4)),
             rng.standard_normal((5, 2, 3, 4)).astype(np.float32)]
    axis = dim % 4
    parts[1] = np.repeat(parts[1], 2, axis=axis)   # a different size along dim

    def run():
        ts = [mg.tensor(p, requires_grad=True) for p in parts]
        out = F.cat(ts, dim)
        out.backward(mg.tensor(np.cos(np.arange(out.numel())).reshape(out.shape)))
        return [out.numpy()] + [t.grad.numpy() for t in ts]
    fast, generic = both(run)
    np.testing.assert_array_equal(fast[0], np.concatenate(parts, axis=axis))
    assert fast[0].dtype == np.float64
    for a, b in zip(fast, generic):
        np.testing.assert_array_equal(a, b)


def test_set_num_threads_sets_openblas_and_the_kernel_pool():
    from minigrad import threads
    previous = mg.get_num_threads()
    try:
        with kernels.disabled("cpu"):   # no kernels: OpenBLAS gets the threads
            mg.set_num_threads(2)
            assert mg.get_num_threads() == 2 and threads.openblas_threads() in (None, 2)
            mg.set_num_threads(1)
            assert mg.get_num_threads() == 1 and threads.openblas_threads() in (None, 1)
        mg.set_num_threads(2)   # kernels: one pool of 2 threads, OpenBLAS on one
        assert mg.get_num_threads() == 2 and threads.openblas_threads() in (None, 1)
        for bad in (0, -2, "two"):
            with pytest.raises(ValueError, match="set_num_threads: n must be a positive int"):
                mg.set_num_threads(bad)
    finally:
        mg.set_num_threads(previous)
